"""Classifier heads that grow by tasks: `--head linear | cosine | language`."""

from __future__ import annotations

import inspect
from typing import Any

from adapt.errors import AdaptError
from adapt.heads.base import IncrementalHead
from adapt.heads.cosine import CosineHead
from adapt.heads.language import DEFAULT_TEMPLATE, LanguageHead, TextEmbedder
from adapt.heads.linear import LinearHead
from adapt.heads.model import ContinualModel, head_buffers, head_spec, rebuild_head

HEADS: dict[str, type[IncrementalHead]] = {"linear": LinearHead, "cosine": CosineHead, "language": LanguageHead}


def create_head(name: str, feature_dim: int, **options: Any) -> IncrementalHead:
    if name not in HEADS:
        raise AdaptError(f"unknown head {name!r} (choose from {', '.join(HEADS)})")
    accepted = set(inspect.signature(HEADS[name]).parameters) - {"feature_dim"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise AdaptError(f"head {name} has no option(s) {', '.join(unknown)} (it has: {sorted(accepted)})")
    return HEADS[name](feature_dim, **options)


__all__ = ["DEFAULT_TEMPLATE", "HEADS", "ContinualModel", "IncrementalHead", "TextEmbedder", "create_head",
           "head_buffers", "head_spec", "rebuild_head"]  # fmt: skip
