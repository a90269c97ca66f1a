"""Classifier heads that grow by tasks: `--head linear | cosine | language`.

The registry imports a head's module when it is first used (adapt.registry), so listing
the heads imports no torch.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from adapt.errors import AdaptError
from adapt.registry import LazyRegistry

if TYPE_CHECKING:
    from adapt.heads.base import IncrementalHead

DEFAULT_TEMPLATE = "a photo of a {}"
HEADS = LazyRegistry({
    "linear": "adapt.heads.linear:LinearHead",
    "cosine": "adapt.heads.cosine:CosineHead",
    "language": "adapt.heads.language:LanguageHead",
})  # fmt: skip
_LAZY = {"IncrementalHead": "adapt.heads.base", "TextEmbedder": "adapt.heads.language", "ContinualModel": "adapt.heads.model",
         "head_buffers": "adapt.heads.model", "head_spec": "adapt.heads.model", "rebuild_head": "adapt.heads.model"}  # fmt: skip


def create_head(name: str, feature_dim: int, **options: Any) -> IncrementalHead:
    if name not in HEADS:
        raise AdaptError(f"unknown head {name!r} (choose from {', '.join(HEADS)})")
    accepted = set(inspect.signature(HEADS[name]).parameters) - {"feature_dim"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise AdaptError(f"head {name} has no option(s) {', '.join(unknown)} (it has: {sorted(accepted)})")
    return HEADS[name](feature_dim, **options)


def __getattr__(name: str) -> Any:
    """The heads' classes and helpers, imported when first asked for."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'adapt.heads' has no attribute {name!r}")


__all__ = ["DEFAULT_TEMPLATE", "HEADS", "create_head", *_LAZY]
