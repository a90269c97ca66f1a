"""Heads x learners on class-incremental digits: does the language head help each learner?

Digits (embedded Lite0) in 5 tasks of 2 classes (class order from the seed), heads
{linear, cosine, language} x learners {naive, replay, lwf, icarl, prototype}, 3 seeds. The
learners that train use SSF; `prototype` trains nothing and uses the frozen backbone
(method linear). Replay and iCaRL keep 200 exemplars (herding). Metrics as defined in
adapt.continual_learning.metrics, in percent.

    python benchmarks/continual_digits.py [--epochs 3] [--image-size 64] [--seeds 0,1,2]
    python benchmarks/continual_digits.py --report-only   # the table again from the saved JSON

Writes benchmarks/results/continual_digits.json and continual_digits.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import adapt  # noqa: F401  (first: torchvision compat)
from adapt.continual_learning import ContinualRun, class_incremental
from adapt.train import TrainConfig
from measure import mean_std
from report import RESULTS, percent_mean_std, write_report

HEADS = ["linear", "cosine", "language"]
LEARNERS = ["naive", "replay", "lwf", "icarl", "prototype"]
METHOD = "ssf"
MEMORY = 200
METRICS = {"avg_inc_acc": "average_incremental_accuracy", "avg_inc_acc_task_mean": "average_incremental_accuracy_task_mean",
           "last_acc": "last_accuracy", "forgetting": "forgetting"}  # fmt: skip


def learner_setup(learner: str) -> tuple[str, dict]:
    """The tune method and learner options of a learner's runs."""
    if learner == "prototype":
        return "linear", {}
    return METHOD, {"memory": MEMORY} if learner in ("replay", "icarl") else {}


def verdicts(rows: list[dict]) -> list[str]:
    """Per learner: whether the language head beats the linear head on average incremental accuracy."""
    by_key = {(r["head"], r["learner"]): r for r in rows}
    lines = []
    for learner in LEARNERS:
        language, linear = by_key[("language", learner)], by_key[("linear", learner)]
        gain = 100 * (language["avg_inc_acc_mean"] - linear["avg_inc_acc_mean"])
        noise = 100 * max(language["avg_inc_acc_std"], linear["avg_inc_acc_std"])
        within = ", within one std" if abs(gain) < noise else ""
        lines.append(f"- {learner}: language {'beats' if gain > 0 else 'does not beat'} linear ({gain:+.2f} pt{within})")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="per task")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--report-only", action="store_true", help="rewrite the table from the saved JSON, no runs")
    args = parser.parse_args()
    if args.report_only:
        saved = json.loads((RESULTS / "continual_digits.json").read_text())
        setup, rows = saved["setup"], saved["rows"]
        report(rows, setup, setup["epochs_per_task"], int(setup["data"].split(", ")[1].split()[0]), rows[0]["seeds"])
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    measured: dict[tuple[str, str], list] = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        for seed in seeds:
            scenario = class_incremental("digits", initial=2, increment=2, seed=seed, image_size=args.image_size)
            for learner in LEARNERS:
                method, options = learner_setup(learner)
                for head in HEADS:
                    run = ContinualRun(method=method, head=head, learner=learner, learner_options=options,
                                       train=TrainConfig(epochs=args.epochs, seed=seed),
                                       out_dir=f"{scratch}/{head}-{learner}-{seed}")  # fmt: skip
                    metrics = run.fit(scenario).metrics
                    measured.setdefault((head, learner), []).append(metrics)
                    print(f"{head} {learner} seed {seed}: {metrics} ({time.perf_counter() - start:.0f} s)", flush=True)

    rows = []
    for learner in LEARNERS:
        for head in HEADS:
            runs = measured[(head, learner)]
            row = {"head": head, "learner": learner, "method": learner_setup(learner)[0], "seeds": seeds}
            for key, name in METRICS.items():
                row[f"{key}_mean"], row[f"{key}_std"] = mean_std([getattr(m, name) for m in runs])
            rows.append(row)
    setup = {"backbone": "tf_efficientnet_lite0 (embedded)", "data": f"digits, {args.image_size} px, 5 tasks x 2 classes",
             "method": f"{METHOD} (prototype: linear, nothing trains)", "epochs_per_task": args.epochs,
             "memory": f"replay and icarl: {MEMORY} exemplars, herding", "icarl": "head classifier, distill weight 1, T 2",
             "lwf": "distill weight 3, T 2", "language_head": "all-MiniLM-L6-v2, 'a photo of a {}'",
             "lr": "method default", "naive": "PyCIL's finetune: CE on the new task's logits",
             "avg_incremental_acc": "PyCIL's: top-1 over the seen tasks' test images pooled, averaged over tasks; "
                                    "beside it the mean of the per-task accuracies",
             "wall_seconds": round(time.perf_counter() - start)}  # fmt: skip
    report(rows, setup, args.epochs, args.image_size, seeds)


def report(rows: list[dict], setup: dict, epochs: int, image_size: int, seeds: list[int]) -> None:
    lines = verdicts(rows)
    wins = sum(" beats " in line for line in lines)
    clear = sum(" beats " in line and "within" not in line for line in lines)
    footer = (f"Goal: the language head beats the linear head on average incremental accuracy for the majority of "
              f"learners. Measured: it does for {wins} of {len(LEARNERS)}, by more than one std for {clear}.\n\n"
              + "\n".join(lines))  # fmt: skip
    write_report("continual_digits", f"Class-incremental digits: heads x learners ({epochs} epochs per task, "
                 f"{image_size} px, seeds {seeds})", setup, rows, [
        ("learner", lambda r: r["learner"]),
        ("head", lambda r: r["head"]),
        ("avg incremental acc (pooled)", percent_mean_std("avg_inc_acc_mean", "avg_inc_acc_std")),
        ("(mean of tasks)", percent_mean_std("avg_inc_acc_task_mean_mean", "avg_inc_acc_task_mean_std")),
        ("last acc", percent_mean_std("last_acc_mean", "last_acc_std")),
        ("forgetting", percent_mean_std("forgetting_mean", "forgetting_std")),
    ], footer=footer)  # fmt: skip


if __name__ == "__main__":
    main()
