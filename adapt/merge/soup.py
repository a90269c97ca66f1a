"""Model soups and merges over checkpoints, streamed tensor by tensor.

Ingredients are full state dicts (merged models, fine-tuned timm models) or adapter
checkpoints of one method on one backbone; a soup of adapters stays an adapter
checkpoint that `adapt merge` can fold. Everything is validated before the output is
opened. Then each key is combined by a `MergeMethod` (adapt.merge.arithmetic) from
tensors read one at a time in fp32 and written straight to the output, so memory does
not grow with the number of ingredients. Non-float tensors (e.g. BatchNorm's
num_batches_tracked) are taken from the first ingredient.

Greedy soups (Wortsman et al. 2022) rank the ingredients by held-out accuracy and add
each next one only if the soup's held-out accuracy improves; they hold one running sum.
"""

from __future__ import annotations

import contextlib
import json
import resource
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from adapt.checkpoint import FORMAT_KEY, CheckpointMeta, write_json_atomic
from adapt.errors import AdaptError
from adapt.merge.arithmetic import MergeMethod, Uniform
from adapt.merge.tensors import StreamingWriter, TensorFile, nbytes
from adapt.outputs import check_free_space, check_output_file, writing_file

ADAPTER_FIELDS = ("method", "method_options", "backbone", "backbone_sha256", "class_names")


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
    peak_rss_bytes: int
    outputs: list[str]
    greedy_steps: list[GreedyStep] = field(default_factory=list)


def open_ingredients(paths: Sequence[str | Path], base: str | Path | None = None) -> tuple[list[TensorFile], TensorFile | None]:
    """Open and cross-check every ingredient (and the base); raise naming the key and files."""
    if len(paths) < 2 and base is None:
        raise AdaptError("a soup needs at least two ingredients")
    files = [TensorFile(p) for p in paths]
    base_file = TensorFile(base) if base is not None else None
    first = files[0]
    for other in files[1:] + ([base_file] if base_file else []):
        _check_same_kind(first, other)
        _check_same_tensors(first, other)
    return files, base_file


def _check_same_kind(first: TensorFile, other: TensorFile) -> None:
    adapters = (FORMAT_KEY in first.metadata, FORMAT_KEY in other.metadata)
    if adapters[0] != adapters[1]:
        kinds = ["an adapter checkpoint" if a else "a plain state dict" for a in adapters]
        raise AdaptError(f"{first.path} is {kinds[0]} but {other.path} is {kinds[1]}; soup one kind")
    fields = ADAPTER_FIELDS if adapters[0] else ("backbone",)
    for name in fields:
        a, b = first.metadata.get(name), other.metadata.get(name)
        if a is not None and b is not None and a != b:
            raise AdaptError(f"{name} differs: {first.path} has {a[:80]}, {other.path} has {b[:80]}")


def _check_same_tensors(first: TensorFile, other: TensorFile) -> None:
    missing = [k for k in first.keys if k not in set(other.keys)]
    extra = [k for k in other.keys if k not in set(first.keys)]
    if missing:
        raise AdaptError(f"key '{missing[0]}' of {first.path} is missing in {other.path} ({len(missing)} missing)")
    if extra:
        raise AdaptError(f"key '{extra[0]}' of {other.path} is not in {first.path} ({len(extra)} extra)")
    for key in first.keys:
        if first.shape(key) != other.shape(key):
            raise AdaptError(f"key '{key}' has shape {first.shape(key)} in {first.path} but {other.shape(key)} in {other.path}")
        if first.dtype(key) != other.dtype(key):
            raise AdaptError(f"key '{key}' has dtype {first.dtype(key)} in {first.path} but {other.dtype(key)} in {other.path}")


def _output_metadata(first: TensorFile, recipe: str, paths: Sequence[str | Path]) -> dict[str, str]:
    soup = {"recipe": recipe, "ingredients": [str(p) for p in paths]}
    if FORMAT_KEY in first.metadata:
        meta = CheckpointMeta.from_metadata(first.metadata, str(first.path))
        kept = {k: meta.training[k] for k in ("data", "seed") if k in meta.training}  # what eval/merge need
        meta.training = {**kept, "soup": soup}
        return meta.to_metadata()
    return {**first.metadata, "soup": json.dumps(soup)}


def finite_output(key: str, merged: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`merged` in the output dtype, refused (nothing is written) if it is or becomes NaN/Inf."""
    out = merged.to(dtype)
    if out.is_floating_point() and not torch.isfinite(out).all():
        cause = f"overflows {dtype} (largest magnitude {merged.abs().max().item():.3g})" if torch.isfinite(merged).all() else "is NaN/Inf"
        raise AdaptError(f"the merged tensor '{key}' {cause}; nothing was written")
    return out


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def stream_soup(
    paths: Sequence[str | Path],
    out: str | Path,
    method: MergeMethod | None = None,
    base: str | Path | None = None,
    dtype: torch.dtype | None = None,
    max_shard_bytes: int | None = None,
    on_tensor: Callable[[str], None] | None = None,
    overwrite: bool = False,
) -> SoupSummary:
    """Merge `paths` key by key with `method` (uniform by default) into `out`."""
    with guarded_output(out, overwrite, [*paths, base]):
        return _stream_soup(paths, out, method, base, dtype, max_shard_bytes, on_tensor)


@contextlib.contextmanager
def guarded_output(out: str | Path, overwrite: bool, inputs: Sequence[str | Path | None]) -> Iterator[None]:
    """One writer at a time; never over an input; an existing soup (or its shard index) only with overwrite."""
    with writing_file(out, overwrite, inputs):
        check_output_file(Path(f"{out}.index.json"), overwrite, inputs)
        yield


def _stream_soup(paths, out, method, base, dtype, max_shard_bytes, on_tensor) -> SoupSummary:
    method = method or Uniform()
    if method.needs_base and base is None:
        raise AdaptError(f"recipe {method.name} needs --base (the model the ingredients were fine-tuned from)")
    if len(getattr(method, "weights", ())) not in (0, len(paths)):
        raise AdaptError(f"{len(method.weights)} weights for {len(paths)} ingredients")
    start = time.perf_counter()
    files, base_file = open_ingredients(paths, base if method.needs_base else None)
    first = files[0]
    order = [(k, first.shape(k), dtype if dtype and first.dtype(k).is_floating_point else first.dtype(k)) for k in first.keys]
    written = 0
    check_free_space(out, sum(nbytes(shape, dtype) for _, shape, dtype in order))
    with StreamingWriter(out, order, _output_metadata(first, method.name, paths), max_shard_bytes) as writer:
        for key, _, out_dtype in order:
            if first.dtype(key).is_floating_point:
                base_tensor = base_file.get(key).float() if base_file is not None else None
                merged = method.merge(key, lambda i, key=key: files[i].get(key).float(), len(files), base_tensor)
            else:
                merged = first.get(key)
            writer.write(key, finite_output(key, merged, out_dtype))
            written += nbytes(tuple(merged.shape), out_dtype)
            if on_tensor is not None:
                on_tensor(key)
    return SoupSummary([str(p) for p in paths], method.name, len(order), written, time.perf_counter() - start,
                       _peak_rss(), [str(p) for p in writer.shard_paths()])  # fmt: skip


def greedy_soup(
    paths: Sequence[str | Path],
    out: str | Path,
    accuracy: Callable[[dict[str, torch.Tensor]], float],
    dtype: torch.dtype | None = None,
    on_step: Callable[[GreedyStep], None] | None = None,
    overwrite: bool = False,
) -> SoupSummary:
    """Rank by held-out accuracy; add each next ingredient only if the soup's accuracy improves."""
    with guarded_output(out, overwrite, paths):
        return _greedy_soup(paths, out, accuracy, dtype, on_step)


def _greedy_soup(paths, out, accuracy, dtype, on_step) -> SoupSummary:
    start = time.perf_counter()
    files, _ = open_ingredients(paths)
    first = files[0]
    floats = [k for k in first.keys if first.dtype(k).is_floating_point]

    def load(file: TensorFile) -> dict[str, torch.Tensor]:
        return {k: file.get(k).float() if k in floats else file.get(k) for k in file.keys}

    own = [accuracy(load(f)) for f in files]
    ranked = sorted(range(len(files)), key=lambda i: -own[i])
    total = load(files[ranked[0]])
    count, best = 1, own[ranked[0]]
    steps = [GreedyStep(str(paths[ranked[0]]), own[ranked[0]], best, True)]
    if on_step is not None:
        on_step(steps[0])
    for i in ranked[1:]:
        candidate = load(files[i])
        for k in floats:
            candidate[k] = (total[k] + candidate[k]) / (count + 1)
        for k in first.keys:
            if k not in floats:
                candidate[k] = total[k]
        soup_accuracy = accuracy(candidate)
        added = soup_accuracy > best
        if added:
            for k in floats:
                total[k] += files[i].get(k).float()
            count, best = count + 1, soup_accuracy
        steps.append(GreedyStep(str(paths[i]), own[i], soup_accuracy, added))
        if on_step is not None:
            on_step(steps[-1])
    order = [(k, first.shape(k), dtype if dtype and k in floats else first.dtype(k)) for k in first.keys]
    chosen = [s.ingredient for s in steps if s.added]
    with StreamingWriter(out, order, _output_metadata(first, "greedy", chosen)) as writer:
        for key, _, out_dtype in order:
            writer.write(key, finite_output(key, total[key] / count if key in floats else total[key], out_dtype))
    summary = SoupSummary([str(p) for p in paths], "greedy", len(order), sum(nbytes(s, d) for _, s, d in order),
                          time.perf_counter() - start, _peak_rss(), [str(out)], steps)  # fmt: skip
    write_json_atomic(Path(out).with_suffix(".greedy.json"), asdict(summary))
    return summary


def held_out_accuracy(first: str | Path, data: str, split: str = "val", backbone: str | None = None) -> Callable[[dict[str, torch.Tensor]], float]:
    """accuracy(state) on a split, for state dicts shaped like the ingredient `first`."""
    from adapt.adapted import AdaptedModel
    from adapt.backbones import RANDOM_WEIGHTS, classifier_prefixes, create_backbone, preprocessing
    from adapt.data import load_data
    from adapt.evaluate import accuracy
    from adapt.train import make_accelerator

    file = TensorFile(first)
    if FORMAT_KEY in file.metadata:
        adapted, meta = AdaptedModel.from_checkpoint(first)
        model, size, mean, std = adapted.model, meta.image_size, adapted.mean, adapted.std

        def load(state: dict[str, torch.Tensor]) -> None:
            adapted.method.load_trainable_state(model, state, source="soup")
    else:
        name = backbone or file.metadata.get("backbone")
        if name is None:
            raise AdaptError(f"{first} does not record its backbone; pass --backbone")
        defaults = preprocessing(name)
        size = int(file.metadata.get("image_size", defaults.image_size))
        mean = tuple(json.loads(file.metadata["mean"])) if "mean" in file.metadata else defaults.mean
        std = tuple(json.loads(file.metadata["std"])) if "std" in file.metadata else defaults.std
        probe, _ = create_backbone(name, RANDOM_WEIGHTS, 1, size)
        head = f"{classifier_prefixes(probe)[0]}.weight"
        if head not in file.keys:
            raise AdaptError(f"{first} has no classifier '{head}' for {name}")
        model, _ = create_backbone(name, RANDOM_WEIGHTS, file.shape(head)[0], size)

        def load(state: dict[str, torch.Tensor]) -> None:
            model.load_state_dict(state)

    splits = load_data(data, size, mean, std)
    dataset = getattr(splits, split)
    if dataset is None:
        raise AdaptError(f"{data} has no {split} split for the greedy soup")
    accelerator = make_accelerator()

    def evaluate(state: dict[str, torch.Tensor]) -> float:
        load(state)
        return accuracy(model, dataset, accelerator)

    return evaluate
