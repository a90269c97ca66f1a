"""`adapt methods`' table, kept between calls.

Counting a method's parameters means building the backbone, which imports torch and timm
(about 3 s here before any work). The rows are a pure function of the backbone, class count,
image size, adapt's own source and the installed torch/timm/peft, so they are kept in the
user's cache folder (ADAPT_CACHE_DIR, else $XDG_CACHE_HOME/adapt, else ~/.cache/adapt) under a
key made of all of these; a later call reads them without importing torch. A cache that cannot
be read or written is ignored: the rows are then computed, as on a first call.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

from adapt.methods import MethodRow, method_rows

PACKAGES = ("torch", "timm", "peft")


def cache_dir() -> Path:
    explicit = os.environ.get("ADAPT_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "adapt"


def _source_digest() -> str:
    """A digest of adapt's source files: an edited method invalidates the table."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def cache_key(names: list[str], backbone: str, num_classes: int, image_size: int | None) -> str:
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    what = [names, backbone, num_classes, image_size, versions, _source_digest()]
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:24]


def _read(path: Path) -> list[MethodRow] | None:
    try:
        rows = [MethodRow(**row) for row in json.loads(path.read_text(encoding="utf-8"))]
    except (OSError, ValueError, TypeError):
        return None
    return rows


def cached_method_rows(names: list[str], backbone: str, num_classes: int, image_size: int | None = None) -> list[MethodRow]:
    """method_rows(...), from the cache when an earlier call computed them."""
    path = cache_dir() / f"methods-{cache_key(names, backbone, num_classes, image_size)}.json"
    rows = _read(path) if path.is_file() else None
    if rows is not None and [r.name for r in rows] == names:
        return rows
    rows = method_rows(names, backbone, num_classes, image_size)
    try:
        from adapt.checkpoint import write_json_atomic

        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, [dataclasses.asdict(row) for row in rows])
    except OSError:
        pass  # a read-only or full home: the table is still printed
    return rows
