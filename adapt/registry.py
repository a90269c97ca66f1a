"""A registry of names whose classes are imported when first asked for.

`list(REGISTRY)` (what a CLI offers as choices) imports nothing; `REGISTRY[name]` imports
the module that implements `name`. So `adapt --help` runs without loading torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any


class LazyRegistry(Mapping):
    """name -> "package.module:Class", resolved on access."""

    def __init__(self, entries: dict[str, str]):
        self._entries = dict(entries)

    def __getitem__(self, name: str) -> Any:
        module, _, attribute = self._entries[name].partition(":")
        return getattr(importlib.import_module(module), attribute)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
