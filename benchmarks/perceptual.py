"""Perceptual initialization on the offline fixture, then SSF on digits from each start.

Settings: the embedded Lite0 as it ships, and the same after `perceptual_init` (full,
the DESIGN recipe: AdamW lr 5e-4, wd 0.1) on the fixture's train triplets. 2AFC is
measured on the fixture's test triplets. The fixture's "votes" favour the weaker of two
graded synthetic distortions: this checks the mechanics, not human perception.

    python benchmarks/perceptual.py [--epochs 10] [--init-epochs 5] [--seeds 0,1,2]

Writes benchmarks/results/perceptual.json and perceptual.md.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import adapt  # noqa: F401  (first: torchvision compat)
from adapt.backbones import create_backbone, preprocessing
from adapt.data.transforms import eval_transform
from adapt.data.triplets import TripletDataset, load_triplets, make_fixture
from adapt.perceptual import agreement, perceptual_init
from adapt.train import TrainConfig, make_accelerator
from adapt.tune import TuneJob, tune
from measure import mean_std
from report import percent_mean_std, write_report

BACKBONE = "tf_efficientnet_lite0"
IMAGE_SIZE = 96


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10, help="SSF epochs on digits")
    parser.add_argument("--init-epochs", type=int, default=5)
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]

    with tempfile.TemporaryDirectory() as scratch:
        root = make_fixture(Path(scratch) / "fixture", count=300, size=IMAGE_SIZE)
        init = Path(scratch) / "init.safetensors"
        result = perceptual_init(f"nights:{root}", init, BACKBONE, epochs=args.init_epochs, image_size=IMAGE_SIZE)
        defaults = preprocessing(BACKBONE)
        test = TripletDataset(load_triplets(f"nights:{root}")["test"], eval_transform(IMAGE_SIZE, defaults.mean, defaults.std))
        plain, _ = create_backbone(BACKBONE, num_classes=0)
        plain_twoafc = agreement(plain, test, make_accelerator())
        settings = {
            "embedded": (None, plain_twoafc, plain_twoafc),
            "embedded + perceptual init": (str(init), result.before["test"], result.after["test"]),
        }
        rows = []
        for setting, (weights, before, after) in settings.items():
            accs = []
            for seed in seeds:
                run = tune(TuneJob(method="ssf", weights=weights), TrainConfig(epochs=args.epochs, seed=seed),
                           Path(scratch) / f"{setting}-{seed}")  # fmt: skip
                accs.append(run.test_acc)
                print(f"{setting} seed {seed}: digits test acc {run.test_acc:.4f}", flush=True)
            acc_mean, acc_std = mean_std(accs)
            rows.append({"setting": setting, "twoafc_before": before, "twoafc_after": after,
                         "downstream_acc_mean": acc_mean, "downstream_acc_std": acc_std, "seeds": seeds})  # fmt: skip

    setup = {"fixture": "300 synthetic triplets (180 train / 60 val / 60 test), 96 px", "init": "full, lr 5e-4, wd 0.1",
             "init_epochs": args.init_epochs, "downstream": f"ssf on digits, {args.epochs} epochs, 96 px"}  # fmt: skip
    write_report("perceptual", "Perceptual initialization (fixture: mechanics only, not human perception)", setup, rows, [
        ("setting", lambda r: r["setting"]),
        ("2AFC before", lambda r: f"{100 * r['twoafc_before']:.1f}"),
        ("2AFC after", lambda r: f"{100 * r['twoafc_after']:.1f}"),
        ("SSF on digits: test acc (mean ± std)", percent_mean_std("downstream_acc_mean", "downstream_acc_std")),
        ("seeds", lambda r: str(r["seeds"])),
    ])  # fmt: skip


if __name__ == "__main__":
    main()
