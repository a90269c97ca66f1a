"""What merging buys at inference, and what it costs: ssf, lora, bitfit on two backbones.

For EfficientNet-Lite0 (embedded weights) and a ViT-B/16-sized timm ViT (random weights),
each method's trainable tensors are perturbed as training would (N(0, 0.02)), then:
latency of the plain backbone, of the adapted (unmerged) model and of the merged model,
all in this run (median of repeats, the three taking turns in every repeat, batch 8 at 224 px, fp32, no grad), reported as
ratios to the plain backbone; the largest |logit difference| merged vs unmerged; the
merge's wall time and the peak extra memory it allocated, next to the largest single
tensor of the model.

    python benchmarks/merge.py [--repeats 7]

Writes benchmarks/results/merge.json and merge.md.
"""

from __future__ import annotations

import argparse
import copy

import adapt  # noqa: F401  (first: torchvision compat)
import torch

from adapt.adapted import AdaptedModel
from adapt.backbones import create_backbone
from adapt.merging.reparam import merge_adapted
from measure import interleaved_latency
from report import write_report

BACKBONES = {"tf_efficientnet_lite0": None, "vit_base_patch16_224": "random"}  # name -> weights
METHODS = ["ssf", "lora", "bitfit"]
CLASSES = [str(i) for i in range(10)]


def perturb_trainable(adapted: AdaptedModel, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapted.model.parameters():
            if p.requires_grad:
                p.add_(0.02 * torch.randn(p.shape, generator=generator))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(8, 3, 224, 224)
    rows = []
    for backbone, weights in BACKBONES.items():
        plain, _ = create_backbone(backbone, weights, len(CLASSES), 224)
        for method in METHODS:
            adapted = AdaptedModel.create(method, CLASSES, 224, backbone, weights)
            perturb_trainable(adapted)
            unmerged = copy.deepcopy(adapted.model.eval())
            with torch.no_grad():
                before = adapted.model(x)
            merged, report = merge_adapted(adapted)
            with torch.no_grad():
                max_abs_diff = float((merged(x) - before).abs().max())
            seconds = interleaved_latency({"plain": plain, "unmerged": unmerged, "merged": merged}, x, args.repeats)
            rows.append({
                "method": method,
                "backbone": backbone,
                "max_abs_diff": max_abs_diff,
                "unmerged_latency_ratio": seconds["unmerged"] / seconds["plain"],
                "merged_latency_ratio": seconds["merged"] / seconds["plain"],
                "merge_seconds": report.seconds,
                "merge_peak_extra_bytes": report.peak_extra_bytes,
                "largest_tensor_bytes": report.largest_tensor_bytes,
            })  # fmt: skip
            print(rows[-1], flush=True)

    setup = {"batch": 8, "image_size": 224, "repeats": args.repeats, "dtype": "fp32", "machine": "2-core CPU",
             "torch_threads": torch.get_num_threads()}  # fmt: skip
    write_report("merge", "Merging: inference cost and merge cost (CPU, batch 8 at 224 px, fp32)", setup, rows, [
        ("method", lambda r: r["method"]),
        ("backbone", lambda r: r["backbone"]),
        ("max abs diff", lambda r: f"{r['max_abs_diff']:.1e}"),
        ("unmerged latency / plain", lambda r: f"{r['unmerged_latency_ratio']:.3f}"),
        ("merged latency / plain", lambda r: f"{r['merged_latency_ratio']:.3f}"),
        ("merge time", lambda r: f"{r['merge_seconds'] * 1000:.0f} ms"),
        ("peak extra memory", lambda r: f"{r['merge_peak_extra_bytes'] / 2**20:.2f} MiB"),
        ("largest tensor", lambda r: f"{r['largest_tensor_bytes'] / 2**20:.2f} MiB"),
    ], footer="Goals: merged latency / plain <= 1.02; peak extra memory <= 2 x the largest tensor.")  # fmt: skip

if __name__ == "__main__":
    main()
