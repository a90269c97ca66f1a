"""Heads x learners on class-incremental digits (5 tasks of 2 classes), over seeds.

    python examples/continual_digits.py [--epochs 3] [--seeds 0,1,2]
"""

import argparse
import statistics

from adapt.continual import ContinualRun, class_incremental
from adapt.train import TrainConfig

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--seeds", default="0,1,2")
args = parser.parse_args()
seeds = [int(s) for s in args.seeds.split(",")]
learners = {"naive": {}, "replay": {"memory": 200}, "lwf": {}, "icarl": {"memory": 200}, "prototype": {}}

results = {}
for seed in seeds:
    scenario = class_incremental("digits", initial=2, increment=2, seed=seed)
    for head in ("linear", "cosine", "language"):
        for learner, options in learners.items():
            method = "linear" if learner == "prototype" else "ssf"  # prototype trains nothing: a frozen backbone
            run = ContinualRun(method=method, head=head, learner=learner, learner_options=options,
                               train=TrainConfig(epochs=args.epochs, seed=seed),
                               out_dir=f"runs/continual_digits/{head}-{learner}-{seed}", overwrite=True)
            results.setdefault((head, learner), []).append(run.fit(scenario).metrics)

print(f"{'head':10}{'learner':11}{'avg inc acc':>13}{'last acc':>10}{'forgetting':>12}")
for (head, learner), metrics in results.items():
    mean = lambda key: 100 * statistics.mean(getattr(m, key) for m in metrics)  # noqa: E731
    print(f"{head:10}{learner:11}{mean('average_incremental_accuracy'):12.1f}%{mean('last_accuracy'):9.1f}%"
          f"{mean('forgetting'):11.1f}%")
