"""The paper's claim in this setting: does perceptual alignment of a random initialisation help
the training that follows?

Four starts for the same downstream run (full fine-tuning of Lite0 on digits, same epochs,
learning rate and image size, 3 seeds):
- random: a seeded random initialisation;
- random + perceptual init: the same random start aligned on the fixture's train triplets
  first (`perceptual_init`, full, DreamSim's recipe: Adam betas 0.5/0.999, lr 3e-4, no weight
  decay, batch 32, margin 0.05, the epoch with the best val 2AFC kept; BatchNorm statistics frozen,
  adapt's default) — the paper's pipeline;
- embedded: the pretrained weights as they ship;
- embedded + perceptual fine-tuning: the pretrained weights aligned on the same triplets.
Reported: digits test accuracy, the first epoch whose val accuracy reaches 90%, and
DreamSim's 2AFC score per held-out fixture test split before and after alignment.

The fixture (adapt.data.triplets.make_fixture) is built from real photo crops (sklearn's
two sample photos, matplotlib's Grace Hopper), digits, terrain maps, an illustration and
gratings, with eleven distortion families and simulated votes that favour the weaker
distortion. It has real image statistics but no human judgement in it: what it
can show is whether learning to rank distortion strength helps a random network start; it
cannot show that human perceptual alignment does.

    python benchmarks/perceptual.py [--epochs 15] [--init-epochs 8] [--image-size 32] [--triplets 2000] [--seeds 0,1,2]

Writes benchmarks/results/perceptual.json and perceptual.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import adapt  # noqa: F401  (first: torchvision compat)
from adapt.backbones import EMBEDDED_WEIGHTS, RANDOM_WEIGHTS
from adapt.data.triplets import make_fixture
from adapt.perceptual import perceptual_init
from adapt.train import TrainConfig
from adapt.tuning import TuneJob, tune
from measure import mean_std
from report import percent_mean_std, write_report

BACKBONE = "tf_efficientnet_lite0"
TARGET = 0.9  # the val accuracy whose first epoch is reported
DOWNSTREAM_LR = 3e-3
TEST_SPLITS = ("test_imagenet", "test_no_imagenet")


def first_epoch_at(history: list, target: float) -> int | None:
    return next((h.epoch for h in history if h.eval_acc >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=15, help="downstream full fine-tuning epochs on digits")
    parser.add_argument("--init-epochs", type=int, default=8, help="perceptual alignment epochs (at most: best val kept)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--triplets", type=int, default=2000)
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    settings = {"random": (RANDOM_WEIGHTS, False), "random + perceptual init": (RANDOM_WEIGHTS, True),
                "embedded": (EMBEDDED_WEIGHTS, False), "embedded + perceptual fine-tuning": (EMBEDDED_WEIGHTS, True)}  # fmt: skip
    runs: dict[str, list[dict]] = {name: [] for name in settings}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        root = make_fixture(Path(scratch) / "fixture", count=args.triplets, size=args.image_size)
        for seed in seeds:
            for name, (source, aligned) in settings.items():
                weights, twoafc = source, {}
                if aligned:
                    weights = str(Path(scratch) / f"{name}-{seed}.safetensors")
                    init = perceptual_init(f"nights:{root}", weights, BACKBONE, source,
                                           config={"epochs": args.init_epochs, "seed": seed}, image_size=args.image_size)  # fmt: skip
                    twoafc = {s: (init.before[s].score, init.after[s].score) for s in TEST_SPLITS}
                    twoafc["best_epoch"] = init.best_epoch
                job = TuneJob(method="full", weights=weights, image_size=args.image_size)
                result = tune(job, TrainConfig(epochs=args.epochs, lr=DOWNSTREAM_LR, seed=seed), Path(scratch) / f"{name}-{seed}")
                runs[name].append({"test_acc": result.test_acc, "epoch_at_target": first_epoch_at(result.history, TARGET),
                                   "twoafc": twoafc})  # fmt: skip
                print(f"{name} seed {seed}: test {result.test_acc:.4f}, val {[round(h.eval_acc, 3) for h in result.history]}, "
                      f"2AFC {twoafc} ({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip

    rows = []
    for name, measured in runs.items():
        row = {"setting": name, "seeds": seeds, "epochs_at_target": [m["epoch_at_target"] for m in measured],
               "alignment_best_epochs": [m["twoafc"]["best_epoch"] for m in measured if m["twoafc"]]}
        row["test_acc_mean"], row["test_acc_std"] = mean_std([m["test_acc"] for m in measured])
        for split in TEST_SPLITS:
            pairs = [m["twoafc"][split] for m in measured if m["twoafc"]]
            row[f"{split}_before"] = mean_std([p[0] for p in pairs])[0] if pairs else None
            row[f"{split}_after"] = mean_std([p[1] for p in pairs])[0] if pairs else None
        rows.append(row)

    def twoafc_cell(split: str):
        return lambda r: "-" if r[f"{split}_before"] is None else f"{100 * r[f'{split}_before']:.1f} → {100 * r[f'{split}_after']:.1f}"

    setup = {"fixture": f"{args.triplets} triplets from the photos, maps, digits and gratings installed packages ship, "
                        f"eleven distortion families, simulated votes for the weaker distortion, {args.image_size} px "
                        "(60/20/20 train/val/test)",
             "alignment": f"perceptual_init, full, DreamSim's recipe (Adam betas 0.5/0.999, lr 3e-4, wd 0, batch 32, "
                          f"margin 0.05), BatchNorm statistics frozen, up to {args.init_epochs} epochs, the best val "
                          "2AFC epoch kept",
             "downstream": f"full fine-tuning on digits, {args.epochs} epochs, lr {DOWNSTREAM_LR}, {args.image_size} px",
             "target": f"first epoch with val accuracy >= {TARGET:.0%} (None: not reached)",
             "wall_seconds": round(time.perf_counter() - start)}  # fmt: skip
    write_report("perceptual", f"Perceptual initialization then full fine-tuning on digits ({args.epochs} epochs, "
                 f"{args.image_size} px, seeds {seeds})", setup, rows, [
        ("start", lambda r: r["setting"]),
        ("digits test acc", percent_mean_std("test_acc_mean", "test_acc_std")),
        (f"epoch reaching {TARGET:.0%} val (per seed)", lambda r: ", ".join(str(e) for e in r["epochs_at_target"])),
        ("2AFC test_imagenet before → after", twoafc_cell("test_imagenet")),
        ("2AFC test_no_imagenet before → after", twoafc_cell("test_no_imagenet")),
        ("alignment epoch kept", lambda r: ", ".join(map(str, r["alignment_best_epochs"])) or "-"),
    ], footer="The fixture has real image statistics and no human judgements: a gain here shows that ranking "
              "distortion strength helps a random start, not that human perceptual alignment does.")  # fmt: skip


if __name__ == "__main__":
    main()
