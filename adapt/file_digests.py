"""sha256 of input files, computed beside the work that reads them and remembered between calls.

A soup records the sha256 of every ingredient and of its base. Hashing runs at ~1.7 GB/s per
core here, several times slower than the soup itself, so:
- digests are computed in background threads while the caller works (hashlib and file reads
  release the GIL), and collected when the output is complete;
- a digest is remembered in the user's cache folder (adapt.user_cache), keyed by the file's
  path and stat (device, inode, size, mtime and ctime in ns), as git's index and DVC's state do:
  souping the same files again does not hash them again. Any change to a file changes its ctime,
  so a changed file is hashed anew. A cache that cannot be read or written is ignored.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import re
import sqlite3
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from adapt.user_cache import cache_dir

PLACEHOLDER = "0" * 64  # a sha256 in hex, before it is known: records have their final length from the start
CACHE_NAME = "file-digests.sqlite"
KEPT = 10_000  # the most recent digests kept (temporary files, e.g. an embedded base, would pile up)


def _identity(path: Path) -> tuple[str, int, int, int, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


def _sha256(path: Path) -> str:
    """Over a read-only mapping: one call that hashes the page cache in place, without the GIL."""
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            return hashlib.sha256().hexdigest()
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
            return hashlib.sha256(view).hexdigest()


class _Cache:
    """The remembered digests: one row per resolved path, valid while the file's stat is unchanged."""

    def __init__(self) -> None:
        self.db: sqlite3.Connection | None = None
        try:
            folder = cache_dir()
            folder.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(folder / CACHE_NAME, timeout=5)
            self.db.execute("CREATE TABLE IF NOT EXISTS digests (path TEXT PRIMARY KEY, dev INT, ino INT, size INT, "
                            "mtime_ns INT, ctime_ns INT, sha256 TEXT)")  # fmt: skip
        except (OSError, sqlite3.Error):
            self.close()
            self.db = None

    def get(self, identity: tuple) -> str | None:
        if self.db is None:
            return None
        try:
            row = self.db.execute("SELECT dev, ino, size, mtime_ns, ctime_ns, sha256 FROM digests WHERE path = ?",
                                  identity[:1]).fetchone()  # fmt: skip
        except sqlite3.Error:
            return None
        if row is None or tuple(row[:-1]) != identity[1:]:
            return None
        digest = row[-1]  # a row another program (or a broken write) made may hold anything: then hash anew
        return digest if isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest) else None

    def put(self, identity: tuple, digest: str) -> None:
        if self.db is None:
            return
        try:
            with self.db:
                self.db.execute("INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?, ?, ?, ?)", (*identity, digest))
                self.db.execute("DELETE FROM digests WHERE rowid <= (SELECT MAX(rowid) FROM digests) - ?", (KEPT,))
        except sqlite3.Error:
            pass

    def close(self) -> None:
        if self.db is not None:
            self.db.close()


class FileDigests:
    """The sha256 of `paths`, started now in background threads (unless remembered), read by `records()`.

    Use as a context manager, so that the threads end with the work that started them."""

    def __init__(self, paths: Sequence[str | Path], workers: int = 2):
        self.paths = [Path(p) for p in paths]
        self._cache = _Cache()
        self._identities = [_identity(p) for p in self.paths]
        known = [self._cache.get(identity) for identity in self._identities]
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sha256")
        self._digests: list[str | Future[str]] = [
            digest if digest is not None else self._pool.submit(_sha256, path) for digest, path in zip(known, self.paths)
        ]  # fmt: skip

    def __enter__(self) -> FileDigests:
        return self

    def __exit__(self, *_) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._cache.close()

    @property
    def pending(self) -> bool:
        """Whether some digest is being computed (the caller may leave a core to it)."""
        return any(isinstance(digest, Future) and not digest.done() for digest in self._digests)

    def placeholders(self) -> list[dict[str, str]]:
        """The records as they will be, with each sha256 not yet known as PLACEHOLDER (same length)."""
        return [{"path": str(p), "sha256": PLACEHOLDER} for p in self.paths]

    def records(self) -> list[dict[str, str]]:
        """Each file as the caller gave it and its sha256 (waits for the digests being computed)."""
        records = []
        for i, (path, identity) in enumerate(zip(self.paths, self._identities)):
            digest = self._digests[i]
            if isinstance(digest, Future):
                digest = self._digests[i] = digest.result()
                if _identity(path) == identity:  # not changed while it was read
                    self._cache.put(identity, digest)
            records.append({"path": str(path), "sha256": digest})
        return records


def file_records(paths: Sequence[str | Path]) -> list[dict[str, str]]:
    """Each file as given, with its sha256 (remembered, or computed now)."""
    with FileDigests(paths) as digests:
        return digests.records()
