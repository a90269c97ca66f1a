"""Soups of adapter checkpoints that are right for every method.

- Methods whose tensors average exactly (SSF, BitFit, linear, full) and those that no weight
  can hold (HST's side networks, VPT's prompts, AdaptFormer's adapters: their tensors are the
  weights a soup averages) are souped as they are, and the soup is an adapter checkpoint again.
- LoRA, SPT, RepAdapter and peft's tuners are not: mean(B)·mean(A) is not mean(B·A), and two SPT runs may train
  other entries. Each ingredient is folded into the backbone first (adapt merge, one at a
  time, to a temporary file beside the output), and the recipe runs over the folded
  weights with the pretrained backbone as the base (its head zero: the heads were trained
  from nothing). The soup is a merged model, exactly the mean of the merged models for a
  uniform soup. The same holds for task arithmetic, TIES and DARE over any adapter.
- LoRA with `rank`: the soup stays a LoRA adapter. Each target layer's delta
  dW_i = (alpha/r) B_i A_i goes through the recipe (base: the zero delta), then a truncated
  SVD keeps `rank` singular directions (B' = U_r S_r, A' = V_r^T, alpha = rank), as peft's
  add_weighted_adapter(combination_type="svd") does; the relative Frobenius error of each
  layer and overall is reported and stored in the metadata.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from adapt.backbones import EMBEDDED_BACKBONE, EMBEDDED_WEIGHTS, create_backbone, is_head_key
from adapt.checkpoint import FORMAT_KEY, CheckpointMeta, checkpoint_file, save_checkpoint, save_tensors_atomic
from adapt.errors import AdaptError, term
from adapt.file_digests import file_records
from adapt.merging.options import SoupOptions
from adapt.merging.recipes import Greedy, Recipe
from adapt.merging.soup import (GreedyStep, SoupSummary, anonymous_bytes, greedy_soup, guarded_output,
                              open_ingredients, stream_soup)  # fmt: skip
from adapt.merging.state_model import held_out_accuracy
from adapt.outputs import check_output_file, scratch_folder
from adapt.merging.tensors import TensorFile
from adapt.methods import METHODS

LORA_A, LORA_B = ".lora_A.default.weight", ".lora_B.default.weight"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".npz", ".ckpt")  # a --base naming one is a file


def soup_kind(paths: Sequence[str | Path]) -> tuple[str, CheckpointMeta | None]:
    """("state dicts" | "adapters" | "side networks" | "folded adapters", the first adapter's metadata)."""
    first = TensorFile(paths[0])
    if FORMAT_KEY not in first.metadata:
        return "state dicts", None
    meta = CheckpointMeta.from_metadata(first.metadata, str(first.path))
    method = METHODS.get(meta.method)
    if method is None:
        raise AdaptError(f"{first.path} holds an adapter of unknown method {meta.method!r}")
    if not method.averages_exactly:
        return "folded adapters", meta
    return ("adapters" if method.mergeable else "side networks"), meta


def make_soup(
    paths: Sequence[str | Path],
    out: str | Path,
    recipe: Recipe,
    base: str | Path | None = None,
    dtype: torch.dtype | None = None,
    max_shard_bytes: int | None = None,
    overwrite: bool = False,
    data: str | Sequence[str] | None = None,
    split: str | None = None,
    backbone: str | None = None,
    rank: int | None = None,
    on_step: Callable[[GreedyStep], None] | None = None,
) -> SoupSummary:
    """`adapt soup`: route the ingredients to the soup that is right for them, then run the recipe.

    data: held-out data for the choices a recipe makes (one spec), or the data of each ingredient's Fisher
    (recipe fisher: one spec for all, or one per ingredient)."""
    if not paths:
        raise AdaptError("a soup needs ingredients")
    data = [data] if isinstance(data, str) else list(data or [])
    split = split or ("train" if recipe.estimates_on_data else "val")
    if len(data) > 1 and not recipe.estimates_on_data:
        raise AdaptError(f"several {term('data')} are for recipe fisher (each ingredient's own data); "
                         f"recipe {recipe.name} chooses on one held-out set")  # fmt: skip
    paths = [checkpoint_file(p) if Path(p).expanduser().is_dir() else p for p in paths]  # hub or run folders
    kind, meta = soup_kind(paths)
    recipe.check_count(len(paths), base is not None or meta is not None)  # adapters: their pretrained backbone
    if meta is not None and base is not None:
        raise AdaptError(f"adapter ingredients take the pretrained backbone as the base; {term('base')} is for state dicts")
    if rank is not None:
        if meta is None or meta.method != "lora":
            raise AdaptError(f"{term('rank')} re-compresses a soup of LoRA adapters; these ingredients are not lora")
        if recipe.needs_data:
            raise AdaptError(f"{term('rank')} works with uniform, weighted, task-arithmetic, ties and dare at a given "
                             f"{term('scale')} (and drop rate)")  # fmt: skip
        with guarded_output(out, overwrite, paths):
            return lora_rank_soup(paths, out, recipe, rank)
    if kind == "side networks" and recipe.needs_base:
        raise AdaptError(f"recipe {recipe.name} needs task vectors in weight space; {meta.method} cannot give them: "
                         f"{METHODS[meta.method].merge_refusal} (uniform, weighted and greedy soups of it work)")  # fmt: skip
    folded = kind == "folded adapters" or (meta is not None and recipe.needs_base)
    embedded = base is not None and str(base) == EMBEDDED_WEIGHTS  # always the embedded weights (a file: ./embedded)
    if base is not None and not embedded and Path(base).expanduser().is_dir():
        base = checkpoint_file(base)  # a hub folder's weights
    built_base = base is not None and (embedded or not Path(base).expanduser().exists())  # or a timm name[:weights]
    if not (folded or built_base):
        summary = _run(paths, out, recipe, base, dtype, max_shard_bytes, overwrite, data, split, backbone, on_step)
        summary.kind = kind
        return summary
    check_output_file(out, overwrite, paths)  # before the folding; the soup itself locks and checks again
    with scratch_folder(out, ".soup.") as scratch:
        if folded:
            inputs, base = fold_ingredients(paths, scratch)
            base_name = f"the pretrained {meta.backbone} ({meta.backbone_weights}) without its head"
        else:
            base_name = f"{EMBEDDED_WEIGHTS} ({EMBEDDED_BACKBONE})" if embedded else str(base)
            inputs, base = paths, pretrained_base(str(base), scratch)
        summary = _run(inputs, out, recipe, base, dtype, max_shard_bytes, overwrite, data, split, backbone,
                       on_step, sources=paths, base_name=base_name)  # fmt: skip
    summary.ingredients, summary.kind = [str(p) for p in paths], "folded adapters" if folded else kind
    return summary


def run_soup(options: SoupOptions, recipe: Recipe, on_step: Callable[[GreedyStep], None] | None = None) -> SoupSummary:
    """`adapt soup` from its checked options (adapt.merging.options.soup_options): make_soup with them."""
    if not options.ingredients:
        raise AdaptError(f"name the ingredients: adapt soup A B [C ...] (or ingredients: in {term('config')})")
    if options.out is None:
        raise AdaptError(f"say where to write the soup: {term('out')} PATH (or out: in {term('config')})")
    dtype = getattr(torch, options.dtype) if options.dtype else None
    return make_soup([Path(p) for p in options.ingredients], Path(options.out), recipe, options.base, dtype,
                     options.shard_bytes(), options.overwrite, options.data, options.split, options.backbone,
                     options.rank, on_step)  # fmt: skip


def pretrained_base(spec: str, scratch: Path) -> Path:
    """`--base embedded` or `--base TIMM_NAME[:WEIGHTS]`: the pretrained backbone without a head, written
    to `scratch` (the state-dict recipes read their base from a file)."""
    name, _, weights = (EMBEDDED_BACKBONE, "", EMBEDDED_WEIGHTS) if spec == EMBEDDED_WEIGHTS else spec.partition(":")
    if not weights and ("/" in name or Path(name).suffix.lower() in WEIGHT_SUFFIXES):
        raise AdaptError(f"{term('base')} {spec}: no such file (or: embedded, or a timm name[:weights])")
    model, info = create_backbone(name, weights or None, 0)
    path = scratch / "pretrained-base.safetensors"
    save_tensors_atomic(path, model.state_dict(), {"backbone": info.name, "backbone_weights": info.weights})
    return path


def _run(paths, out, recipe, base, dtype, max_shard_bytes, overwrite, data, split, backbone, on_step,
         sources=None, base_name=None) -> SoupSummary:  # fmt: skip
    evaluate = None
    if recipe.needs_data:
        if not data:
            chooser = (term("recipe") + " greedy" if isinstance(recipe, Greedy) else term("scale") + " auto"
                       if recipe.auto_scale else f"{term('drop')} with several rates")  # fmt: skip
            raise AdaptError(f"{chooser} chooses on held-out data: pass {term('data')} SPEC (e.g. digits) and "
                             f"{term('split')}")  # fmt: skip
        evaluate = held_out_accuracy(paths[0], data[0], split, backbone)
    if isinstance(recipe, Greedy):
        return greedy_soup(paths, out, evaluate, dtype, on_step, overwrite, recipe, max_shard_bytes, sources)
    if not recipe.estimates_on_data:
        return stream_soup(paths, out, recipe, base, dtype, max_shard_bytes, overwrite, evaluate, sources, base_name)
    from adapt.merging.fisher import estimate_fishers

    check_output_file(out, overwrite, [*paths, base])  # before the estimates; the soup itself locks and checks again
    start = time.perf_counter()
    with scratch_folder(out, ".fisher.") as scratch:
        estimate_fishers(recipe, paths, data, split, scratch, backbone, sources)
        summary = stream_soup(paths, out, recipe, base, dtype, max_shard_bytes, overwrite, evaluate, sources, base_name)
    summary.seconds = time.perf_counter() - start  # the estimates included
    return summary


def fold_ingredients(paths: Sequence[str | Path], scratch: Path) -> tuple[list[Path], Path]:
    """Each adapter folded into its backbone (a merged model file), and the base: the backbone without a head."""
    from adapt.adapted import AdaptedModel
    from adapt.merging.reparam import merge_adapted, merged_metadata, save_merged

    open_ingredients(paths, same_tensors=False)  # one method, backbone and class list; ranks, allocations may differ
    folded = []
    for number, path in enumerate(paths):
        adapted, meta = AdaptedModel.from_checkpoint(path)
        model, _ = merge_adapted(adapted)
        folded.append(scratch / f"folded-{number}.safetensors")
        save_merged(folded[-1], model, adapted, {"data": meta.training.get("data", ""), "merged_from": str(path)})
    base_model, _ = create_backbone(meta.backbone, meta.backbone_weights, len(meta.class_names), meta.image_size,
                                    int(meta.training.get("seed", 0)))  # fmt: skip
    trunk = {k: v for k, v in base_model.state_dict().items() if not is_head_key(base_model, k)}
    save_tensors_atomic(scratch / "base.safetensors", trunk, merged_metadata(adapted, {"data": meta.training.get("data", "")}))
    return folded, scratch / "base.safetensors"


def lora_rank_soup(paths: Sequence[str | Path], out: str | Path, recipe: Recipe, rank: int) -> SoupSummary:
    """A LoRA soup that is a LoRA adapter of `rank`: the recipe over each layer's dW_i, then a truncated SVD."""
    start = time.perf_counter()
    files, _ = open_ingredients(paths, same_tensors=False)  # ranks and alphas may differ: each delta is its own
    first = files[0]
    meta = CheckpointMeta.from_metadata(first.metadata, str(first.path))
    metas = [CheckpointMeta.from_metadata(f.metadata, str(f.path)) for f in files]
    scalings = {f.path: float(m.method_options["alpha"]) / int(m.method_options["rank"]) for f, m in zip(files, metas)}
    layers = sorted(k[: -len(LORA_A)] for k in first.keys if k.endswith(LORA_A))
    others = [k for k in first.keys if not k.endswith((LORA_A, LORA_B))]
    _check_same_layers(files, layers, others)

    def delta(file: TensorFile, layer: str) -> torch.Tensor:
        b, a = file.get(layer + LORA_B).float(), file.get(layer + LORA_A).float()
        return scalings[file.path] * (b.reshape(b.shape[0], -1) @ a.reshape(a.shape[0], -1))

    def loader(key: str) -> Callable[[int], torch.Tensor]:
        if key in others:
            return lambda i: files[i].get(key).float()
        return lambda i: delta(files[i], key)

    def vectors():  # the task vectors: the heads (others) are averaged
        for key in layers:
            yield key, loader(key)

    recipe.prepare(len(files), vectors)
    tensors, errors, residual, energy = {}, {}, 0.0, 0.0
    for layer in layers:
        merged = recipe.merge(layer, loader(layer), len(files), torch.zeros_like(delta(first, layer)))
        u, s, vh = torch.linalg.svd(merged, full_matrices=False)
        b_new, a_new = u[:, :rank] * s[:rank], vh[:rank]
        lost, total = float((merged - b_new @ a_new).square().sum()), float(merged.square().sum())
        errors[layer] = math.sqrt(lost / total) if total > 0 else 0.0
        residual, energy = residual + lost, energy + total
        if b_new.shape[1] < rank:  # a layer with fewer singular directions than the rank: zero padding
            b_new = torch.cat([b_new, torch.zeros(b_new.shape[0], rank - b_new.shape[1])], dim=1)
            a_new = torch.cat([a_new, torch.zeros(rank - a_new.shape[0], a_new.shape[1])])
        a_shape, b_shape = first.shape(layer + LORA_A), first.shape(layer + LORA_B)  # rank is dim 0 of A, dim 1 of B
        tensors[layer + LORA_A] = a_new.reshape(rank, *a_shape[1:]).contiguous()
        tensors[layer + LORA_B] = b_new.reshape(b_shape[0], rank, *b_shape[2:]).contiguous()
    for key in others:
        tensors[key] = recipe.average(key, loader(key), len(files)) if first.dtype(key).is_floating_point else first.get(key)
    overall = math.sqrt(residual / energy) if energy > 0 else 0.0
    meta.method_options = {**meta.method_options, "rank": rank, "alpha": float(rank)}
    meta.training = {k: meta.training[k] for k in ("data", "seed") if k in meta.training}
    meta.training["soup"] = {"recipe": recipe.name, "options": dataclasses.asdict(recipe), "ingredients": file_records(paths), "svd_rank": rank,
                             "svd_relative_error": overall, "svd_relative_error_per_layer": errors}  # fmt: skip
    save_checkpoint(out, tensors, meta)
    written = sum(t.numel() * t.element_size() for t in tensors.values())
    return SoupSummary([str(p) for p in paths], recipe.name, len(tensors), written, time.perf_counter() - start,
                       anonymous_bytes(),
                       [str(out)], kind="LoRA adapters (re-compressed)", svd_errors={**errors, "overall": overall})  # fmt: skip


def _check_same_layers(files: list[TensorFile], layers: list[str], others: list[str]) -> None:
    """LoRA ingredients of any ranks: the same adapted layers, and the same other tensors (the head)."""
    first = files[0]
    for other in files[1:]:
        theirs = sorted(k[: -len(LORA_A)] for k in other.keys if k.endswith(LORA_A))
        if theirs != layers:
            extra = sorted(set(theirs) ^ set(layers))
            raise AdaptError(f"{first.path} and {other.path} adapt other layers (e.g. {extra[0]}); soup LoRA runs "
                             "with the same targets, or fold them first (soup without --rank)")  # fmt: skip
        for key in others:
            if key not in other.keys or other.shape(key) != first.shape(key):
                raise AdaptError(f"key '{key}' of {first.path} is missing or shaped otherwise in {other.path}")
