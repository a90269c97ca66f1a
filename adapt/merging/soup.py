"""Model soups and merges over state dict files, streamed tensor by tensor.

Ingredients are full state dicts (merged models, fine-tuned timm models) or adapter
checkpoints whose tensors average exactly (SSF, BitFit, linear, full, HST side networks);
adapt.merging.adapter_soup routes the other adapters (LoRA, SPT) through their folded
weights first. Everything is validated before the output is opened. Then each key is
combined by a recipe (adapt.merging.recipes) from tensors read one at a time in fp32 and
written straight to the output, so memory does not grow with the number of ingredients.
BatchNorm running statistics, and tensors that the base lacks (a head for new classes),
are averaged whatever the recipe (`Recipe.average`), and a running variance below zero is
never written. BatchNorm's num_batches_tracked takes the largest count; other non-float
tensors are taken from the first ingredient. The output records every input's path and
sha256 (adapt.file_digests: hashed beside the merge, remembered for the next soup).

Greedy soups (Wortsman et al. 2022) rank the ingredients by held-out accuracy and add
each next one if the soup's held-out accuracy does not drop (`accept="ge"`, the paper's
rule) or rises (`"gt"`); they hold one running sum and one candidate soup. A `scale` of
"auto" picks the task-vector scale from a grid on held-out data, holding the base and
the merged task vector (two checkpoints), whatever the number of ingredients.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import resource
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from adapt.checkpoint import FORMAT_KEY, CheckpointMeta, all_finite
from adapt.errors import AdaptError, term
from adapt.file_digests import FileDigests, file_records
from adapt.merging.recipes import Dare, Greedy, Recipe, TaskArithmetic, Uniform
from adapt.merging.tensors import StreamingWriter, TensorFile, nbytes
from adapt.outputs import check_free_space, check_output_file, writing_file
from adapt.progress import Steps

ADAPTER_FIELDS = ("method", "method_options", "backbone", "backbone_sha256", "class_names")
FOLDED_FIELDS = ("method", "backbone", "backbone_sha256", "class_names")  # folded first: options may differ
STATISTICS = ("running_mean", "running_var")  # BatchNorm's: averaged, never task vectors
COUNTER = "num_batches_tracked"  # BatchNorm's: the largest count


@dataclass
class GreedyStep:
    ingredient: str
    own_accuracy: float
    soup_accuracy: float  # held-out accuracy of the soup with this ingredient added
    added: bool


@dataclass
class SoupSummary:
    ingredients: list[str]
    recipe: str
    tensors: int
    bytes_written: int
    seconds: float
    peak_anon_bytes: int  # the largest anonymous memory seen as each tensor was written (anonymous_bytes)
    outputs: list[str]
    greedy_steps: list[GreedyStep] = field(default_factory=list)
    scale_table: list[tuple[float, float]] = field(default_factory=list)  # (scale, held-out accuracy) with scale=auto
    drop_table: list[tuple[float, float]] = field(default_factory=list)  # (DARE drop rate, held-out accuracy), searched
    drop: float | None = None  # DARE's drop rate, when it was chosen on held-out data
    scale: float | None = None  # the scale used, when the recipe has one
    kind: str = "state dicts"  # what was souped: state dicts, adapters, side networks, folded adapters
    svd_errors: dict[str, float] = field(default_factory=dict)  # LoRA re-compression: relative error per layer
    averaged: list[str] = field(default_factory=list)  # float tensors averaged rather than merged as task vectors
    estimates: list[dict] = field(default_factory=list)  # fisher: what each ingredient's Fisher was estimated on


def open_ingredients(
    paths: Sequence[str | Path], base: str | Path | None = None, same_tensors: bool = True, base_label: str | None = None
) -> tuple[list[TensorFile], TensorFile | None]:
    """Open and cross-check every ingredient (and the base); raise naming the key and files.

    same_tensors=False: adapters that are folded before the soup (LoRA, SPT) need only one method,
    backbone and class list; their options (rank, allocation) and so their tensors may differ."""
    if not paths:
        raise AdaptError("a soup needs ingredients")
    files = [TensorFile(p) for p in paths]
    base_file = TensorFile(base, base_label) if base is not None else None
    first = files[0]
    for other in files[1:] + ([base_file] if base_file else []):
        _check_same_kind(first, other, ADAPTER_FIELDS if same_tensors else FOLDED_FIELDS)
        if same_tensors and other is not base_file:
            _check_same_tensors(first, other)
    if base_file is not None:
        _check_base(first, base_file)
    return files, base_file


def in_base(first: TensorFile, base: TensorFile, key: str) -> bool:
    """Whether the base holds `key` in the ingredients' shape (a head for other classes does not)."""
    return key in base.keys and base.shape(key) == first.shape(key)


def _check_base(first: TensorFile, base: TensorFile) -> None:
    """The base may lack a few tensors (they are averaged), not most: then it is not these ingredients' base."""
    floats = [k for k in first.keys if first.dtype(k).is_floating_point]
    lacking = [k for k in floats if not in_base(first, base, k)]
    if len(lacking) * 2 > len(floats):
        raise AdaptError(f"the base {base.label} lacks {len(lacking)} of the {len(floats)} tensors of {first.label} "
                         f"(e.g. '{lacking[0]}'): it is not the model these were fine-tuned from")  # fmt: skip


def _check_same_kind(first: TensorFile, other: TensorFile, adapter_fields: tuple[str, ...] = ADAPTER_FIELDS) -> None:
    adapters = (FORMAT_KEY in first.metadata, FORMAT_KEY in other.metadata)
    if adapters[0] != adapters[1]:
        kinds = ["an adapter checkpoint" if a else "a plain state dict" for a in adapters]
        raise AdaptError(f"{first.label} is {kinds[0]} but {other.label} is {kinds[1]}; soup one kind")
    fields = adapter_fields if adapters[0] else ("backbone", "class_names")
    for name in fields:
        a, b = first.metadata.get(name), other.metadata.get(name)
        if a is not None and b is not None and a != b:
            order = " (the same classes in another order: outputs would be averaged across classes)" if (
                name == "class_names" and _same_set(a, b)) else ""  # fmt: skip
            raise AdaptError(f"{name} differs{order}: {first.label} has {a[:80]}, {other.label} has {b[:80]}")


def _same_set(a: str, b: str) -> bool:
    """Whether two JSON lists hold the same items in some order."""
    try:
        return sorted(json.loads(a)) == sorted(json.loads(b))
    except (ValueError, TypeError):
        return False


def _check_same_tensors(first: TensorFile, other: TensorFile) -> None:
    missing = [k for k in first.keys if k not in set(other.keys)]
    extra = [k for k in other.keys if k not in set(first.keys)]
    if missing:
        raise AdaptError(f"key '{missing[0]}' of {first.label} is missing in {other.label} ({len(missing)} missing)")
    if extra:
        raise AdaptError(f"key '{extra[0]}' of {other.label} is not in {first.label} ({len(extra)} extra)")
    for key in first.keys:
        if first.shape(key) != other.shape(key):
            raise AdaptError(f"key '{key}' has shape {first.shape(key)} in {first.label} but {other.shape(key)} in {other.label}")
        if first.dtype(key) != other.dtype(key):
            raise AdaptError(f"key '{key}' has dtype {first.dtype(key)} in {first.label} but {other.dtype(key)} in {other.label}")


def _output_metadata(first: TensorFile, recipe: Recipe, records: Sequence[dict[str, str]], has_base: bool = False,
                     scale: object = None, scale_table: Sequence[tuple[float, float]] = (),
                     steps: Sequence[GreedyStep] = (), base_name: str | None = None,
                     drop_table: Sequence[tuple[float, float]] = ()) -> dict[str, str]:  # fmt: skip
    """What the soup says about itself: the recipe and its options, every ingredient and the base (`records`:
    path and sha256 of the user's files, the base last), the scale and the held-out scores that chose it
    (--scale auto, greedy)."""
    ingredients, base = (records[:-1], records[-1]) if has_base else (records, None)
    soup = {"recipe": recipe.name, "options": dataclasses.asdict(recipe), "ingredients": list(ingredients),
            **({"base": {**base, "path": base_name or base["path"]}} if base is not None else {}),
            **({"scale": scale} if scale is not None else {}),
            **({"held_out_accuracy_by_scale": [list(row) for row in scale_table]} if scale_table else {}),
            **({"held_out_accuracy_by_drop": [list(row) for row in drop_table]} if drop_table else {}),
            **({"greedy_steps": [asdict(step) for step in steps]} if steps else {}), **recipe.record()}  # fmt: skip
    if FORMAT_KEY in first.metadata:
        meta = CheckpointMeta.from_metadata(first.metadata, str(first.path))
        kept = {k: meta.training[k] for k in ("data", "seed") if k in meta.training}  # what eval/merge need
        meta.training = {**kept, "soup": soup}
        return meta.to_metadata()
    return {**first.metadata, "soup": json.dumps(soup)}


def finite_output(
    key: str, merged: torch.Tensor, dtype: torch.dtype, culprit: Callable[[str], None] | None = None
) -> torch.Tensor:
    """`merged` in the output dtype, refused (nothing is written) if it is or becomes NaN/Inf.

    Finiteness is checked once, on what is written; `culprit(key)` may then name the input. A BatchNorm
    running variance with a negative entry is refused too: it turns the model's outputs into NaN."""
    out = merged.to(dtype)
    if not all_finite(out):
        if culprit is not None:
            culprit(key)
        cause = f"overflows {dtype} (largest magnitude {merged.abs().max().item():.3g})" if all_finite(merged) else "is NaN/Inf"
        raise AdaptError(f"the merged tensor '{key}' {cause}; nothing was written")
    if key.endswith(".running_var") and out.numel() and float(out.min()) < 0:
        raise AdaptError(f"the merged BatchNorm variance '{key}' has negative entries (min {float(out.min()):.4g}); "
                         "nothing was written")  # fmt: skip
    return out


def key_roles(first: TensorFile, base_file: TensorFile | None) -> dict[str, str]:
    """How each key is combined: "merge" (by the recipe), "average" (BatchNorm statistics; with a base,
    tensors that it lacks), "count" (num_batches_tracked: the largest) or "first" (other non-float tensors)."""
    roles = {}
    for key in first.keys:
        if not first.dtype(key).is_floating_point:
            roles[key] = "count" if key.endswith(COUNTER) else "first"
        elif key.rsplit(".", 1)[-1] in STATISTICS or (base_file is not None and not in_base(first, base_file, key)):
            roles[key] = "average"
        else:
            roles[key] = "merge"
    return roles


def largest_count(key: str, files: Sequence[TensorFile]) -> torch.Tensor:
    """The largest of the ingredients' counts (BatchNorm's num_batches_tracked)."""
    counts = [file.get(key) for file in files]
    return torch.stack(counts).amax(0) if counts[0].numel() else counts[0]


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 1 << 20


@functools.cache
def return_large_blocks() -> bool:
    """Keep glibc's mmap threshold at 1 MiB. By default it rises after each large free, so that later tensors of
    that size come from the heap and stay in the process once freed: a soup's own memory then grows with the keys
    it merged (measured: Model Stock of 4 ViT-B-sized checkpoints 0.21 of one checkpoint, 0.09 with the fixed
    threshold). Every tensor-sized block then has its own mapping, returned when freed. Linux/glibc; elsewhere
    nothing changes. Returns whether it was set."""
    import ctypes

    try:
        return bool(ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (AttributeError, OSError):
        return False


def anonymous_bytes() -> int:
    """The process's own (anonymous) memory now: what a soup holds, without the inputs' mapped pages, which
    belong to the page cache (Linux; elsewhere the peak resident size)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            return int(next(line for line in status if line.startswith("RssAnon:")).split()[1]) * 1024
    except (OSError, StopIteration, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


Evaluator = Callable[[dict[str, torch.Tensor]], float]


def stream_soup(
    paths: Sequence[str | Path],
    out: str | Path,
    recipe: Recipe | None = None,
    base: str | Path | None = None,
    dtype: torch.dtype | None = None,
    max_shard_bytes: int | None = None,
    overwrite: bool = False,
    evaluate: Evaluator | None = None,
    sources: Sequence[str | Path] | None = None,
    base_name: str | None = None,
) -> SoupSummary:
    """Merge `paths` key by key with `recipe` (uniform by default) into `out`.

    evaluate: held-out accuracy of a state dict, needed when the recipe's scale is "auto".
    sources, base_name: what the user gave, recorded in the output, when `paths` and `base` were made from it
    (folded adapters, --base embedded)."""
    with guarded_output(out, overwrite, [*paths, base]):
        return _stream_soup(paths, out, recipe or Uniform(), base, dtype, max_shard_bytes, evaluate,
                            sources or paths, base_name)  # fmt: skip


@contextlib.contextmanager
def guarded_output(out: str | Path, overwrite: bool, inputs: Sequence[str | Path | None]) -> Iterator[None]:
    """One writer at a time; never over an input; an existing soup (or its shard index) only with overwrite."""
    with writing_file(out, overwrite, inputs):
        check_output_file(Path(f"{out}.index.json"), overwrite, inputs)
        yield


def _stream_soup(paths, out, recipe: Recipe, base, dtype, max_shard_bytes, evaluate, sources,
                 base_name) -> SoupSummary:  # fmt: skip
    if recipe.needs_base and base is None:
        raise AdaptError(f"recipe {recipe.name} needs {term('base')} (the model the ingredients were fine-tuned from)")
    recipe.check_count(len(paths), base is not None)
    if recipe.needs_data and evaluate is None:
        raise AdaptError(f"recipe {recipe.name} chooses its scale or drop rate on held-out data: pass {term('data')} "
                         f"(and {term('split')})")  # fmt: skip
    start = time.perf_counter()
    return_large_blocks()
    files, base_file = open_ingredients(paths, base if recipe.needs_base else None, base_label=base_name)
    with FileDigests([*sources, *([base] if recipe.needs_base else [])]) as digests:  # hashed while we merge
        first = files[0]
        roles = key_roles(first, base_file)
        floats = [k for k in first.keys if first.dtype(k).is_floating_point]
        order = [(k, first.shape(k), dtype if dtype and k in floats else first.dtype(k)) for k in first.keys]
        check_free_space(out, sum(nbytes(shape, kind) for _, shape, kind in order))

        def merged(key: str, by: Recipe = recipe) -> torch.Tensor:
            """One key of the soup, by the recipe (or by a candidate of a search)."""
            load = lambda i: files[i].get(key).float()  # noqa: E731
            if roles[key] == "merge":
                base_tensor = base_file.get(key).float() if base_file is not None else None
                return by.merge(key, load, len(files), base_tensor)
            if roles[key] == "average":
                return by.average(key, load, len(files))
            return largest_count(key, files) if roles[key] == "count" else first.get(key)

        def culprit(key: str) -> None:
            """After a non-finite result: name the input that holds NaN/Inf, if one does."""
            for file in [*files, *([base_file] if base_file is not None else [])]:
                if key in floats and key in file.keys and not all_finite(file.get(key).float()):
                    raise AdaptError(f"tensor '{key}' of {file.label} has NaN or Inf values; nothing was written")

        task_keys = [k for k in first.keys if roles[k] == "merge"]
        table, drops, scale, produce = [], [], getattr(recipe, "scale", None), merged
        if isinstance(recipe, Dare) and recipe.drop_grid is not None:  # MergeLM: lambda by task arithmetic, then p
            if recipe.auto_scale:
                arithmetic = TaskArithmetic(scale="auto", scale_grid=list(recipe.grid()))
                scale, table, _ = _auto_scale(arithmetic, files, base_file, task_keys, merged, evaluate)
            candidates = [(rate, dataclasses.replace(recipe, drop=rate, scale=float(scale))) for rate in recipe.drop_grid]
            recipe, drops, produce = _search(candidates, "drop rate", files, base_file, task_keys, merged, evaluate)
        elif recipe.auto_scale and not recipe.linear_in_scale:  # SLERP: every candidate merged and scored
            candidates = [(t, dataclasses.replace(recipe, scale=t)) for t in recipe.grid()]
            recipe, table, produce = _search(candidates, "scale", files, base_file, task_keys, merged, evaluate)
            scale = recipe.scale
        elif recipe.auto_scale:  # prepares its own copy of the recipe, at scale 1
            scale, table, produce = _auto_scale(recipe, files, base_file, task_keys, merged, evaluate)
        else:
            recipe.prepare(len(files), _task_vectors(files, base_file, task_keys))
        metadata = functools.partial(_output_metadata, first, recipe, has_base=recipe.needs_base, scale=scale,
                                     scale_table=table, base_name=base_name, drop_table=drops)  # fmt: skip
        written, peak = 0, anonymous_bytes()
        with (StreamingWriter(out, order, metadata(digests.placeholders()), max_shard_bytes) as writer,
              Steps("merging tensors", len(order)) as progress, _cores_shared_with(digests)):  # fmt: skip
            for key, _, out_dtype in order:
                tensor = finite_output(key, produce(key), out_dtype, culprit)
                peak = max(peak, anonymous_bytes())  # with the key's merge alive
                writer.write(key, tensor)
                written += tensor.numel() * tensor.element_size()
                progress.advance()
            writer.restate(metadata(digests.records()))
        return SoupSummary([str(p) for p in paths], recipe.name, len(order), written, time.perf_counter() - start,
                           peak, [str(p) for p in writer.shard_paths()], scale_table=table,
                           scale=scale if isinstance(scale, float) else None, drop_table=drops,
                           drop=recipe.drop if drops else None,
                           averaged=[k for k in first.keys if roles[k] == "average"],
                           estimates=recipe.record().get("fisher_estimates", []))  # fmt: skip


@contextlib.contextmanager
def _cores_shared_with(digests: FileDigests) -> Iterator[None]:
    """One torch thread while the inputs are being hashed: the merge is memory-bound (measured: as fast on
    one thread as on two), and a second torch thread would only contend with the hashing threads."""
    threads = torch.get_num_threads()
    if digests.pending and threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _task_vectors(files: list[TensorFile], base_file: TensorFile | None, keys: list[str]):
    """For recipes' `prepare`: each task-vector key with its loader of tau_i (theta_i - base, or theta_i)."""

    def vectors():
        for key in keys:
            base = base_file.get(key).float() if base_file is not None else None
            yield key, (lambda i, key=key, base=base: files[i].get(key).float() - base if base is not None
                        else files[i].get(key).float())  # fmt: skip

    return vectors


def _auto_scale(recipe: Recipe, files, base_file, task_keys: list[str], merged: Callable[[str], torch.Tensor],
                evaluate: Evaluator):  # fmt: skip
    """Merge once at scale 1, then score base + s * (merged - base) for each s of the recipe's grid on held-out
    data; the tensors that are not task vectors (`merged` averages them) do not scale.

    Holds the base and the merged task vector (two checkpoints), whatever the number of ingredients."""
    unit = dataclasses.replace(recipe, scale=1.0)
    unit.prepare(len(files), _task_vectors(files, base_file, task_keys))
    first = files[0]
    base = {k: base_file.get(k).float() for k in task_keys}
    delta = {k: unit.merge(k, lambda i, k=k: files[i].get(k).float(), len(files), base[k]) - base[k] for k in task_keys}
    fixed = {k: merged(k) for k in first.keys if k not in delta}
    table = []
    with Steps("--scale auto: held-out accuracy by scale", len(recipe.grid())) as progress:
        for scale in recipe.grid():
            state = {k: base[k] + scale * delta[k] if k in delta else fixed[k] for k in first.keys}
            table.append((scale, evaluate(state)))
            progress.advance(status=f"scale {scale:g}: {table[-1][1]:.2%}")
    best = max(table, key=lambda row: (row[1], -row[0]))[0]  # the smallest scale among the most accurate
    return best, table, lambda key: base[key] + best * delta[key] if key in delta else fixed[key]


def _search(candidates: list[tuple[float, Recipe]], what: str, files, base_file, task_keys: list[str],
            merged: Callable[[str, Recipe], torch.Tensor], evaluate: Evaluator):  # fmt: skip
    """Each candidate recipe (a value of `what`, and the recipe at that value) merged and scored on held-out
    data; the first best wins (MergeLM keeps a value only when it beats the best so far). Returns (the chosen
    recipe, the (value, accuracy) table, its tensors' producer). Holds one merged state at a time; each candidate
    keeps what its `prepare` found, so the chosen one merges again without a second pass."""
    table = []
    with Steps(f"held-out accuracy by {what}", len(candidates)) as progress:
        for value, candidate in candidates:
            candidate.prepare(len(files), _task_vectors(files, base_file, task_keys))
            table.append((value, evaluate({k: merged(k, candidate) for k in files[0].keys})))
            progress.advance(status=f"{what} {value:g}: {table[-1][1]:.2%}")
    chosen = candidates[max(range(len(table)), key=lambda i: table[i][1])][1]  # max keeps the first of equals
    return chosen, table, lambda key: merged(key, chosen)


def greedy_soup(
    paths: Sequence[str | Path],
    out: str | Path,
    accuracy: Evaluator,
    dtype: torch.dtype | None = None,
    on_step: Callable[[GreedyStep], None] | None = None,
    overwrite: bool = False,
    recipe: Greedy | None = None,
    max_shard_bytes: int | None = None,
    sources: Sequence[str | Path] | None = None,
) -> SoupSummary:
    """Rank by held-out accuracy; add each next ingredient if the soup's accuracy does not drop
    (recipe.accept "ge", the paper's rule) or rises ("gt"). The steps go into the output's metadata.

    sources: the files the user gave, recorded in the output, when `paths` were made from them."""
    with guarded_output(out, overwrite, paths):
        return _greedy_soup(paths, out, accuracy, dtype, on_step, recipe or Greedy(), max_shard_bytes, sources or paths)


def _greedy_soup(paths, out, accuracy, dtype, on_step, recipe: Greedy, max_shard_bytes, sources) -> SoupSummary:
    recipe.check_count(len(paths), False)
    start = time.perf_counter()
    files, _ = open_ingredients(paths)
    first = files[0]
    floats = [k for k in first.keys if first.dtype(k).is_floating_point]

    counters = [k for k, role in key_roles(first, None).items() if role == "count"]

    def load(file: TensorFile) -> dict[str, torch.Tensor]:
        return {k: file.get(k).float() if k in floats else file.get(k) for k in file.keys}

    own = []
    with Steps("greedy soup: each ingredient's held-out accuracy", len(files)) as progress:
        for file in files:  # one ingredient in memory at a time
            own.append(accuracy(load(file)))
            progress.advance(status=f"{Path(file.path).name} {own[-1]:.2%}")
    ranked = sorted(range(len(files)), key=lambda i: -own[i])
    total = {k: v.clone() for k, v in load(files[ranked[0]]).items()}  # the running sum (not a view of the file)
    count, best = 1, own[ranked[0]]
    steps = [GreedyStep(str(sources[ranked[0]]), own[ranked[0]], best, True)]
    if on_step is not None:
        on_step(steps[0])
    candidate: dict[str, torch.Tensor] = {}  # the candidate soup, rebuilt in place for each ingredient
    progress = Steps("greedy soup: trying each next ingredient", len(ranked) - 1)
    for i in progress.over(ranked[1:]):
        for k in first.keys:
            if k in floats:
                candidate[k] = torch.add(total[k], files[i].get(k).float(), out=candidate.get(k)).div_(count + 1)
            else:
                candidate[k] = total[k]
        soup_accuracy = accuracy(candidate)
        added = recipe.improves(soup_accuracy, best)
        if added:
            for k in floats:
                total[k] += files[i].get(k).float()
            for k in counters:
                total[k] = torch.maximum(total[k], files[i].get(k))
            count, best = count + 1, soup_accuracy
        steps.append(GreedyStep(str(sources[i]), own[i], soup_accuracy, added))
        if on_step is not None:
            on_step(steps[-1])
    order = [(k, first.shape(k), dtype if dtype and k in floats else first.dtype(k)) for k in first.keys]
    chosen = [s.ingredient for s in steps if s.added]
    check_free_space(out, sum(nbytes(s, d) for _, s, d in order))
    metadata = _output_metadata(first, recipe, file_records(chosen), steps=steps)
    with StreamingWriter(out, order, metadata, max_shard_bytes) as writer:
        for key, _, out_dtype in order:
            writer.write(key, finite_output(key, total[key] / count if key in floats else total[key], out_dtype))
    return SoupSummary([str(p) for p in sources], "greedy", len(order), sum(nbytes(s, d) for _, s, d in order),
                       time.perf_counter() - start, anonymous_bytes(), [str(p) for p in writer.shard_paths()], steps)  # fmt: skip
