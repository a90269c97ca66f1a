"""Re-parameterization: fold a trained method into the backbone's own weights.

The merged model has the original timm architecture with the new head, so its state
dict loads into `timm.create_model(name, num_classes=K)` without `adapt`. Merging runs
in place (adapt.kernels); we report its time and the peak of the extra memory it
allocated, counted op by op (AllocationTracker).
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from adapt.adapted import AdaptedModel
from adapt.backbones import RANDOM_WEIGHTS, classifier_prefixes, create_backbone
from adapt.checkpoint import MERGED_KEY, save_tensors_atomic
from adapt.heads import ContinualModel
from adapt.hub import HUB_FILES, save_hub_folder
from adapt.model_card import model_card
from adapt.outputs import check_free_space, check_output_file, check_owned_folder, exclusive_lock
from adapt.errors import AdaptError, compare_tensors, describe_mismatch
from adapt.kernels import conv_batchnorm_pairs, fold_batchnorm_


@dataclass
class MergeReport:
    method: str
    seconds: float
    peak_extra_bytes: int
    largest_tensor_bytes: int
    batchnorms_folded: int
    note: str = ""  # what the merged model does not reproduce exactly, if anything


class AllocationTracker(TorchDispatchMode):
    """Counts the bytes of new tensor storage that ops create while active, and their peak.

    Every op's outputs that do not reuse an input's storage are new allocations; each is
    counted until its storage is freed. In-place ops (addmm_, mul_) count nothing. Storages,
    not tensors, are followed: autograd keeps a tensor that a custom Function saves as its
    output through another tensor object over the same storage, so the first object dies while
    the memory lives on (following tensors under-counted every such saved output).
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._counted: set[int] = set()  # ids of the live storages counted

    def _free(self, key: int, nbytes: int) -> None:
        self._counted.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor) or tensor.untyped_storage().data_ptr() in inputs:
                continue
            storage = tensor.untyped_storage()
            if id(storage) in self._counted or storage.nbytes() == 0:
                continue
            self._counted.add(id(storage))
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, id(storage), storage.nbytes())
        return out


def peak_extra_bytes(work: Callable[[], None]) -> int:
    """Run `work`; the peak of bytes of tensors it allocated and had not yet freed."""
    with AllocationTracker() as tracker:
        work()
    return tracker.peak


def merge_adapted(adapted: AdaptedModel, fold_bn: bool = False) -> tuple[nn.Module, MergeReport]:
    """Fold the method (and, with fold_bn, BatchNorm into convs) into the weights, in place."""
    if not adapted.method.mergeable:
        raise AdaptError(
            f"method {adapted.method.name} cannot be merged: {adapted.method.merge_refusal}; "
            "use its checkpoint with adapt eval/predict"
        )
    model = adapted.model.eval()
    pairs = conv_batchnorm_pairs(model, adapted.image_size) if fold_bn else []

    adapted_part = model.backbone if isinstance(model, ContinualModel) else model  # what the method was applied to

    def work() -> None:
        adapted.method.merge(adapted_part)
        for conv, bn in pairs:
            fold_batchnorm_(conv.weight.data, bn)

    start = time.perf_counter()
    peak = peak_extra_bytes(work)
    seconds = time.perf_counter() - start
    note = ""
    if isinstance(model, ContinualModel):
        model, note = plain_classifier_model(model, adapted)
    largest = max(t.numel() * t.element_size() for t in model.state_dict().values())
    check_plain_architecture(model, adapted)
    return model, MergeReport(adapted.method.name, seconds, peak, largest, len(pairs), note)


def plain_classifier_model(model: ContinualModel, adapted: AdaptedModel) -> tuple[nn.Module, str]:
    """The merged backbone of a continual checkpoint under a plain timm head holding its incremental head."""
    plain, _ = create_backbone(adapted.backbone.name, RANDOM_WEIGHTS, len(adapted.class_names), adapted.image_size)
    weight, bias, exact = model.head.as_linear()
    head = classifier_prefixes(plain)[0]
    state = {**model.backbone.state_dict(), f"{head}.weight": weight, f"{head}.bias": bias}
    check_plain_architecture_of(state, plain, adapted)
    plain.load_state_dict(state)
    note = "" if exact else (
        f"the {model.head.kind} head normalizes features, which a timm classifier cannot: the merged model's "
        "scores are the head's times a positive factor per image, so its class ranking (top-k) is the same "
        "but its probabilities differ"
    )  # fmt: skip
    return plain.eval(), note


def check_plain_architecture(model: nn.Module, adapted: AdaptedModel) -> None:
    """The merged state dict must be exactly that of a fresh timm model with K classes."""
    fresh, _ = create_backbone(adapted.backbone.name, RANDOM_WEIGHTS, len(adapted.class_names), adapted.image_size)
    check_plain_architecture_of(model.state_dict(), fresh, adapted)


def check_plain_architecture_of(state: dict[str, torch.Tensor], fresh: nn.Module, adapted: AdaptedModel) -> None:
    mismatch = compare_tensors(
        {k: tuple(v.shape) for k, v in fresh.state_dict().items()}, {k: tuple(v.shape) for k, v in state.items()}
    )
    if any(mismatch):
        raise AdaptError(describe_mismatch(f"merged {adapted.method.name} model is not a plain {adapted.backbone.name}", *mismatch))


def merged_metadata(adapted: AdaptedModel, training: dict | None = None) -> dict[str, str]:
    """What the merged file says about itself; nothing needs it to load, `adapt eval` uses it."""
    meta = adapted.meta(training).to_metadata()
    fields = ("backbone", "class_names", "image_size", "mean", "std", "interpolation", "method", "method_options",
              "training")
    return {MERGED_KEY: "adapt", **{k: meta[k] for k in fields}}


def save_merged(path: str | Path, model: nn.Module, adapted: AdaptedModel, training: dict | None = None) -> None:
    """A plain state dict (with format: pt, so Hugging Face loaders take it too)."""
    save_tensors_atomic(path, model.state_dict(), merged_metadata(adapted, training))


def save_merged_hub(folder: str | Path, model: nn.Module, adapted: AdaptedModel, training: dict | None = None,
                    card: str | None = None) -> Path:  # fmt: skip
    """The hub layout (adapt.hub): `timm.create_model("local-dir:DIR", pretrained=True)` loads it."""
    return save_hub_folder(folder, model, adapted.class_names, adapted.image_size, adapted.mean, adapted.std,
                           merged_metadata(adapted, training), card, adapted.interpolation)  # fmt: skip


@dataclass
class MergeResult:
    out: Path
    layout: str  # "file" or "hub"
    backbone: str
    report: MergeReport
    was_plain: bool = False  # the input was already a plain network (a merged model, a soup of them, `full`)


def merge_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    layout: str = "auto",
    fold_bn: bool = False,
    overwrite: bool = False,
    weights: str | None = None,
    command: str | None = None,
) -> MergeResult:
    """`adapt merge`: fold a checkpoint and write it as one file or as a hub folder (with a model card
    naming `command`, the command line that made it).

    layout "auto" writes a hub folder when `out` ends with a separator or is a folder. An
    existing output is replaced only with `overwrite`; an input never is."""
    hub = layout == "hub" or (layout == "auto" and (str(out).endswith(os.sep) or Path(out).is_dir()))
    out = Path(out)
    inputs = [checkpoint, weights]
    with exclusive_lock(out):
        if hub:
            check_owned_folder(out, HUB_FILES, overwrite, inputs)
        else:
            check_output_file(out, overwrite, inputs)
        adapted, meta = AdaptedModel.from_checkpoint(checkpoint, weights)
        trained = adapted.parameter_counts()[0]  # before folding: what the method trained
        model, report = merge_adapted(adapted, fold_bn)
        training = {k: v for k, v in meta.training.items() if k in ("data", "seed")}
        training["merged_from"] = str(checkpoint)
        check_free_space(out / HUB_FILES[1] if hub else out, sum(t.numel() * t.element_size() for t in model.state_dict().values()))
        if hub:
            loader = (f'import adapt  # first: it makes timm importable beside a CPU-only torch (not needed otherwise)\n'
                      f'import timm\n\nmodel = timm.create_model("local-dir:{out}", pretrained=True)')  # fmt: skip
            card = model_card(meta, trained, loader, "timm", command, merged=True)
            save_merged_hub(out, model, adapted, training, card)
        else:
            save_merged(out, model, adapted, training)
    return MergeResult(out, "hub" if hub else "file", adapted.backbone.name, report, meta.merged)
