"""SPT vs LoRA at matched budgets on the embedded default (3 seeds), and their cost on a ViT-B/16.

Budgets are LoRA's own backbone-side counts at rank 2 and rank 8 on Lite0 (45,568 and
182,272), so LoRA and SPT spend the same. SPT runs with both budget rules: `exact` (ours:
the count lands on the budget) and `official` (the released code's closest point on a
0.02M grid, coarse at these budgets), and once without the structured modules' Dropout and
DropPath (the paper's 0.1 each; our LoRA has none by default). Counts exclude the
12,810-parameter head, which every method trains. sensitivity_seconds is SPT's scoring pass
(16 batches of 32).

Cost is measured apart from the accuracy runs, all methods of a budget in one loop taking
turns (benchmarks/measure.interleaved_training_cost): the median of COST_STEPS AdamW steps on
one batch of 32 digits at 96 px, and the peak of bytes a first step keeps alive beyond the
model and data (activations saved for backward, gradients, optimizer state). Ratios are to
full fine-tuning, to LoRA, and to LoRA with the same input dropout 0.1 as SPT's structured
modules (cost only).

The cost-only rows use a random-weight vit_base_patch16_224, batch 8 at 224 px: SPT at
0.4M (allocated from the sensitivity of 2 batches of 8 digits images, official ViT ranking),
LoRA at rank 3 (442,368, the rank closest to 0.4M), full fine-tuning.

    python benchmarks/spt_digits.py [--epochs 5] [--seeds 0,1,2] [--cost-steps 10] [--vit-steps 3]

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
from adapt.tuning import TuneJob, prepare, tune
from measure import interleaved_training_cost, mean_std
from report import percent_mean_std, write_report

HEAD = 1280 * 10 + 10
LORA_PER_RANK = 22_784  # backbone-side LoRA parameters per rank on Lite0 (default targets)
VIT = "vit_base_patch16_224"
NO_REGULARISATION = {"structured_dropout": 0.0, "structured_drop_path": 0.0}


def configs(rank: int, budget: int) -> dict[str, tuple[dict, bool]]:
    """Name -> (TuneJob fields, whether it also gets accuracy runs) at one budget."""
    spt = {"budget": budget}
    return {
        "full": ({"method": "full"}, False),
        "lora": ({"method": "lora", "options": {"rank": rank}}, True),
        "lora (dropout 0.1)": ({"method": "lora", "options": {"rank": rank, "dropout": 0.1}}, False),
        "spt (exact)": ({"method": "spt", "options": {**spt, "budget_rule": "exact"}}, True),
        "spt (official)": ({"method": "spt", "options": {**spt, "budget_rule": "official"}}, True),
        "spt (exact, no structured dropout)": ({"method": "spt", "options": {**spt, **NO_REGULARISATION}}, True),
    }  # fmt: skip


BASES = {"full": ("full", "full"), "lora": ("lora", "LoRA"), "lora_dropout": ("lora (dropout 0.1)", "LoRA (dropout 0.1)")}
QUANTITIES = ("step_time", "step time"), ("peak_mem", "peak memory")  # (key, label), in the order cost_ratios measures


def cost_ratios(measured: dict[str, tuple[float, int]]) -> dict[str, dict[str, float]]:
    """Each method's step time and peak memory as ratios to each of BASES (full, LoRA, LoRA with dropout)."""
    return {name: {f"{key}_ratio_vs_{base}": value / measured[method][i]
                   for i, ((key, _), value) in enumerate(zip(QUANTITIES, cost))
                   for base, (method, _) in BASES.items()}
            for name, cost in measured.items()}  # fmt: skip


def lite0_cost(jobs: dict[str, TuneJob], steps: int) -> dict[str, dict[str, float]]:
    models = {}
    for name, job in jobs.items():
        models[name], data = prepare(job, "digits", TrainConfig())
    images, labels = next(iter(torch.utils.data.DataLoader(data.train, batch_size=32)))
    return cost_ratios(interleaved_training_cost(models, images, labels, steps))


def vit_cost(steps: int) -> list[dict]:
    """Trainable count, step time and peak memory of full, LoRA and SPT at 0.4M on a random ViT-B/16."""
    torch.manual_seed(0)
    classes = [str(c) for c in range(10)]
    images, labels = torch.randn(8, 3, 224, 224), torch.randint(0, 10, (8,))
    data = load_data("digits", 224, (0.5,) * 3, (0.5,) * 3, limit=64)
    spt = {"budget": 400_000, "sensitivity_batches": 2, "sensitivity_batch_size": 8}
    setup = (data, TrainConfig())
    models = {"full": AdaptedModel.create("full", classes, 224, VIT, "random"),
              "lora": AdaptedModel.create("lora", classes, 224, VIT, "random", {"rank": 3}),
              "lora (dropout 0.1)": AdaptedModel.create("lora", classes, 224, VIT, "random", {"rank": 3, "dropout": 0.1}),
              "spt": AdaptedModel.create("spt", classes, 224, VIT, "random", spt, setup=setup),
              "spt (no structured dropout)": AdaptedModel.create("spt", classes, 224, VIT, "random",
                                                                 {**spt, **NO_REGULARISATION}, setup=setup)}  # fmt: skip
    ratios = cost_ratios(interleaved_training_cost(models, images, labels, steps))
    return [{"method": f"{name} (ViT-B/16, cost only)", "trainable_params": adapted.parameter_counts()[0] - 768 * 10 - 10,
             **ratios[name]} for name, adapted in models.items()]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--cost-steps", type=int, default=10)
    parser.add_argument("--vit-steps", type=int, default=3)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for rank in (2, 8):
            budget = rank * LORA_PER_RANK
            jobs = {name: (TuneJob(**fields), accuracy) for name, (fields, accuracy) in configs(rank, budget).items()}
            cost = lite0_cost({name: job for name, (job, _) in jobs.items()}, args.cost_steps)
            print(f"budget {budget}: cost {cost}", flush=True)
            for name, (job, accuracy) in jobs.items():
                accs, sensitivity, trainable = [], [], None
                for seed in seeds if accuracy else []:
                    if job.method == "spt":  # the scoring pass that tune runs first, timed on its own
                        start = time.perf_counter()
                        task_sensitivity("digits", "tf_efficientnet_lite0", seed=seed)
                        sensitivity.append(time.perf_counter() - start)
                    result = tune(job, TrainConfig(epochs=args.epochs, seed=seed), Path(scratch) / f"{name}{budget}-{seed}")
                    accs.append(result.test_acc)
                    trainable = result.trainable_params - HEAD
                    print(f"{name} budget {budget} seed {seed}: {result.test_acc:.4f}", flush=True)
                acc_mean, acc_std = mean_std(accs) if accs else (None, None)
                rows.append({"method": name, "budget": budget, "trainable_params": trainable, "acc_mean": acc_mean,
                             "acc_std": acc_std, "seeds": seeds if accs else [],
                             "sensitivity_seconds": statistics.mean(sensitivity) if sensitivity else 0.0,
                             **cost[name]})  # fmt: skip
    vit = vit_cost(args.vit_steps)

    setup = {"backbone": "tf_efficientnet_lite0 (embedded)", "data": "digits, 96 px", "epochs": args.epochs,
             "lr": "method default", "spt": "structured = lora rank 8, alpha_threshold 10, sensitivity 16 x 32, "
             "BatchNorm folded", "counts": "backbone-side, head excluded", "vit_rows": vit,
             "cost": f"batch 32 at 96 px, median of {args.cost_steps} AdamW steps, methods taking turns",
             "vit_cost": f"{VIT}, random weights, batch 8 at 224 px, median of {args.vit_steps} AdamW steps"}  # fmt: skip
    ratio_columns = [(f"{label} vs {base_label}", lambda r, k=f"{key}_ratio_vs_{base}": f"{r[k]:.2f}")
                     for key, label in QUANTITIES for base, (_, base_label) in BASES.items()]  # fmt: skip
    vit_table = ["| cost only | trainable (backbone) | " + " | ".join(h for h, _ in ratio_columns) + " |",
                 "|---|---:|" + "---:|" * len(ratio_columns)] + [
        f"| {r['method']} | {r['trainable_params']:,} | " + " | ".join(cell(r) for _, cell in ratio_columns) + " |"
        for r in vit]  # fmt: skip
    write_report("spt_digits", f"SPT vs LoRA on the embedded default ({args.epochs} epochs, seeds {seeds})", setup,
                 rows, [
        ("method", lambda r: r["method"]),
        ("budget", lambda r: f"{r['budget']:,}"),
        ("trainable (backbone)", lambda r: f"{r['trainable_params']:,}" if r["trainable_params"] else "-"),
        ("test acc (mean ± std)", lambda r: percent_mean_std("acc_mean", "acc_std")(r) if r["acc_mean"] else "cost only"),
        ("sensitivity pass", lambda r: f"{r['sensitivity_seconds']:.1f} s"),
        *ratio_columns,
    ], footer="\n".join(vit_table))  # fmt: skip


if __name__ == "__main__":
    main()
