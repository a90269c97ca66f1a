"""HST (paper and light variants) vs SSF vs full fine-tuning: accuracy on the embedded default,
cost on a ViT-S/16 and a ViT-B/16.

Accuracy: each method trained with its default recipe on digits (Lite0, embedded ImageNet
weights, 96 px), 3 seeds; HST runs on the feature maps there (both variants). Cost, on
timm's vit_small_patch16_224 and vit_base_patch16_224 with random weights (HST's ViT taps:
paper = a meta token in every block and tuned LayerNorms, gradients through the ViT;
light = one-way meta tokens, ViT under no_grad), all in this run: median training step
(batch 8 at 224 px, AdamW) and the peak bytes the steps keep alive beyond model and data,
as ratios to full fine-tuning; inference latency (batch 8, no grad, models taking turns)
as a ratio to the plain backbone. SSF is timed as deployed, i.e. merged into the
backbone; full fine-tuning deploys the plain architecture.

    python benchmarks/hst.py [--epochs 5] [--seeds 0,1,2] [--steps 6] [--repeats 7]

Writes benchmarks/results/hst.json and hst.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import adapt  # noqa: F401  (first: torchvision compat)
import torch

from adapt.adapted import AdaptedModel
from adapt.backbones import create_backbone
from adapt.merging.reparam import merge_adapted
from adapt.train import TrainConfig
from adapt.tuning import TuneJob, tune
from measure import interleaved_latency, mean_std, mean_step_seconds, training_cost
from report import percent_mean_std, write_report

METHODS = {"hst (paper)": ("hst", {"variant": "paper"}), "hst (light)": ("hst", {"variant": "light"}),
           "ssf": ("ssf", None), "full": ("full", None)}  # fmt: skip
VITS = ["vit_small_patch16_224", "vit_base_patch16_224"]
CLASSES = [str(i) for i in range(10)]


def digits_rows(epochs: int, seeds: list[int]) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for label, (method, options) in METHODS.items():
            accs, steps = [], []
            for seed in seeds:
                job = TuneJob(method=method, options=options)
                result = tune(job, TrainConfig(epochs=epochs, seed=seed), f"{scratch}/{method}{seed}{len(accs)}{label[-3:]}")
                accs.append(result.test_acc)
                steps.append(mean_step_seconds(result))
                print(f"{label} seed {seed}: test acc {result.test_acc:.4f}", flush=True)
            acc_mean, acc_std = mean_std(accs)
            rows.append({"method": label, "backbone": "tf_efficientnet_lite0", "trainable_params": result.trainable_params,
                         "acc_mean": acc_mean, "acc_std": acc_std, "seeds": seeds, "step_time": statistics.mean(steps)})  # fmt: skip
    return rows


def vit_rows(vit: str, steps: int, repeats: int) -> list[dict]:
    torch.manual_seed(0)
    images, labels = torch.randn(8, 3, 224, 224), torch.randint(0, len(CLASSES), (8,))
    plain, _ = create_backbone(vit, "random", len(CLASSES), 224)
    rows, deployed = [], {"plain backbone": plain}
    for label, (method, options) in METHODS.items():
        adapted = AdaptedModel.create(method, CLASSES, 224, vit, "random", options)
        step, peak = training_cost(adapted, images, labels, steps)
        trainable = adapted.parameter_counts()[0]
        deployed[label] = merge_adapted(adapted)[0] if adapted.method.mergeable and method != "full" else adapted.model
        rows.append({"method": label, "backbone": vit, "trainable_params": trainable, "acc_mean": None, "acc_std": None,
                     "seeds": [], "step_time": step, "peak_mem": peak})  # fmt: skip
        print(rows[-1], flush=True)
    latency = interleaved_latency(deployed, images, repeats)
    for row in rows:
        row["infer_latency_ratio_vs_base"] = latency[row["method"]] / latency["plain backbone"]
    return rows


def with_ratios(rows: list[dict]) -> list[dict]:
    """Replace raw step time and memory by ratios to full fine-tuning on the same backbone."""
    full = next(r for r in rows if r["method"] == "full")
    full_step, full_peak = full["step_time"], full.get("peak_mem")
    for row in rows:
        row["step_time_ratio_vs_full"] = row.pop("step_time") / full_step
        peak = row.pop("peak_mem", None)
        row["peak_mem_ratio_vs_full"] = peak / full_peak if peak is not None else None
        row.setdefault("infer_latency_ratio_vs_base", None)
    return rows


def goals(rows: list[dict]) -> str:
    """The issue's goals, as measured."""
    digits = {r["method"]: r for r in rows if r["acc_mean"] is not None}
    full = digits["full"]["acc_mean"]
    lines = [f"- digits, {label}: {100 * (digits[label]['acc_mean'] - full):+.2f} pt vs full (goal >= -0.5): "
             f"{'met' if digits[label]['acc_mean'] >= full - 0.005 else 'missed'}" for label in ("hst (paper)", "hst (light)")]
    for row in rows:
        if row["method"] == "hst (paper)" and row["backbone"] == "vit_base_patch16_224":
            ratio = row["peak_mem_ratio_vs_full"]
            lines.append(f"- ViT-B/16, paper variant peak training memory {ratio:.2f}x full (goal <= 0.7): "
                         f"{'met' if ratio <= 0.7 else 'missed'}")
    return "Goals, as measured:\n" + "\n".join(lines)


def cell(key: str, fmt: str):
    return lambda r: "—" if r[key] is None else format(r[key], fmt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=6, help="training steps timed per method on the ViT")
    parser.add_argument("--repeats", type=int, default=7, help="inference repeats per model on the ViT")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = [row for vit in VITS for row in with_ratios(vit_rows(vit, args.steps, args.repeats))]
    rows += with_ratios(digits_rows(args.epochs, seeds))
    setup = {"accuracy": f"tf_efficientnet_lite0 (embedded) on digits, 96 px, {args.epochs} epochs, method default lr",
             "cost": f"{', '.join(VITS)}, random weights, batch 8 at 224 px, {args.steps} AdamW steps, {args.repeats} inference repeats",
             "trainable_params": "head included (HST's head is its side network's; 10 classes)",
             "lite0_step_time": "mean training step over the digits runs (data loading included)",
             "machine": "2-core CPU", "torch_threads": torch.get_num_threads()}  # fmt: skip
    write_report("hst", f"HST vs SSF vs full fine-tuning (digits: {args.epochs} epochs, seeds {seeds}; cost: "
                 f"{', '.join(VITS)})", setup, rows, [
        ("method", lambda r: r["method"]),
        ("backbone", lambda r: r["backbone"]),
        ("trainable", lambda r: f"{r['trainable_params']:,}"),
        ("digits test acc", lambda r: "—" if r["acc_mean"] is None else percent_mean_std("acc_mean", "acc_std")(r)),
        ("step time vs full", cell("step_time_ratio_vs_full", ".2f")),
        ("peak train memory vs full", cell("peak_mem_ratio_vs_full", ".2f")),
        ("inference latency vs backbone", cell("infer_latency_ratio_vs_base", ".2f")),
    ], footer=goals(rows))  # fmt: skip


if __name__ == "__main__":
    main()
