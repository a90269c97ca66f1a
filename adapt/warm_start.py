"""Warm start: a run that begins from a trained checkpoint's head (and adapter) instead of fresh ones.

This is the start the model-soups recipe gives every ingredient (one shared, already-trained head),
and LP-FT (Kumar et al. 2022): probe first (`adapt tune --method linear`), then fine-tune from that
head (`adapt tune --method ssf --init-from probe/adapter.safetensors`). From a checkpoint of the same
method, the adapter's tensors are taken too, with the options that shape them (an SPT allocation, a
LoRA rank), so the run continues from where that one ended, on a fresh schedule. The checkpoint must
be of the same backbone weights and classes, in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from adapt.backbones import is_head_key
from adapt.checkpoint import CheckpointMeta, read_checkpoint
from adapt.errors import AdaptError, term

if TYPE_CHECKING:
    from adapt.adapted import AdaptedModel


@dataclass(frozen=True)
class WarmStart:
    path: str
    adapter: int  # tensors taken for the adapter besides the head (0 from another method's checkpoint)

    def describe(self) -> str:
        taken = f"the head and {self.adapter} adapter tensors" if self.adapter else "the head"
        return f"starting from {taken} of {self.path}"


def read_start(path: str | Path) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    """The checkpoint to start from, refused when it cannot be one (a merged model, an incremental head)."""
    tensors, meta = read_checkpoint(path)
    if meta.merged:
        raise AdaptError(f"{path} is a merged model; {term('init_from')} takes an adapter checkpoint "
                         f"(use it as {term('weights')} to train on top of it)")  # fmt: skip
    if meta.head is not None:
        raise AdaptError(f"{path} has a continual learner's incremental head; {term('init_from')} takes a tune checkpoint")
    return tensors, meta


def start_options(meta: CheckpointMeta, method: str, options: dict[str, Any] | None) -> dict[str, Any] | None:
    """The method options to build with: from a checkpoint of the same method its own (what shapes its
    tensors), under any the user gave; otherwise the user's."""
    if meta.method != method:
        return options
    return {**meta.method_options, **(options or {})}


def warm_start(
    adapted: AdaptedModel, path: str | Path, tensors: dict[str, torch.Tensor], meta: CheckpointMeta
) -> WarmStart:
    """Copy the head (and, from the same method, the adapter) of checkpoint `path`, as `read_start` read it,
    into `adapted`."""
    if (meta.backbone, meta.backbone_sha256) != (adapted.backbone.name, adapted.backbone.sha256):
        raise AdaptError(f"{path} was trained on {meta.backbone} ({meta.backbone_weights} weights), this run uses "
                         f"{adapted.backbone.name} ({adapted.backbone.weights}): start from a checkpoint of the same backbone")  # fmt: skip
    if meta.class_names != adapted.class_names:
        order = " (in another order)" if sorted(meta.class_names) == sorted(adapted.class_names) else ""
        raise AdaptError(f"{path} was trained on other classes{order} than this run's "
                         f"({len(meta.class_names)} vs {len(adapted.class_names)}): its head cannot start this one")  # fmt: skip
    model, method = adapted.model, adapted.method
    if meta.method == method.name:
        method.load_trainable_state(model, tensors, source=f"{term('init_from')} {path}")
        own = method.trainable_state(model)
        return WarmStart(str(path), sum(not is_head_key(model, k) for k in own))
    heads = {k: v for k, v in model.state_dict().items() if is_head_key(model, k)}
    missing = [k for k in heads if k not in tensors or tuple(tensors[k].shape) != tuple(heads[k].shape)]
    if missing:
        raise AdaptError(f"{path} holds no head '{missing[0]}' shaped as this run's {tuple(heads[missing[0]].shape)}")
    with torch.no_grad():
        for key, tensor in heads.items():
            tensor.copy_(tensors[key])
    return WarmStart(str(path), 0)
