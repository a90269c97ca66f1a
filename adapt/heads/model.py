"""A backbone's features scored by an incremental head, and how such a model is saved and rebuilt.

A checkpoint of this model records the head as {"kind", "options", "task_sizes"} beside
the tensors (the head's parameters and its buffers, e.g. a language head's text targets),
so `adapt eval`, `predict`, `info` and `merge` rebuild it without the continual run.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from adapt.errors import AdaptError
from adapt.heads.base import IncrementalHead

HEAD_PREFIX = "head."


class ContinualModel(nn.Module):
    """Backbone features (timm, num_classes=0) scored by an incremental head."""

    def __init__(self, backbone: nn.Module, head: IncrementalHead):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


def head_spec(head: IncrementalHead) -> dict[str, Any]:
    return {"kind": head.kind, "options": head.options(), "task_sizes": list(head.task_sizes)}


def head_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """The head's buffers under their model names (they travel in checkpoints, not in training)."""
    if not isinstance(model, ContinualModel):
        return {}
    return {HEAD_PREFIX + k: v.detach() for k, v in model.head.named_buffers()}


def rebuild_head(spec: dict[str, Any], feature_dim: int, class_names: list[str], tensors: dict[str, torch.Tensor]) -> IncrementalHead:
    """An incremental head of the saved shape (its tensors are loaded afterwards)."""
    from adapt.heads import create_head

    try:
        kind, options, sizes = spec["kind"], dict(spec.get("options") or {}), [int(n) for n in spec["task_sizes"]]
    except (KeyError, TypeError, ValueError):
        raise AdaptError(f"the checkpoint's head description is malformed: {str(spec)[:80]}") from None
    if sum(sizes) != len(class_names) or any(n < 1 for n in sizes):
        raise AdaptError(f"the checkpoint's head has tasks of {sizes} classes but {len(class_names)} class names")
    head = create_head(kind, feature_dim, **options)
    own = {k.removeprefix(HEAD_PREFIX): v for k, v in tensors.items() if k.startswith(HEAD_PREFIX)}
    head.restore(class_names, sizes, own)
    return head
