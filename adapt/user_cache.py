"""The user's cache folder: ADAPT_CACHE_DIR, else $XDG_CACHE_HOME/adapt, else ~/.cache/adapt.

What adapt keeps there can always be recomputed (`adapt methods`' tables, file digests)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    explicit = os.environ.get("ADAPT_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "adapt"
