"""full vs linear vs bitfit vs ssf on the embedded default (Lite0, digits at 96 px), 3 seeds.

Accuracy is the test accuracy after the default `adapt tune` recipe. Step time is the mean
wall time of a training step (data loading included) and is reported as a ratio to full
fine-tuning measured in the same run. Peak memory is the peak of tensor bytes that a few
training steps keep alive beyond the model and data (activations saved for backward,
gradients, optimizer state), counted op by op with adapt.merge.reparam.AllocationTracker,
again as a ratio to full fine-tuning.

A second table measures cost only, on a random-weight ViT-B/16 (batch 8 at 224 px): step time
and peak training memory of SSF and BitFit vs full fine-tuning, median of a few AdamW steps.

    python benchmarks/methods_digits.py [--epochs 10] [--seeds 0,1,2] [--vit-steps 4]

Writes benchmarks/results/methods_digits.json and methods_digits.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import adapt  # noqa: F401  (first: torchvision compat)
import torch

from adapt.adapted import AdaptedModel
from adapt.train import TrainConfig
from adapt.tune import TuneJob, prepare, tune
from measure import mean_std, mean_step_seconds, training_cost
from report import percent_mean_std, write_report

METHODS = ["full", "linear", "bitfit", "ssf"]
MEMORY_STEPS = 10
VIT = "vit_base_patch16_224"
VIT_METHODS = ["full", "bitfit", "ssf"]


def peak_training_memory(method: str) -> int:
    """Peak bytes of tensors alive during MEMORY_STEPS training steps beyond those that existed
    before (activations, gradients, optimizer state), counted op by op."""
    config = TrainConfig()
    adapted, data = prepare(TuneJob(method=method), "digits", config)
    images, labels = next(iter(torch.utils.data.DataLoader(data.train, batch_size=config.batch_size)))
    return training_cost(adapted, images, labels, MEMORY_STEPS)[1]


def vit_cost(steps: int) -> list[dict]:
    """Step time and peak training memory on a random-weight ViT-B/16, as ratios to full fine-tuning."""
    torch.manual_seed(0)
    images, labels = torch.randn(8, 3, 224, 224), torch.randint(0, 10, (8,))
    classes = [str(c) for c in range(10)]
    measured = {}
    for method in VIT_METHODS:
        adapted = AdaptedModel.create(method, classes, 224, VIT, "random")
        measured[method] = (*training_cost(adapted, images, labels, steps), adapted.parameter_counts()[0])
        print(method, measured[method], flush=True)
    full_step, full_peak, _ = measured["full"]
    return [{"method": m, "backbone": VIT, "trainable_params": trainable, "step_time_ratio_vs_full": step / full_step,
             "peak_mem_ratio_vs_full": peak / full_peak, "step_seconds": step, "peak_bytes": peak}
            for m, (step, peak, trainable) in measured.items()]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--vit-steps", type=int, default=4)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    measured = {}
    with tempfile.TemporaryDirectory() as scratch:
        for method in METHODS:
            accs, step_times = [], []
            for seed in seeds:
                result = tune(TuneJob(method=method), TrainConfig(epochs=args.epochs, seed=seed), f"{scratch}/{method}{seed}")
                step_times.append(mean_step_seconds(result))
                accs.append(result.test_acc)
                print(f"{method} seed {seed}: test acc {result.test_acc:.4f}", flush=True)
            measured[method] = {
                "acc": mean_std(accs),
                "step_time": statistics.mean(step_times),
                "peak_mem": peak_training_memory(method),
                "trainable": result.trainable_params,
                "total": result.total_params,
            }

    full = measured["full"]
    rows = [
        {
            "method": method,
            "trainable_params": m["trainable"],
            "trainable_pct": 100 * m["trainable"] / m["total"],
            "acc_mean": m["acc"][0],
            "acc_std": m["acc"][1],
            "seeds": seeds,
            "step_time_ratio_vs_full": m["step_time"] / full["step_time"],
            "peak_mem_ratio_vs_full": m["peak_mem"] / full["peak_mem"],
        }
        for method, m in measured.items()
    ]
    vit = vit_cost(args.vit_steps)
    setup = {"backbone": "tf_efficientnet_lite0 (embedded ImageNet weights)", "data": "digits, 96 px",
             "epochs": args.epochs, "batch_size": 32, "lr": "method default", "machine": "2-core CPU",
             "vit_cost": f"{VIT}, random weights, batch 8 at 224 px, median of {args.vit_steps} AdamW steps",
             "vit_rows": vit}  # fmt: skip
    vit_table = ["| method on ViT-B/16 (cost only) | trainable params | step time vs full | peak train memory vs full |",
                 "|---|---:|---:|---:|"] + [
        f"| {r['method']} | {r['trainable_params']:,} | {r['step_time_ratio_vs_full']:.2f} | {r['peak_mem_ratio_vs_full']:.2f} |"
        for r in vit]  # fmt: skip
    write_report("methods_digits", f"Methods on the embedded default ({args.epochs} epochs, seeds {seeds})", setup, rows, [
        ("method", lambda r: r["method"]),
        ("trainable params", lambda r: f"{r['trainable_params']:,}"),
        ("trainable %", lambda r: f"{r['trainable_pct']:.2f}%"),
        ("test acc (mean ± std)", percent_mean_std("acc_mean", "acc_std")),
        ("step time vs full", lambda r: f"{r['step_time_ratio_vs_full']:.2f}"),
        ("peak train memory vs full", lambda r: f"{r['peak_mem_ratio_vs_full']:.2f}"),
    ], footer="\n".join(vit_table))  # fmt: skip


if __name__ == "__main__":
    main()
