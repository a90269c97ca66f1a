"""Heads x learners on class-incremental digits (5 tasks of 2 classes), over seeds.

    python examples/continual_digits.py [--epochs 3] [--seeds 0,1,2]
"""

import argparse
import statistics

from adapt.continual import ContinualRun, class_incremental

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--seeds", default="0,1,2")
args = parser.parse_args()
seeds = [int(s) for s in args.seeds.split(",")]

results = {}
for seed in seeds:
    scenario = class_incremental("digits", initial=2, increment=2, seed=seed)
    for head in ("linear", "language"):
        for learner in ("naive", "replay"):
            run = ContinualRun(method="ssf", head=head, learner=learner, memory=200, epochs=args.epochs, seed=seed,
                               out_dir=f"runs/continual_digits/{head}-{learner}-{seed}", overwrite=True)
            results.setdefault((head, learner), []).append(run.fit(scenario).metrics)

print(f"{'head':10}{'learner':9}{'avg inc acc':>13}{'last acc':>10}{'forgetting':>12}")
for (head, learner), metrics in results.items():
    mean = lambda key: 100 * statistics.mean(getattr(m, key) for m in metrics)  # noqa: E731
    print(f"{head:10}{learner:9}{mean('average_incremental_accuracy'):12.1f}%{mean('last_accuracy'):9.1f}%"
          f"{mean('forgetting'):11.1f}%")
