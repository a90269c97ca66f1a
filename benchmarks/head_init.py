"""How a fresh head starts, measured on digits: the first loss and the accuracy after 1 and 3 epochs.

The embedded Lite0 at 96 px, SSF and linear probing, heads started as SSF's and SPT's code start
them (trunc-normal: weight ~ N(0, 0.02), bias 0), as timm's EfficientNet does (its fan-out uniform
init), and at zero; 2 seeds. Chance is ln(10) = 2.30 for the loss, 10% for the accuracy.

    python benchmarks/head_init.py [--seeds 0,1] [--image-size 96]

Writes benchmarks/results/head_init.json and head_init.md. Run it alone.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

import adapt  # noqa: F401  (first: torchvision compat)
from adapt.train import TrainConfig
from adapt.train_config import HEAD_INITS
from adapt.tuning import TuneJob, tune
from measure import mean_std
from report import write_report

METHODS = ("ssf", "linear")


def first_loss(folder: Path) -> float:
    with open(folder / "log.csv", newline="") as file:
        return next(float(row["value"]) for row in csv.DictReader(file) if row["name"] == "train/loss")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--image-size", type=int, default=96)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for method in METHODS:
            for head_init in HEAD_INITS:
                measured: dict[str, list[float]] = {"first_loss": [], "acc_1_epoch": [], "acc_3_epochs": []}
                for seed in seeds:
                    job = TuneJob(method=method, image_size=args.image_size, head_init=head_init)
                    for epochs, key in ((1, "acc_1_epoch"), (3, "acc_3_epochs")):
                        out = Path(scratch) / f"{method}-{head_init}-{seed}-{epochs}"
                        result = tune(job, TrainConfig(epochs=epochs, seed=seed, log_with="csv"), out)
                        measured[key].append(result.test_acc)
                    measured["first_loss"].append(first_loss(out))
                row = {"method": method, "head_init": head_init, "seeds": seeds}
                for key, values in measured.items():
                    row[f"{key}_mean"], row[f"{key}_std"] = mean_std(values)
                rows.append(row)
                print(row, flush=True)
    footer = ("trunc-normal is the default (the PEFT papers' code); timm is EfficientNet's own init, what adapt used "
              "before. Chance: loss 2.30, accuracy 10%.")
    write_report("head_init", f"Fresh head init on digits ({args.image_size} px, embedded Lite0, seeds {seeds})",
                 {"data": "digits", "backbone": "tf_efficientnet_lite0 (embedded)", "lr": "method default",
                  "batch_size": 32}, rows, [
        ("method", lambda r: r["method"]),
        ("head init", lambda r: r["head_init"]),
        ("first loss", lambda r: f"{r['first_loss_mean']:.2f} ± {r['first_loss_std']:.2f}"),
        ("test acc, 1 epoch", lambda r: f"{100 * r['acc_1_epoch_mean']:.2f} ± {100 * r['acc_1_epoch_std']:.2f}"),
        ("test acc, 3 epochs", lambda r: f"{100 * r['acc_3_epochs_mean']:.2f} ± {100 * r['acc_3_epochs_std']:.2f}"),
    ], footer=footer)  # fmt: skip


if __name__ == "__main__":
    main()
