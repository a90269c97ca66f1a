"""Every method on the embedded default (Lite0, digits at 96 px): accuracy, step time, peak memory.

Accuracy is the test accuracy after the default `adapt tune` recipe, 3 seeds. Step time and peak
training memory are measured in one run with the methods taking turns (benchmarks/measure.py:
median of a few AdamW steps on one batch of 32; the peak of tensor bytes the steps keep alive
beyond the model and data, counted op by op), as ratios to full fine-tuning. Beside each, the
same method as it ran before the lean frozen layers (adapt.methods.lean stripped; SSF keeps its
norms' lean node, which it had before), in the same turns: "step time vs before".

SPT runs at LoRA's default backbone count (rank 8: 182,272 entries; it has no default budget),
HST in its paper variant.

A second table gives the cost of the same methods with gradient checkpointing (`--grad-checkpointing`:
each block keeps only its input and runs again in backward; the same gradients), in the same turns.

A third table measures cost only, on a random-weight ViT-B/16 (batch 8 at 224 px): step time
and peak training memory vs full fine-tuning, median of a few AdamW steps, for the methods that need a
ViT (VPT, AdaptFormer, VeRA) and some of the others beside them. No pretrained ViT ships here, so their
accuracy is not measured.

    python benchmarks/methods_digits.py [--epochs 10] [--seeds 0,1,2] [--steps 9] [--vit-steps 4] [--keep-accuracy]

--keep-accuracy keeps the committed accuracy of the methods it has (same epochs and seeds) and trains the
others; every cost is measured again, all methods taking turns.

Writes benchmarks/results/methods_digits.json and methods_digits.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import adapt  # noqa: F401  (first: torchvision compat)
import torch

from adapt.adapted import AdaptedModel
from adapt.methods.lean import LeanBatchNorm, without_lean_layers
from adapt.methods.mixins import with_mixin
from adapt.train import TrainConfig
from adapt.tuning import TuneJob, prepare, tune
from measure import interleaved_training_cost, mean_std, training_cost
from report import percent_mean_std, write_report

SPT_BUDGET = 182_272  # LoRA rank 8's trainable backbone count on Lite0
METHODS = {"full": {}, "linear": {}, "bitfit": {}, "ssf": {}, "lora": {}, "spt": {"budget": SPT_BUDGET},
           "hst": {"variant": "paper"}, "dora": {}, "loha": {}, "lokr": {}, "ia3": {}, "oft": {}, "boft": {},
           "repadapter": {}}  # fmt: skip
VIT = "vit_base_patch16_224"
# the ViT-only methods (VPT, AdaptFormer; VeRA: Linear layers only) are measured here, cost only
VIT_METHODS = ["full", "bitfit", "ssf", "lora", "dora", "repadapter", "adaptformer", "vpt-deep", "vpt-shallow", "vera"]
CHECKPOINTED = ["full", "bitfit", "lora", "ssf", "spt"]  # HST refuses it; linear keeps nothing in the blocks


def as_before(adapted: AdaptedModel) -> AdaptedModel:
    """The method as it ran before the lean frozen layers: plain frozen convs and BatchNorms, except
    SSF's norms, which had the lean node already."""
    without_lean_layers(adapted.model)
    if adapted.method.name == "ssf":
        for module in adapted.model.modules():
            if isinstance(module, torch.nn.BatchNorm2d) and hasattr(module, "ssf"):
                with_mixin(module, LeanBatchNorm)
    return adapted


def costs(steps: int) -> tuple[dict[str, tuple[float, int, float, int]], dict[str, tuple[float, int]]]:
    """(step seconds, peak bytes, step seconds before, peak bytes before) per method, and (step seconds, peak
    bytes) of the CHECKPOINTED methods with gradient checkpointing, all taking turns."""
    config = TrainConfig()
    models = {}
    for method, options in METHODS.items():
        models[method], data = prepare(TuneJob(method=method, options=options), "digits", config)
        models[f"{method} (before)"] = as_before(prepare(TuneJob(method=method, options=options), "digits", config)[0])
    for method in CHECKPOINTED:
        models[f"{method} (checkpointed)"] = prepare(TuneJob(method=method, options=METHODS[method]), "digits", config)[0]
        models[f"{method} (checkpointed)"].set_grad_checkpointing(True)
    images, labels = next(iter(torch.utils.data.DataLoader(data.train, batch_size=config.batch_size)))
    measured = interleaved_training_cost(models, images, labels, steps)
    return ({m: (*measured[m], *measured[f"{m} (before)"]) for m in METHODS},
            {m: measured[f"{m} (checkpointed)"] for m in CHECKPOINTED})  # fmt: skip


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


RESULTS = Path(__file__).parent / "results" / "methods_digits.json"
# each finished (method, seed) training run's test accuracy, so that a stopped run goes on where it stopped
RUNS = Path(__file__).parent / "results" / "methods_digits_runs.json"


def finished_runs(epochs: int) -> dict[str, dict]:
    """{method: {"acc": {seed: accuracy}, "params": [trainable, total]}} of runs at `epochs` epochs."""
    if not RUNS.is_file():
        return {}
    saved = json.loads(RUNS.read_text())
    return saved["methods"] if saved.get("epochs") == epochs else {}


def record_run(epochs: int, runs: dict[str, dict]) -> None:
    RUNS.write_text(json.dumps({"epochs": epochs, "methods": runs}, indent=1) + "\n")


def committed_accuracy() -> tuple[dict[str, tuple[tuple[float, float], int, int]], int, list[int]]:
    """Each method's accuracy from the committed results (a cost-only rerun keeps them), with the epochs
    and seeds of the run that measured them."""
    saved = json.loads(RESULTS.read_text())
    accuracy = {r["method"]: ((r["acc_mean"], r["acc_std"]), r["trainable_params"],
                              round(100 * r["trainable_params"] / r["trainable_pct"])) for r in saved["rows"]}  # fmt: skip
    return accuracy, saved["setup"]["epochs"], saved["rows"][0]["seeds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=9, help="timed training steps per method (cost)")
    parser.add_argument("--vit-steps", type=int, default=4)
    parser.add_argument("--cost-only", action="store_true",
                        help="measure cost only; keep each method's accuracy from the committed results")
    parser.add_argument("--method-seeds", default="",
                        help="other seeds for some methods, e.g. 'loha=0;boft=0' (the table says how many each had)")
    parser.add_argument("--keep-accuracy", action="store_true",
                        help="train only the methods the committed results lack (at their epochs and seeds)")
    args = parser.parse_args()
    seeds, epochs, accuracy = [int(s) for s in args.seeds.split(",")], args.epochs, {}
    if args.cost_only or args.keep_accuracy:
        accuracy, epochs, seeds = committed_accuracy()
    kept = sorted(accuracy)
    method_seeds = {m: seeds for m in METHODS} | {
        m: [int(x) for x in v.split(",")] for m, v in (item.split("=") for item in filter(None, args.method_seeds.split(";")))}
    cost, checkpointed = costs(args.steps)
    print(cost, checkpointed, flush=True)
    runs = finished_runs(epochs)
    with tempfile.TemporaryDirectory() as scratch:
        for method, options in METHODS.items():
            if method in accuracy:  # --cost-only
                continue
            done = runs.setdefault(method, {"acc": {}, "params": None})
            for seed in method_seeds[method]:
                if str(seed) in done["acc"]:
                    continue
                job = TuneJob(method=method, options=options)
                result = tune(job, TrainConfig(epochs=epochs, seed=seed), f"{scratch}/{method}{seed}")
                done["acc"][str(seed)], done["params"] = result.test_acc, [result.trainable_params, result.total_params]
                record_run(epochs, runs)
                print(f"{method} seed {seed}: test acc {result.test_acc:.4f}", flush=True)
            accs = [done["acc"][str(seed)] for seed in method_seeds[method]]
            accuracy[method] = (mean_std(accs), *done["params"])

    full_step, full_peak = cost["full"][:2]
    rows = []
    for method in METHODS:
        (acc, std), trainable, total = accuracy[method]
        step, peak, step_before, peak_before = cost[method]
        rows.append({"method": method, "options": METHODS[method], "trainable_params": trainable,
                     "trainable_pct": 100 * trainable / total, "acc_mean": acc, "acc_std": std,
                     "seeds": method_seeds.get(method, seeds),
                     "step_time_ratio_vs_full": step / full_step, "peak_mem_ratio_vs_full": peak / full_peak,
                     "peak_mem_ratio_vs_lora": peak / cost["lora"][1], "step_time_ratio_vs_before": step / step_before,
                     "peak_mem_ratio_vs_before": peak / peak_before, "step_seconds": step, "peak_bytes": peak})  # fmt: skip
    checkpointed_rows = [{"method": m, "step_time_ratio_vs_full": step / full_step,
                          "peak_mem_ratio_vs_full": peak / full_peak, "step_time_ratio_vs_unchecked": step / cost[m][0],
                          "peak_mem_ratio_vs_unchecked": peak / cost[m][1], "step_seconds": step, "peak_bytes": peak}
                         for m, (step, peak) in checkpointed.items()]  # fmt: skip
    vit = vit_cost(args.vit_steps)
    setup = {"backbone": "tf_efficientnet_lite0 (embedded ImageNet weights)", "data": "digits, 96 px",
             "epochs": epochs, "batch_size": 32, "lr": "method default", "machine": "2-core CPU",
             "accuracy": "from the committed results' run (cost-only rerun)" if args.cost_only else
             f"this run, except {', '.join(kept)}: the committed run's (same epochs and seeds)" if kept else
             "each (method, seed) training run as recorded in methods_digits_runs.json when it finished (a run "
             "stopped midway goes on where it stopped; the costs are all this run's)",
             "cost": f"batch 32 at 96 px, median of {args.steps} AdamW steps, methods taking turns",
             "spt_budget": SPT_BUDGET, "vit_cost": f"{VIT}, random weights, batch 8 at 224 px, median of "
             f"{args.vit_steps} AdamW steps", "vit_rows": vit, "checkpointed_rows": checkpointed_rows}  # fmt: skip
    checkpointed_table = [
        "| method with --grad-checkpointing (cost only) | step time vs full | peak train memory vs full | step time vs "
        "without | peak memory vs without |", "|---|---:|---:|---:|---:|"] + [
        f"| {r['method']} | {r['step_time_ratio_vs_full']:.2f} | {r['peak_mem_ratio_vs_full']:.2f} | "
        f"{r['step_time_ratio_vs_unchecked']:.2f} | {r['peak_mem_ratio_vs_unchecked']:.2f} |" for r in checkpointed_rows]  # fmt: skip
    vit_table = ["| method on ViT-B/16 (cost only) | trainable params | step time vs full | peak train memory vs full |",
                 "|---|---:|---:|---:|"] + [
        f"| {r['method']} | {r['trainable_params']:,} | {r['step_time_ratio_vs_full']:.2f} | {r['peak_mem_ratio_vs_full']:.2f} |"
        for r in vit]  # fmt: skip
    write_report("methods_digits", f"Methods on the embedded default ({epochs} epochs, seeds {seeds})", setup, rows, [
        ("method", lambda r: r["method"] + (" (budget 182,272)" if r["method"] == "spt" else "")),
        ("trainable params", lambda r: f"{r['trainable_params']:,}"),
        ("trainable %", lambda r: f"{r['trainable_pct']:.2f}%"),
        ("test acc (mean ± std)", lambda r: percent_mean_std("acc_mean", "acc_std")(r) if len(r["seeds"]) > 1
         else f"{100 * r['acc_mean']:.2f} (seed {r['seeds'][0]} only)"),
        ("step time vs full", lambda r: f"{r['step_time_ratio_vs_full']:.2f}"),
        ("peak train memory vs full", lambda r: f"{r['peak_mem_ratio_vs_full']:.2f}"),
        ("peak memory vs LoRA", lambda r: f"{r['peak_mem_ratio_vs_lora']:.2f}"),
        ("step time vs before", lambda r: f"{r['step_time_ratio_vs_before']:.2f}"),
        ("peak memory vs before", lambda r: f"{r['peak_mem_ratio_vs_before']:.2f}"),
    ], footer="\n".join([*checkpointed_table, "", *vit_table]))  # fmt: skip


if __name__ == "__main__":
    main()
