"""Throughput of `adapt continual` against `adapt tune` on the same images, in one run.

Digits on the embedded Lite0 with SSF: `tune` on all 10 classes, and continual runs in 5 tasks
of 2 classes with a language head (naive, replay with 200 exemplars, LwF, iCaRL). Each trains
the same number of epochs over the same images. Two figures per row:
- training images/s: what the optimizer steps see (each task's metrics.jsonl, weighted by time);
- end to end images/s: trained images over the whole wall time (model and text-model loading,
  evaluation after every task, herding and the files included).

    python benchmarks/continual_throughput.py [--epochs 2] [--image-size 64] [--limit 600]

Writes benchmarks/results/continual_throughput.json and continual_throughput.md. Run it alone.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import adapt  # noqa: F401  (first: torchvision compat)
from adapt.continual_learning import ContinualRun, class_incremental
from adapt.train import TrainConfig
from adapt.tuning import TuneJob, tune
from report import write_report

LEARNERS = {"naive": {}, "replay": {"memory": 200}, "lwf": {}, "icarl": {"memory": 200}}
GOAL = 1 / 1.5  # continual's training throughput at least this share of tune's


def training_rate(folders: list[Path]) -> tuple[float, int]:
    """(images per second of training, images trained) over the epochs logged in these run folders."""
    seconds = images = 0.0
    for folder in folders:
        for line in (folder / "metrics.jsonl").read_text().splitlines():
            epoch = json.loads(line)
            seconds += epoch["seconds"]
            images += epoch["images_per_s"] * epoch["seconds"]
    return images / seconds, round(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--limit", type=int, default=600, help="images per split")
    args = parser.parse_args()
    config = TrainConfig(epochs=args.epochs, batch_size=32)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        tune(TuneJob(method="ssf", image_size=args.image_size, limit=args.limit), config, Path(scratch) / "tune")
        wall = time.perf_counter() - start
        rate, images = training_rate([Path(scratch) / "tune"])
        rows.append({"run": "tune (10 classes at once)", "training_images_per_s": rate, "end_to_end_images_per_s": images / wall,
                     "images_trained": images, "wall_seconds": wall})  # fmt: skip
        scenario = class_incremental("digits", initial=2, increment=2, seed=0, image_size=args.image_size, limit=args.limit)
        for learner, options in LEARNERS.items():
            out = Path(scratch) / learner
            start = time.perf_counter()
            ContinualRun(method="ssf", head="language", learner=learner, learner_options=options, train=config,
                         out_dir=out).fit(scenario)  # fmt: skip
            wall = time.perf_counter() - start
            rate, images = training_rate(sorted(out.glob("task_*")))
            rows.append({"run": f"continual {learner} (5 tasks x 2 classes, language head)", "training_images_per_s": rate,
                         "end_to_end_images_per_s": images / wall, "images_trained": images, "wall_seconds": wall})  # fmt: skip
            print(rows[-1], flush=True)
    reference = rows[0]["training_images_per_s"]
    for row in rows:
        row["training_throughput_vs_tune"] = row["training_images_per_s"] / reference
    worst = min(r["training_throughput_vs_tune"] for r in rows[1:])
    footer = (f"Goal: continual within 1.5x of tune's training throughput (ratio >= {GOAL:.2f}). Measured: the "
              f"slowest learner reaches {worst:.2f} of tune's ({'met' if worst >= GOAL else 'not met'}). Replay and "
              f"iCaRL train on their exemplars too, LwF and iCaRL run the frozen old model on every batch; end-to-end "
              f"figures include loading the text model, testing every seen task after each task and herding.")  # fmt: skip
    setup = {"backbone": "tf_efficientnet_lite0 (embedded)", "method": "ssf", "data": f"digits, {args.image_size} px, "
             f"at most {args.limit} images per split", "epochs": args.epochs, "batch_size": 32, "process": "1 (2 cores)"}  # fmt: skip
    write_report("continual_throughput", "adapt continual vs adapt tune: throughput on the same images", setup, rows, [
        ("run", lambda r: r["run"]),
        ("training img/s", lambda r: f"{r['training_images_per_s']:.0f}"),
        ("vs tune", lambda r: f"{r['training_throughput_vs_tune']:.2f}x"),
        ("end-to-end img/s", lambda r: f"{r['end_to_end_images_per_s']:.0f}"),
        ("wall s", lambda r: f"{r['wall_seconds']:.0f}"),
    ], footer=footer)  # fmt: skip


if __name__ == "__main__":
    main()
