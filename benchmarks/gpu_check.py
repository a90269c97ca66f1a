"""The checks that need a GPU, as one short script: run it first on a lent GPU machine, commit what it prints.

1. Every method on ViT-B/16 (random weights, batch 32 at 224 px) at bf16 and at fp16 (accelerate's
   autocast, with its gradient scaler for fp16), a few AdamW steps through the same Accelerator set-up as
   training: the loss stays finite, images per second, and the peak GPU memory of the steps as a ratio to
   full fine-tuning's at the same precision.
2. The fused Triton merge kernel (adapt.kernels.fused_triton) against the plain torch fold on CUDA, on a
   ViT-B/16 fc1-sized weight: the largest difference, and each one's time.
3. One shrunk preset run end to end (`adapt tune --preset ssf-vtab` on a VTAB-1k-style folder of the
   digits, fp16 as SSF's runs, 2 epochs + 1 of cooldown): it finishes and reports both figures.

    PYTHONPATH=. python benchmarks/gpu_check.py            # on the GPU machine: a few minutes
    python benchmarks/gpu_check.py --smoke                  # on a CPU: a tiny ViT, bf16 only, to check the script

Writes gpu_check.json and gpu_check.md into $OUT when it is set (the device tool brings that back), else
into benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import adapt  # noqa: F401  (first: torchvision compat)
import torch

from adapt.adapted import AdaptedModel
from adapt.data import load_data
from adapt.devices import precision_accelerator
from adapt.methods import METHODS
from adapt.train_config import TrainConfig
from report import write_report

SPT_SENSITIVITY = {"sensitivity_batches": 2, "sensitivity_batch_size": 8}  # a short sensitivity pass


def method_rows(backbone: str, size: int, precisions: list[str], steps: int, batch: int, device: str,
                budget: str) -> list[dict]:  # fmt: skip
    """Each method at each precision: a few training steps, finite loss, img/s, peak memory (SPT at `budget`)."""
    options = {"spt": {"budget": budget, **SPT_SENSITIVITY}}
    data = load_data("digits", size, (0.5,) * 3, (0.5,) * 3, limit=64)
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 10, (batch,), generator=torch.Generator().manual_seed(1))
    rows = []
    for precision in precisions:
        for method in METHODS:
            config = TrainConfig(precision=precision, batch_size=batch)
            adapted = AdaptedModel.create(method, data.class_names, size, backbone, "random", options.get(method),
                                          setup=(data, config))  # fmt: skip
            rows.append({"precision": precision, "method": method, **train_steps(adapted, config, images, labels, steps, device)})
            del adapted
        full = next(r["peak_bytes"] for r in rows if r["precision"] == precision and r["method"] == "full")
        for row in rows:
            if row["precision"] == precision:
                row["memory_vs_full"] = row["peak_bytes"] / full if full else float("nan")
    return rows


def train_steps(adapted: AdaptedModel, config: TrainConfig, images, labels, steps: int, device: str) -> dict:
    """`steps` AdamW steps under the run's Accelerator (autocast; a gradient scaler for fp16)."""
    accelerator = precision_accelerator(config)
    model = adapted.model
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model, optimizer = accelerator.prepare(model, optimizer)
    images, labels = images.to(accelerator.device), labels.to(accelerator.device)
    cuda = device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    losses, start = [], 0.0
    model.train()
    for step in range(steps + 1):  # the first step builds the optimizer state and is not timed
        if step == 1:
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"finite": all(map(lambda v: v == v and abs(v) != float("inf"), losses)), "loss_first": losses[0],
            "loss_last": losses[-1], "images_per_s": steps * len(labels) / seconds,
            "peak_bytes": torch.cuda.max_memory_allocated() if cuda else 0,
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}  # fmt: skip


def triton_fold(device: str) -> dict:
    """The fused kernel against torch's fold: W <- diag(s) (W + 0.5 * B @ A) on a 3072 x 768 weight."""
    if device != "cuda":
        return {"skipped": "needs CUDA"}
    from adapt.kernels.fused_triton import scale_add_low_rank_

    generator = torch.Generator(device="cuda").manual_seed(0)
    weight = torch.randn(3072, 768, device="cuda", generator=generator)
    b, a = torch.randn(3072, 8, device="cuda", generator=generator), torch.randn(8, 768, device="cuda", generator=generator)
    scale = 1 + 0.02 * torch.randn(3072, device="cuda", generator=generator)
    expected = scale[:, None] * (weight + 0.5 * b @ a)
    fused = weight.clone()
    scale_add_low_rank_(fused, scale, b, a, 0.5)

    def timed(fn) -> float:
        fn()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(20):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - start) / 20

    work = weight.clone()
    fused_s = timed(lambda: scale_add_low_rank_(work, scale, b, a, 0.5))
    torch_s = timed(lambda: work.addmm_(b, a, alpha=0.5).mul_(scale[:, None]))
    return {"max_abs_diff": float((fused - expected).abs().max()), "fused_ms": 1e3 * fused_s, "torch_ms": 1e3 * torch_s}


def preset_run(backbone: str, size: int, precision: str) -> dict:
    """`adapt tune --preset ssf-vtab`, shrunk, on a VTAB-1k-style folder of the digits, through the CLI."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    with tempfile.TemporaryDirectory() as folder:
        task = Path(folder) / "svhn"
        lists = {"train800": range(0, 48), "val200": range(48, 64), "test": range(64, 96)}
        for split, indices in lists.items():
            (task / "images" / split).mkdir(parents=True)
            lines = []
            for i in indices:
                image = Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).convert("RGB")
                image.save(task / "images" / split / f"{i}.png")
                lines.append(f"images/{split}/{i}.png {digits.target[i]}")
            (task / f"{split}.txt").write_text("\n".join(lines) + "\n")
        (task / "train800val200.txt").write_text((task / "train800.txt").read_text() + (task / "val200.txt").read_text())
        out = Path(folder) / "run"
        command = [sys.executable, "-m", "adapt", "tune", "--preset", "ssf-vtab", "--data", f"vtab:{task}", "--backbone",
                   backbone, "--weights", "random", "--image-size", str(size), "--epochs", "2", "--cooldown-epochs", "1",
                   "--batch-size", "16", "--precision", precision, "--out", str(out)]  # fmt: skip
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
        summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
        return {"exit_code": done.returncode, "seconds": time.perf_counter() - start, "test_acc": summary.get("test_acc"),
                "best_periodic_test_acc": summary.get("best_periodic_test_acc"),
                "epochs": len(summary.get("history", [])), "stderr_tail": done.stderr[-400:]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, a tiny ViT at 32 px, bf16 only: checks the script")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.smoke:
        raise SystemExit("gpu_check: no CUDA device here; run it on the GPU machine, or with --smoke on a CPU")
    backbone, size, batch, precisions, budget = (("test_vit", 32, 8, ["bf16"], "1%") if args.smoke
                                                 else ("vit_base_patch16_224", 224, 32, ["bf16", "fp16"], "0.4M"))  # fmt: skip
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    rows = method_rows(backbone, size, precisions, 2 if args.smoke else args.steps, batch, device, budget)
    fold = triton_fold(device)
    preset = preset_run(backbone, size, "bf16" if args.smoke else "fp16")
    setup = {"device": name, "torch": torch.__version__, "backbone": backbone, "image_size": size, "batch": batch,
             "steps": args.steps, "triton_fold": fold, "preset_run": preset}  # fmt: skip
    footer = (f"Device: {name}, torch {torch.__version__}. Triton fold vs torch: {json.dumps(fold)}. Shrunk ssf-vtab "
              f"run: exit {preset['exit_code']}, {preset['epochs']} epochs, final test {preset['test_acc']}, best "
              f"over evaluations {preset['best_periodic_test_acc']}, {preset['seconds']:.0f} s.")  # fmt: skip
    out = os.environ.get("OUT")
    write_report("gpu_check", f"GPU check: every method at {', '.join(precisions)} on {backbone}", setup, rows, [
        ("precision", lambda r: r["precision"]), ("method", lambda r: r["method"]),
        ("finite loss", lambda r: "yes" if r["finite"] else "NO"), ("trained", lambda r: f"{r['trainable']:,}"),
        ("img/s", lambda r: f"{r['images_per_s']:.0f}"),
        ("peak memory vs full", lambda r: f"{r['memory_vs_full']:.2f}x" if r["peak_bytes"] else "-"),
    ], footer, folder=Path(out) if out else None)  # fmt: skip
    bad = [f"{r['method']} {r['precision']}" for r in rows if not r["finite"]]
    if bad or preset["exit_code"] != 0 or fold.get("max_abs_diff", 0) > 1e-3:
        raise SystemExit(f"gpu_check: FAILED ({', '.join(bad) or 'preset run or Triton fold'})")


if __name__ == "__main__":
    main()
