"""SPT (structured = LoRA) vs LoRA vs SSF at matched budgets on the embedded default, 3 seeds.

Budgets are LoRA's own backbone-side counts at rank 2 and rank 8 on Lite0 (45,568 and
182,272), so LoRA and SPT spend the same; SSF has one size (42,016, closest to the
first). Counts exclude the 12,810-parameter head, which every method trains. Step time
is the mean training step over the run, as a ratio to full fine-tuning's measured in
the same process; sensitivity_seconds is SPT's scoring pass (16 batches of 32).

    python benchmarks/spt_digits.py [--epochs 10] [--seeds 0,1,2]

Writes benchmarks/results/spt_digits.json and spt_digits.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import adapt  # noqa: F401  (first: torchvision compat)
from adapt.sensitivity import parameter_sensitivity
from adapt.train import TrainConfig
from adapt.tune import TuneJob, tune
from measure import mean_std, mean_step_seconds
from report import percent_mean_std, write_report

HEAD = 1280 * 10 + 10
LORA_PER_RANK = 22_784  # backbone-side LoRA parameters per rank on Lite0 (default targets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    budgets = {2: 2 * LORA_PER_RANK, 8: 8 * LORA_PER_RANK}
    configs = []
    for rank, budget in budgets.items():
        configs.append(("spt", budget, TuneJob(method="spt", budget=str(budget), options={"rank": 8})))
        configs.append(("lora", budget, TuneJob(method="lora", options={"rank": rank})))
    configs.append(("ssf", budgets[2], TuneJob(method="ssf")))

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        full = tune(TuneJob(method="full"), TrainConfig(epochs=1), Path(scratch) / "full")
        full_step = mean_step_seconds(full)
        for method, budget, job in configs:
            accs, steps, sensitivity = [], [], []
            for seed in seeds:
                if method == "spt":  # the scoring pass that tune runs first, timed on its own
                    start = time.perf_counter()
                    parameter_sensitivity(job, job.sensitivity_batches, job.sensitivity_batch_size, seed)
                    sensitivity.append(time.perf_counter() - start)
                result = tune(job, TrainConfig(epochs=args.epochs, seed=seed), Path(scratch) / f"{method}{budget}-{seed}")
                accs.append(result.test_acc)
                steps.append(mean_step_seconds(result))
                print(f"{method} budget {budget} seed {seed}: {result.test_acc:.4f}", flush=True)
            acc_mean, acc_std = mean_std(accs)
            rows.append({
                "method": method,
                "budget": budget,
                "trainable_params": result.trainable_params - HEAD,
                "acc_mean": acc_mean,
                "acc_std": acc_std,
                "seeds": seeds,
                "sensitivity_seconds": statistics.mean(sensitivity) if sensitivity else 0.0,
                "step_time_ratio_vs_full": statistics.mean(steps) / full_step,
            })  # fmt: skip

    setup = {"backbone": "tf_efficientnet_lite0 (embedded)", "data": "digits, 96 px", "epochs": args.epochs,
             "lr": "method default", "spt": "structured = lora rank 8, alpha_threshold 10, sensitivity 16 x 32",
             "counts": "backbone-side, head (12,810) excluded"}  # fmt: skip
    write_report("spt_digits", f"SPT vs LoRA vs SSF on the embedded default ({args.epochs} epochs, seeds {seeds})", setup,
                 rows, [
        ("method", lambda r: r["method"]),
        ("budget", lambda r: f"{r['budget']:,}"),
        ("trainable (backbone)", lambda r: f"{r['trainable_params']:,}"),
        ("test acc (mean ± std)", percent_mean_std("acc_mean", "acc_std")),
        ("sensitivity pass", lambda r: f"{r['sensitivity_seconds']:.1f} s"),
        ("step time vs full", lambda r: f"{r['step_time_ratio_vs_full']:.2f}"),
    ])  # fmt: skip


if __name__ == "__main__":
    main()
