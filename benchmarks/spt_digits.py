"""SPT vs LoRA at matched budgets on the embedded default (3 seeds), and their cost on a ViT-B/16.

Budgets are LoRA's own backbone-side counts at rank 2 and rank 8 on Lite0 (45,568 and
182,272), so LoRA and SPT spend the same. SPT runs with both budget rules: `exact` (ours:
the count lands on the budget) and `official` (the released code's closest point on a
0.02M grid, coarse at these budgets). Counts exclude the 12,810-parameter head, which every
method trains. Step time is the mean training step over the run (data loading included),
as a ratio to full fine-tuning's and LoRA's measured in the same process; peak memory is
the op-by-op peak of tensors that 10 training steps keep alive beyond the model and data
(benchmarks/measure.training_cost), as a ratio to full fine-tuning's; sensitivity_seconds
is SPT's scoring pass (16 batches of 32).

The cost-only rows use a random-weight vit_base_patch16_224, batch 8 at 224 px: SPT at
0.4M (allocated from the sensitivity of 2 batches of 8 digits images, official ViT ranking),
LoRA at rank 3 (442,368, the rank closest to 0.4M), full fine-tuning.

    python benchmarks/spt_digits.py [--epochs 5] [--seeds 0,1,2] [--vit-steps 3]

Writes benchmarks/results/spt_digits.json and spt_digits.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import adapt  # noqa: F401  (first: torchvision compat)
import torch

from adapt.adapted import AdaptedModel
from adapt.data import load_data
from adapt.methods.spt.sensitivity import task_sensitivity
from adapt.train import TrainConfig
from adapt.tune import TuneJob, prepare, tune
from measure import mean_std, mean_step_seconds, training_cost
from report import percent_mean_std, write_report

HEAD = 1280 * 10 + 10
LORA_PER_RANK = 22_784  # backbone-side LoRA parameters per rank on Lite0 (default targets)
MEMORY_STEPS = 10
VIT = "vit_base_patch16_224"


def peak_memory(job: TuneJob) -> int:
    adapted, data = prepare(job, "digits", TrainConfig())
    images, labels = next(iter(torch.utils.data.DataLoader(data.train, batch_size=32)))
    return training_cost(adapted, images, labels, MEMORY_STEPS)[1]


def vit_cost(steps: int) -> list[dict]:
    """Trainable count, step time and peak memory of full, LoRA and SPT at 0.4M on a random ViT-B/16."""
    torch.manual_seed(0)
    classes = [str(c) for c in range(10)]
    images, labels = torch.randn(8, 3, 224, 224), torch.randint(0, 10, (8,))
    data = load_data("digits", 224, (0.5,) * 3, (0.5,) * 3, limit=64)
    options = {"budget": 400_000, "sensitivity_batches": 2, "sensitivity_batch_size": 8}
    spt = AdaptedModel.create("spt", classes, 224, VIT, "random", options, setup=(data, TrainConfig()))
    models = {"full": AdaptedModel.create("full", classes, 224, VIT, "random"),
              "lora": AdaptedModel.create("lora", classes, 224, VIT, "random", {"rank": 3}), "spt": spt}  # fmt: skip
    measured = {}
    for name, adapted in models.items():
        step, peak = training_cost(adapted, images, labels, steps)
        measured[name] = {"step": step, "peak": peak, "trainable": adapted.parameter_counts()[0] - 768 * 10 - 10}
        print(name, measured[name], flush=True)
    full, lora = measured["full"], measured["lora"]
    return [{"method": f"{name} (ViT-B/16, cost only)", "trainable_params": m["trainable"],
             "step_time_ratio_vs_full": m["step"] / full["step"], "step_time_ratio_vs_lora": m["step"] / lora["step"],
             "peak_mem_ratio_vs_full": m["peak"] / full["peak"], "peak_mem_ratio_vs_lora": m["peak"] / lora["peak"]}
            for name, m in measured.items()]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--vit-steps", type=int, default=3)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    budgets = {2: 2 * LORA_PER_RANK, 8: 8 * LORA_PER_RANK}
    configs = []
    for rank, budget in budgets.items():
        configs.append(("lora", budget, TuneJob(method="lora", options={"rank": rank})))
        for rule in ("exact", "official"):
            configs.append((f"spt ({rule})", budget, TuneJob(method="spt", options={"budget": budget, "budget_rule": rule})))

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        full = tune(TuneJob(method="full"), TrainConfig(epochs=1), Path(scratch) / "full")
        full_step, full_peak = mean_step_seconds(full), peak_memory(TuneJob(method="full"))
        lora_step = {}
        for method, budget, job in configs:
            accs, steps, sensitivity = [], [], []
            for seed in seeds:
                if method.startswith("spt"):  # the scoring pass that tune runs first, timed on its own
                    start = time.perf_counter()
                    task_sensitivity("digits", "tf_efficientnet_lite0", seed=seed)
                    sensitivity.append(time.perf_counter() - start)
                result = tune(job, TrainConfig(epochs=args.epochs, seed=seed), Path(scratch) / f"{method}{budget}-{seed}")
                accs.append(result.test_acc)
                steps.append(mean_step_seconds(result))
                print(f"{method} budget {budget} seed {seed}: {result.test_acc:.4f}", flush=True)
            step = statistics.mean(steps)
            if method == "lora":
                lora_step[budget] = step
            acc_mean, acc_std = mean_std(accs)
            rows.append({
                "method": method,
                "budget": budget,
                "trainable_params": result.trainable_params - HEAD,
                "acc_mean": acc_mean,
                "acc_std": acc_std,
                "seeds": seeds,
                "sensitivity_seconds": statistics.mean(sensitivity) if sensitivity else 0.0,
                "step_time_ratio_vs_full": step / full_step,
                "step_time_ratio_vs_lora": step / lora_step[budget],
                "peak_mem_ratio_vs_full": peak_memory(job) / full_peak,
            })  # fmt: skip
    vit = vit_cost(args.vit_steps)

    setup = {"backbone": "tf_efficientnet_lite0 (embedded)", "data": "digits, 96 px", "epochs": args.epochs,
             "lr": "method default", "spt": "structured = lora rank 8, alpha_threshold 10, sensitivity 16 x 32, "
             "BatchNorm folded", "counts": "backbone-side, head excluded", "vit_rows": vit,
             "vit_cost": f"{VIT}, random weights, batch 8 at 224 px, median of {args.vit_steps} AdamW steps"}  # fmt: skip
    lora_peak = {r["budget"]: r["peak_mem_ratio_vs_full"] for r in rows if r["method"] == "lora"}
    for row in rows:
        row["peak_mem_ratio_vs_lora"] = row["peak_mem_ratio_vs_full"] / lora_peak[row["budget"]]
    vit_table = ["| cost only | trainable (backbone) | step time vs full | vs LoRA | peak memory vs full | vs LoRA |",
                 "|---|---:|---:|---:|---:|---:|"] + [
        f"| {r['method']} | {r['trainable_params']:,} | {r['step_time_ratio_vs_full']:.2f} | "
        f"{r['step_time_ratio_vs_lora']:.2f} | {r['peak_mem_ratio_vs_full']:.2f} | {r['peak_mem_ratio_vs_lora']:.2f} |"
        for r in vit]  # fmt: skip
    write_report("spt_digits", f"SPT vs LoRA on the embedded default ({args.epochs} epochs, seeds {seeds})", setup,
                 rows, [
        ("method", lambda r: r["method"]),
        ("budget", lambda r: f"{r['budget']:,}"),
        ("trainable (backbone)", lambda r: f"{r['trainable_params']:,}"),
        ("test acc (mean ± std)", percent_mean_std("acc_mean", "acc_std")),
        ("sensitivity pass", lambda r: f"{r['sensitivity_seconds']:.1f} s"),
        ("step time vs full", lambda r: f"{r['step_time_ratio_vs_full']:.2f}"),
        ("step time vs LoRA", lambda r: f"{r['step_time_ratio_vs_lora']:.2f}"),
        ("peak memory vs full", lambda r: f"{r['peak_mem_ratio_vs_full']:.2f}"),
        ("peak memory vs LoRA", lambda r: f"{r['peak_mem_ratio_vs_lora']:.2f}"),
    ], footer="\n".join(vit_table))  # fmt: skip


if __name__ == "__main__":
    main()
