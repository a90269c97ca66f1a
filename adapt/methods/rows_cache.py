"""`adapt methods`' table: shipped for the default backbone, kept between calls for the others.

Counting a method's parameters means building the backbone, which imports torch and timm
(about 3 s here before any work). The default backbone's table ships with adapt
(default_rows.json, recomputed by a test that fails when it is stale). The rows are a pure function of the backbone, class count,
image size, adapt's own source and the installed torch/timm/peft, so they are kept in the
user's cache folder (adapt.user_cache) under a
key made of all of these; a later call reads them without importing torch. A cache that cannot
be read or written is ignored: the rows are then computed, as on a first call.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from adapt.methods import MethodRow, method_rows
from adapt.user_cache import cache_dir

PACKAGES = ("torch", "timm", "peft")


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
    """The rows of a table file, or None when it cannot be read or holds anything else (it is then rebuilt)."""
    from adapt.config import build
    from adapt.errors import AdaptError

    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
        return [build(MethodRow, row) for row in rows] if isinstance(rows, list) else None
    except (OSError, ValueError, TypeError, RecursionError, AdaptError):
        return None


SHIPPED = Path(__file__).with_name("default_rows.json")  # the default backbone's table, checked by a test
SHIPPED_FOR = {"backbone": "tf_efficientnet_lite0", "num_classes": 10, "image_size": None}


def shipped_rows(names: list[str], backbone: str, num_classes: int, image_size: int | None) -> list[MethodRow] | None:
    """The table shipped with adapt for the default backbone (10 classes), so that a first `adapt methods`
    needs no torch; None for any other setting, or when it does not list exactly `names`."""
    if {"backbone": backbone, "num_classes": num_classes, "image_size": image_size} != SHIPPED_FOR:
        return None
    rows = _read(SHIPPED)
    return rows if rows is not None and [r.name for r in rows] == names else None


def write_shipped_rows(names: list[str]) -> None:
    """Recompute the shipped table from the methods themselves (when a method's parameters change)."""
    from adapt.checkpoint import write_json_atomic

    write_json_atomic(SHIPPED, [dataclasses.asdict(row) for row in method_rows(names, **SHIPPED_FOR)])


def cached_method_rows(
    names: list[str], backbone: str, num_classes: int, image_size: int | None = None,
    on_build: Callable[[], None] | None = None,
) -> list[MethodRow]:  # fmt: skip
    """method_rows(...): shipped for the default backbone, else from the cache when an earlier call computed
    them, else built (`on_build()` first: building imports torch and takes seconds)."""
    rows = shipped_rows(names, backbone, num_classes, image_size)
    if rows is not None:
        return rows
    path = cache_dir() / f"methods-{cache_key(names, backbone, num_classes, image_size)}.json"
    rows = _read(path) if path.is_file() else None
    if rows is not None and [r.name for r in rows] == names:
        return rows
    if on_build is not None:
        on_build()
    rows = method_rows(names, backbone, num_classes, image_size)
    try:
        from adapt.checkpoint import write_json_atomic

        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, [dataclasses.asdict(row) for row in rows])
    except OSError:
        pass  # a read-only or full home: the table is still printed
    return rows
