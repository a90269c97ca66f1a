"""The method registry: `--method NAME` choices come from here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from adapt.errors import AdaptError
from adapt.methods.base import Method, count_trainable
from adapt.methods.baselines import BitFit, Full, Linear
from adapt.methods.hst import HST
from adapt.methods.lora import LoRA
from adapt.methods.spt import SPT
from adapt.methods.ssf import SSF

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (SSF, LoRA, SPT, HST, Full, Linear, BitFit)}


def create_method(name: str, options: dict[str, Any] | None = None) -> Method:
    if name not in METHODS:
        raise AdaptError(f"unknown method {name!r} (choose from {', '.join(METHODS)})")
    return METHODS[name].from_options(options or {})


@dataclass
class MethodRow:
    name: str
    trainable: int
    total: int
    mergeable: bool
    default_lr: float
    summary: str
    budgeted: bool


def method_rows(names: list[str], backbone: str, num_classes: int, image_size: int | None = None) -> list[MethodRow]:
    """Each method applied to a fresh `backbone` (random weights suffice to count)."""
    from adapt.backbones import RANDOM_WEIGHTS, create_backbone

    rows = []
    for name in names:
        model, _ = create_backbone(backbone, RANDOM_WEIGHTS, num_classes, image_size)
        method = create_method(name)
        model = method.apply(model)
        total = sum(p.numel() for p in model.parameters())
        rows.append(MethodRow(name, count_trainable(model), total, method.mergeable, method.default_lr, method.describe(model),
                              method.budgeted))  # fmt: skip
    return rows


__all__ = ["METHODS", "Method", "MethodRow", "count_trainable", "create_method", "method_rows"]
