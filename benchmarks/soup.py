"""Soups: speed and memory of adapt's streaming soup against the usual approaches, and soups on digits.

Part 1, in one run on N = 2, 4, 8 checkpoints of ViT-B/16's size (random weights, fp32,
~344 MB each), each approach in its own child process, timed after its imports:
- adapt: `stream_soup` (one read-only mapping per file, one tensor of every file at a time), which also
  records the sha256 of every input, hashed beside the merge: a first soup of these files, and the
  same soup again (the digests are remembered, as when a user tries another recipe on the same files);
- reference: load each whole file, keep a running sum (the model-soups code);
- naive: load every file, then average.
- adapt's other recipes (model-stock, fisher, ties, slerp at N = 2, wise-ft at N = 1), which also read the
  base (model-stock, ties, wise-ft) or each ingredient's Fisher (fisher: a file of the checkpoint's size each);
  "time / read all" counts the ingredients only.
Beside each: the time to read every file once (same run, page cache warm), and the peak
anonymous and total resident memory over the child's baseline, sampled from /proc. The
approaches take turns, 5 times, each after a sync; times are medians.

Part 2, on digits (embedded Lite0, 96 px), the soups paper's recipe: one linear probe,
then 5 SSF and 5 LoRA fine-tunings that all start from the probe's head (LP-FT, `tune
--init-from`), as the paper's ingredients share one trained head, and vary in learning
rate, seed and weight decay (the digits take no augmentation, so that axis of the paper's
sweep is out). Then uniform, greedy (val), TIES and task arithmetic (scale auto on val,
each from its paper's grid), Model Stock and Fisher soups of the five; uniform, Model Stock and SLERP (t on val)
of the first two (Model Stock's setting: two fine-tunes of one start); WiSE-FT (alpha on val) of the best single,
each scored on test beside the best single ingredient
and the paper's CLIP numbers. The best single ingredient is the paper's: the one with the best held-out
(val) accuracy, the conventional recipe that soups are measured against (in the paper's own results,
individual_model_results.jsonl of mlfoundations/model-soups, it is also the best on test); beside it,
the best test accuracy of the five, an oracle no recipe can choose.

    python benchmarks/soup.py [--epochs 3] [--skip-digits] [--skip-streaming]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import adapt  # noqa: F401  (first: timm's torchvision fix)
import timm
import torch
from report import write_report
from safetensors.torch import save_file

CHILD = r"""
import json, sys, threading, time
import adapt, torch
from safetensors.torch import load_file, save_file
from adapt.merging.soup import stream_soup

def status():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return int(fields["RssAnon"].split()[0]) * 1024, int(fields["VmRSS"].split()[0]) * 1024

approach, out, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
if approach.startswith("adapt"):
    import os, tempfile
    os.environ["ADAPT_CACHE_DIR"] = tempfile.mkdtemp()  # no digest remembered from another run
    if approach == "adapt (again)":
        from adapt.file_digests import file_records
        file_records(paths)  # the same files souped before: their digests are remembered
base_anon, base_rss = status()
peak = [0, 0]
running = True
def sample():
    while running:
        anon, rss = status()
        peak[0], peak[1] = max(peak[0], anon), max(peak[1], rss)
        time.sleep(0.002)
threading.Thread(target=sample, daemon=True).start()
start = time.perf_counter()
if approach == "read_all":
    buffer = bytearray(64 * 2**20)
    for path in paths:
        with open(path, "rb", buffering=0) as handle:
            while handle.readinto(buffer):
                pass
elif approach in ("adapt", "adapt (again)"):
    stream_soup(paths, out, overwrite=True)
elif approach.startswith("adapt "):  # a recipe: the base and the Fisher files sit beside the checkpoints
    from pathlib import Path
    from adapt.merging.recipes import create_recipe
    from adapt.merging.tensors import TensorFile
    name = approach.split(" ", 1)[1]
    recipe = create_recipe(name, {})
    folder = Path(paths[0]).parent
    if name == "fisher":
        recipe.diagonals = [TensorFile(folder / f"fisher-{i}.safetensors") for i in range(len(paths))]
        recipe.norms = [1.0] * len(paths)
    stream_soup(paths, out, recipe, base=folder / "base.safetensors" if recipe.needs_base else None, overwrite=True)
elif approach == "reference":
    total = None
    for path in paths:
        state = load_file(path)
        if total is None:
            total = {k: v.clone() for k, v in state.items()}
        else:
            for k in total:
                total[k] += state[k]
        del state
    save_file({k: v / len(paths) for k, v in total.items()}, out)
elif approach == "naive":
    states = [load_file(path) for path in paths]
    save_file({k: sum(s[k] for s in states) / len(states) for k in states[0]}, out)
seconds = time.perf_counter() - start
running = False
anon, rss = status()
peak[0], peak[1] = max(peak[0], anon), max(peak[1], rss)
print(json.dumps({"seconds": seconds, "peak_anon": peak[0] - base_anon, "peak_rss": peak[1] - base_rss}))
"""
APPROACHES = ("adapt", "adapt (again)", "reference", "naive")
# the recipes beyond the mean, each at the counts it merges (wise-ft: one fine-tune and the base; slerp: two)
RECIPES = {"adapt model-stock": (2, 4, 8), "adapt fisher": (2, 4, 8), "adapt ties": (2, 4, 8), "adapt slerp": (2,),
           "adapt wise-ft": (1,)}  # fmt: skip
REPEATS = 5  # medians of time, maxima of memory


def make_checkpoints(folder: Path, count: int) -> list[Path]:
    """`count` fine-tunes, their base (base.safetensors) and a positive Fisher of each (fisher-i.safetensors)."""
    shapes = {k: v.shape for k, v in timm.create_model("vit_base_patch16_224", pretrained=False).state_dict().items()}
    base = {k: torch.randn(s, generator=torch.Generator().manual_seed(1000)) * 0.02 for k, s in shapes.items()}
    save_file(base, folder / "base.safetensors")
    paths = []
    for i in range(count):
        generator = torch.Generator().manual_seed(i)
        paths.append(folder / f"vitb-{i}.safetensors")
        save_file({k: v + torch.randn(v.shape, generator=generator) * 0.002 for k, v in base.items()}, paths[-1])
        save_file({k: torch.rand(s, generator=generator) for k, s in shapes.items()}, folder / f"fisher-{i}.safetensors")
    return paths


def child(approach: str, paths: list[Path], out: Path) -> dict:
    os.sync()  # earlier runs' dirty pages are flushed outside the timing, so that no run pays for another's writeback
    result = subprocess.run([sys.executable, "-c", CHILD, approach, str(out), *map(str, paths)], capture_output=True,
                            text=True, check=True)  # fmt: skip
    return json.loads(result.stdout.strip().splitlines()[-1])


def streaming(scratch: Path) -> list[dict]:
    files = make_checkpoints(scratch, 8)
    ckpt_bytes = files[0].stat().st_size
    child("read_all", sorted(scratch.glob("*.safetensors")), scratch / "warm")  # page cache warm for everyone
    rows = []
    for n in (1, 2, 4, 8):
        paths = files[:n]
        approaches = [a for a in APPROACHES if n > 1] + [name for name, counts in RECIPES.items() if n in counts]
        runs: dict[str, list[dict]] = {name: [] for name in ("read_all", *approaches)}
        for _ in range(REPEATS):  # the approaches take turns, so that a slower moment of the machine hits all of them
            runs["read_all"].append(child("read_all", paths, scratch / "unused"))
            for approach in approaches:
                out = scratch / f"out-{approach}.safetensors"
                out.unlink(missing_ok=True)  # every approach writes a new file
                runs[approach].append(child(approach, paths, out))
        read_all = statistics.median(r["seconds"] for r in runs["read_all"])
        for approach in approaches:
            rows.append({"approach": approach, "n_ckpts": n, "ckpt_bytes": ckpt_bytes,
                         "seconds": statistics.median(r["seconds"] for r in runs[approach]), "read_all_seconds": read_all,
                         "peak_anon_bytes_over_baseline": max(r["peak_anon"] for r in runs[approach]),
                         "peak_rss_bytes_over_baseline": max(r["peak_rss"] for r in runs[approach])})  # fmt: skip
            print(rows[-1], flush=True)
    return rows


# (lr, weight decay) per ingredient; ingredient i also takes seed i. A narrow band around a learning rate that
# trains each method well in these few epochs: ingredients far apart in quality pull a soup down (a first sweep
# from 1e-3 to 5e-3 for SSF put the uniform soup 2.8 points under its best ingredient)
SWEEP = {"ssf": ((4e-3, 0.05), (5e-3, 0.05), (6e-3, 0.0), (5e-3, 0.1), (5e-3, 0.02)),
         "lora": ((1.5e-3, 0.05), (2e-3, 0.05), (2.5e-3, 0.0), (2e-3, 0.1), (2e-3, 0.02))}  # fmt: skip
FISHER_EXAMPLES = 64  # of the reference's 4096: each costs a backward pass per class (10) through Lite0 at 96 px
PAPER = {"greedy": 81.03, "uniform": 79.97, "best single ingredient": 80.39}  # CLIP ViT-B/32 on ImageNet (Wortsman et al.)


def digits(scratch: Path, epochs: int) -> list[dict]:
    from adapt.evaluation import evaluate_checkpoint
    from adapt.merging.adapter_soup import make_soup
    from adapt.merging.recipes import create_recipe
    from adapt.train import TrainConfig
    from adapt.tuning import TuneJob, tune

    tune(TuneJob(method="linear"), TrainConfig(epochs=epochs, seed=0), scratch / "probe")
    probe = scratch / "probe" / "adapter.safetensors"
    rows = [{"method": "linear", "soup": "linear probe (the shared start)",
             "test_acc": evaluate_checkpoint(probe, split="test").accuracy}]  # fmt: skip
    for method, sweep in SWEEP.items():
        runs = []
        for seed, (lr, weight_decay) in enumerate(sweep):
            out = scratch / f"{method}-{seed}"
            tune(TuneJob(method=method, init_from=str(probe)), TrainConfig(epochs=epochs, lr=lr, weight_decay=weight_decay,
                                                                          seed=seed), out)  # fmt: skip
            runs.append(out / "adapter.safetensors")
        singles = [evaluate_checkpoint(p, split="test").accuracy for p in runs]
        on_val = [evaluate_checkpoint(p, split="val").accuracy for p in runs]
        chosen = max(range(len(runs)), key=lambda i: on_val[i])  # the first of equals, as a stable sort by val
        rows.append({"method": method, "soup": "best single ingredient", "test_acc": singles[chosen],
                     "chosen": chosen, "singles": singles, "singles_val": on_val})  # fmt: skip
        rows.append({"method": method, "soup": "best single ingredient on test (oracle)", "test_acc": max(singles)})
        two, best = runs[:2], [runs[chosen]]  # Model Stock's setting: two fine-tunes (seeds 0 and 1) of one start
        recipes = {"uniform": ("uniform", {}, runs), "greedy": ("greedy", {}, runs),
                   "ties": ("ties", {"scale": "auto"}, runs),
                   "task-arithmetic": ("task-arithmetic", {"scale": "auto"}, runs),
                   "model-stock": ("model-stock", {}, runs), f"fisher ({FISHER_EXAMPLES} examples each)":
                   ("fisher", {"examples": FISHER_EXAMPLES}, runs),
                   "uniform of two": ("uniform", {}, two), "model-stock of two": ("model-stock", {}, two),
                   "slerp of two": ("slerp", {"scale": "auto"}, two),
                   "wise-ft of the best single": ("wise-ft", {"scale": "auto"}, best)}  # fmt: skip
        for label, (name, options, ingredients) in recipes.items():
            out = scratch / f"{method}-{label.split()[0]}-{len(ingredients)}.safetensors"
            recipe = create_recipe(name, options)
            summary = make_soup(ingredients, out, recipe, data="digits", split="train" if name == "fisher" else "val")
            rows.append({"method": method, "soup": label, "test_acc": evaluate_checkpoint(out, split="test").accuracy,
                         "kind": summary.kind, "scale": summary.scale,
                         "added": [s.added for s in summary.greedy_steps]})  # fmt: skip
            print(rows[-1], flush=True)
    rows += [{"method": "paper: CLIP ViT-B/32, ImageNet", "soup": soup, "test_acc": acc / 100} for soup, acc in PAPER.items()]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--skip-digits", action="store_true")
    parser.add_argument("--skip-streaming", action="store_true")
    args = parser.parse_args()
    start = time.perf_counter()
    if not args.skip_streaming:
        streaming_report()
    if not args.skip_digits:
        digits_report(args.epochs)
    print(f"done in {time.perf_counter() - start:.0f} s")


def streaming_report() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        rows = streaming(Path(scratch))
    gib = 2**30
    write_report(
        "soup", "Streaming soups: time vs reading every file once, memory vs one checkpoint (ViT-B/16-sized, fp32)",
        {"checkpoint": "vit_base_patch16_224 shapes, random fp32", "page_cache": "warm", "cores": torch.get_num_threads()},
        rows,
        [("approach", lambda r: r["approach"]), ("N", lambda r: str(r["n_ckpts"])),
         ("seconds", lambda r: f"{r['seconds']:.2f}"),
         ("time / read all", lambda r: f"{r['seconds'] / r['read_all_seconds']:.2f}"),
         ("peak anon / ckpt", lambda r: f"{r['peak_anon_bytes_over_baseline'] / r['ckpt_bytes']:.2f}"),
         ("peak RSS / ckpt", lambda r: f"{r['peak_rss_bytes_over_baseline'] / r['ckpt_bytes']:.2f}"),
         ("peak anon GiB", lambda r: f"{r['peak_anon_bytes_over_baseline'] / gib:.2f}")],  # fmt: skip
        footer="One checkpoint = 346 MB. Each approach runs in its own process, 5 times in turn with the others, after "
               "a sync; seconds are medians (writing the new output included; reading does not write), memory the "
               "largest peak, sampled every 2 ms from /proc/self/status after the imports. adapt also records the sha256 "
               "of every input (hashed beside the merge, ~1.7 GB/s per core here); 'adapt (again)' is the same soup "
               "when those digests are remembered from an earlier soup of the same files.",
    )  # fmt: skip


def digits_report(epochs: int) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        rows = digits(Path(scratch), epochs)
    write_report(
        "soup_digits", f"Soups on digits (embedded Lite0, 96 px, LP-FT ingredients, {epochs} epochs each, test accuracy)",
        {"epochs": epochs, "start": f"a linear probe ({epochs} epochs); every ingredient --init-from its head",
         "ingredients": {m: [f"lr {lr:g}, wd {wd:g}, seed {i}" for i, (lr, wd) in enumerate(v)] for m, v in SWEEP.items()},
         "choices": "greedy and scale=auto on the val split; best single ingredient = the best on val (the "
                    "paper's baseline), reported on test; the oracle row = the best test accuracy of the five"}, rows,
        [("method", lambda r: r["method"]), ("soup", lambda r: r["soup"]),
         ("test acc", lambda r: f"{100 * r['test_acc']:.2f}"),
         ("what was souped", lambda r: r.get("kind", "") or ""),
         ("scale", lambda r: f"{r['scale']:g}" if r.get("scale") is not None else ""),
         ("ingredients added", lambda r: str(sum(r["added"])) if r.get("added") else "")],  # fmt: skip
    )


if __name__ == "__main__":
    main()
