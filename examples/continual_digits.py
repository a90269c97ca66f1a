"""A continual-learning study in Python: heads x learners on class-incremental digits (5 tasks of 2 classes),
over seeds, with each seed's numbers and their mean and spread.

    python examples/continual_digits.py [--epochs 3] [--seeds 0,1,2] [--out runs/continual_digits]

Each run gets its own folder (OUT/HEAD-LEARNER-seedS): a second call resumes nothing and refuses an existing
run unless --overwrite. The seed sets both the class order and the training seed, as `adapt continual --seed`.
"""

import argparse
import statistics

import adapt

LEARNERS = {"naive": {}, "replay": {"memory": 200}, "lwf": {}, "icarl": {"memory": 200}, "prototype": {}}
METRICS = ("average_incremental_accuracy", "last_accuracy", "forgetting")

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--seeds", default="0,1,2")
parser.add_argument("--heads", default="linear,cosine,language")
parser.add_argument("--learners", default=",".join(LEARNERS))
parser.add_argument("--image-size", type=int, default=None, help="smaller is faster (default: the backbone's 96 px)")
parser.add_argument("--limit", type=int, default=None, help="at most this many images per split (a quick look)")
parser.add_argument("--out", default="runs/continual_digits")
parser.add_argument("--overwrite", action="store_true")
args = parser.parse_args()

results: dict[tuple[str, str], dict[int, object]] = {}
for seed in [int(s) for s in args.seeds.split(",")]:
    for head in args.heads.split(","):
        for learner in args.learners.split(","):
            method = "linear" if learner == "prototype" else "ssf"  # prototype trains nothing: a frozen backbone
            result = adapt.continual(f"{args.out}/{head}-{learner}-seed{seed}", head=head, learner=learner,
                                     learner_options=LEARNERS[learner], method=method, seed=seed, epochs=args.epochs,
                                     image_size=args.image_size, limit=args.limit, overwrite=args.overwrite)
            results.setdefault((head, learner), {})[seed] = result.metrics

print(f"{'head':10}{'learner':11}{'seed':>6}" + "".join(f"{name.replace('_', ' '):>30}" for name in METRICS))
for (head, learner), by_seed in results.items():
    for seed, metrics in by_seed.items():
        values = [100 * getattr(metrics, name) for name in METRICS]
        print(f"{head:10}{learner:11}{seed:>6}" + "".join(f"{v:29.1f}%" for v in values))
    summary = []
    for name in METRICS:
        values = [100 * getattr(m, name) for m in by_seed.values()]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        summary.append(f"{statistics.mean(values):20.1f} ± {spread:4.1f} pts")
    print(f"{head:10}{learner:11}{'mean':>6}" + "".join(f"{s:>30}" for s in summary))
