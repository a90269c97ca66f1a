"""Which way of stepping timm's cosine the default run should keep, measured on digits.

adapt's default run (`adapt tune`: SSF on the embedded Lite0 at 96 px, 10 epochs, 10% warmup) with timm's
CosineLRScheduler stepped once per epoch as timm's train.py does (`--lr-stepping epoch`, SSF's and HST's runs),
one epoch behind (`epoch-lagged`, SPT's, NOAH's and V-PETL's) and after every optimizer update (`step`), 3
seeds each; test accuracy on the digits' fixed split. Per-update stepping was the default until this
measured it below the per-epoch ones; `epoch` is the default since.

    python benchmarks/schedule_digits.py [--seeds 0,1,2] [--epochs 10]

Writes benchmarks/results/schedule_digits.json and schedule_digits.md. Run it alone.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import adapt  # noqa: F401  (first: torchvision compat)
from adapt.train import TrainConfig
from adapt.train_config import LR_STEPPING
from adapt.tuning import TuneJob, tune
from measure import mean_std
from report import percent_mean_std, write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for stepping in LR_STEPPING:
            accuracies = []
            for seed in seeds:
                config = TrainConfig(epochs=args.epochs, seed=seed, lr_stepping=stepping)
                accuracies.append(tune(TuneJob(), config, Path(scratch) / f"{stepping}-{seed}").test_acc)
            mean, std = mean_std(accuracies)
            rows.append({"lr_stepping": stepping, "test_acc_mean": mean, "test_acc_std": std, "test_acc": accuracies})
            print(rows[-1], flush=True)
    write_report("schedule_digits", f"LR stepping on digits (adapt tune's default run, {args.epochs} epochs, seeds {seeds})",
                 {"data": "digits", "method": "ssf", "backbone": "tf_efficientnet_lite0 (embedded)", "image_size": 96,
                  "epochs": args.epochs, "seeds": seeds}, rows,
                 [("lr stepping", lambda r: r["lr_stepping"]), ("test accuracy %", percent_mean_std("test_acc_mean", "test_acc_std")),
                  ("per seed %", lambda r: ", ".join(f"{100 * a:.2f}" for a in r["test_acc"]))],
                 "timm's CosineLRScheduler in every row; only when it is stepped differs.")  # fmt: skip


if __name__ == "__main__":
    main()
