"""full vs linear vs bitfit vs ssf on the embedded default (Lite0, digits at 96 px), 3 seeds.

Accuracy is the test accuracy after the default `adapt tune` recipe. Step time is the mean
wall time of a training step (data loading included) and is reported as a ratio to full
fine-tuning measured in the same run. Peak memory is the peak resident memory added by
training steps over what the process held after building the model and data, measured
in a fresh subprocess per method, again as a ratio to full fine-tuning.

    python benchmarks/methods_digits.py [--epochs 10] [--seeds 0,1,2]

Writes benchmarks/results/methods_digits.json and methods_digits.md.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import adapt  # noqa: F401  (first: torchvision compat)
from adapt.checkpoint import write_json_atomic, write_text_atomic
from adapt.train import TrainConfig
from adapt.tune import TuneJob, prepare, tune

METHODS = ["full", "linear", "bitfit", "ssf"]
RESULTS = Path(__file__).parent / "results"
MEMORY_STEPS = 10


def peak_training_memory(method: str) -> int:
    """Run in a fresh process: bytes of peak RSS that MEMORY_STEPS training steps add."""
    import torch

    config = TrainConfig(batch_size=32)
    adapted, data = prepare(TuneJob(method=method), "digits", config)
    model = adapted.model
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loader = torch.utils.data.DataLoader(data.train, batch_size=config.batch_size, shuffle=True)
    images, labels = next(iter(loader))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    adapted.method.set_train_mode(model)
    for _ in range(MEMORY_STEPS):
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
        optimizer.zero_grad()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024  # ru_maxrss is KiB on Linux


def measure_memory_in_subprocess(method: str) -> int:
    command = [sys.executable, __file__, "--memory-of", method]
    return int(subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_of:
        print(peak_training_memory(args.memory_of))
        return

    seeds = [int(s) for s in args.seeds.split(",")]
    measured = {}
    with tempfile.TemporaryDirectory() as scratch:
        for method in METHODS:
            accs, step_times = [], []
            for seed in seeds:
                result = tune(TuneJob(method=method), TrainConfig(epochs=args.epochs, seed=seed), f"{scratch}/{method}{seed}")
                step_times.append(sum(h.seconds for h in result.history) / sum(h.steps for h in result.history))
                accs.append(result.test_acc)
                print(f"{method} seed {seed}: test acc {result.test_acc:.4f}", flush=True)
            measured[method] = {
                "accs": accs,
                "step_time": statistics.mean(step_times),
                "peak_mem": measure_memory_in_subprocess(method),
                "trainable": result.trainable_params,
                "total": result.total_params,
            }

    full = measured["full"]
    rows = [
        {
            "method": method,
            "trainable_params": m["trainable"],
            "trainable_pct": 100 * m["trainable"] / m["total"],
            "acc_mean": statistics.mean(m["accs"]),
            "acc_std": statistics.stdev(m["accs"]) if len(m["accs"]) > 1 else 0.0,
            "seeds": seeds,
            "step_time_ratio_vs_full": m["step_time"] / full["step_time"],
            "peak_mem_ratio_vs_full": m["peak_mem"] / full["peak_mem"],
        }
        for method, m in measured.items()
    ]
    setup = {"backbone": "tf_efficientnet_lite0 (embedded ImageNet weights)", "data": "digits, 96 px",
             "epochs": args.epochs, "batch_size": 32, "lr": "method default", "machine": "2-core CPU"}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    write_json_atomic(RESULTS / "methods_digits.json", {"setup": setup, "rows": rows})
    lines = [
        f"# Methods on the embedded default ({args.epochs} epochs, seeds {seeds})",
        "",
        "| method | trainable params | trainable % | test acc (mean ± std) | step time vs full | peak train memory vs full |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['trainable_params']:,} | {r['trainable_pct']:.2f}% | "
            f"{100 * r['acc_mean']:.2f} ± {100 * r['acc_std']:.2f} | {r['step_time_ratio_vs_full']:.2f} | "
            f"{r['peak_mem_ratio_vs_full']:.2f} |"
        )
    write_text_atomic(RESULTS / "methods_digits.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
