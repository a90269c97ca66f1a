"""Tensor files read and written one tensor at a time.

`TensorFile` opens an ingredient lazily: keys, shapes, dtypes and metadata come from the
safetensors header and a tensor is read only when asked for (a `.pth` has no such index
and is loaded whole, with weights_only=True). `StreamingWriter` writes safetensors files
tensor by tensor: the header is computed up front from the shapes and dtypes, then each
tensor's bytes are appended as it is produced, so the output never has to be in memory.
The safetensors library writes only from a complete dict, hence this small writer of its
(simple, documented) format; files go to temporary names and are renamed at the end.
"""

from __future__ import annotations

import errno
import json
import math
import mmap
import os
import struct
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from adapt.backbones import read_state_dict
from adapt.checkpoint import HF_METADATA
from adapt.errors import AdaptError

SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}  # fmt: skip


class TensorFile:
    """One input file: its header now, its tensors one by one.

    A safetensors file is validated once by the safetensors library (a corrupt or lying
    header is refused), then mapped once, read-only, and each tensor is a view of its bytes:
    reading costs no copy and no anonymous memory (the pages are the page cache's, which the
    kernel can reclaim), so a soup holds in its own memory only what it computes. A view
    cannot be changed in place (the mapping is read-only: recipes compute new tensors from
    it). A tensor whose offset does not fit its dtype's alignment is read with positioned
    reads into a buffer of its own."""

    def __init__(self, path: str | Path, label: str | None = None):
        self.path = Path(path)
        self.label = label or str(self.path)  # how messages name it (a base built in scratch: what the user gave)
        self._fd: int | None = None
        self._map: mmap.mmap | None = None
        if not self.path.is_file():
            raise AdaptError(f"file not found: {self.label}")
        self._state: dict[str, torch.Tensor] | None = None
        if self.path.suffix == ".safetensors":
            try:
                with safe_open(str(self.path), framework="pt") as handle:
                    self.metadata = handle.metadata() or {}
                    self.keys = list(handle.keys())
                    self._dtypes = {k: handle.get_slice(k).get_dtype() for k in self.keys}
                self._header = _read_header(self.path)
            except (SafetensorError, OSError, ValueError, RuntimeError) as error:
                raise AdaptError(f"{self.label} is truncated or not a safetensors file ({str(error).splitlines()[0]})") from None
        else:
            self._state = read_state_dict(self.path)
            self.metadata = {}
            self.keys = list(self._state)

    def shape(self, key: str) -> tuple[int, ...]:
        if self._state is not None:
            return tuple(self._state[key].shape)
        return tuple(self._header[key]["shape"])

    def dtype(self, key: str) -> torch.dtype:
        if self._state is not None:
            dtype = self._state[key].dtype
            if dtype not in SAFETENSORS_DTYPES:
                raise AdaptError(f"tensor '{key}' of {self.label} has dtype {dtype}, which soups do not handle")
            return dtype
        for dtype, code in SAFETENSORS_DTYPES.items():
            if code == self._dtypes[key]:
                return dtype
        raise AdaptError(f"tensor '{key}' of {self.label} has dtype {self._dtypes[key]}, which soups do not handle "
                         f"(they take {', '.join(sorted(set(SAFETENSORS_DTYPES.values())))})")  # fmt: skip

    def get(self, key: str) -> torch.Tensor:
        """The tensor (a view of the file's mapping: never change it in place; finiteness is checked on
        what a merge produces, not here)."""
        if self._state is not None:
            return self._state[key]
        entry = self._header[key]
        start, end = entry["data_offsets"]
        shape, dtype = tuple(entry["shape"]), self.dtype(key)
        offset = self._header_bytes + start
        size = os.fstat(self._file()).st_size
        if size < offset + end - start:  # another process truncated it: reading the mapping there would be SIGBUS
            raise AdaptError(f"{self.label} changed while it was read: it is now {size:,} bytes, and tensor '{key}' "
                             f"ends at byte {offset + end - start:,}; nothing was written")  # fmt: skip
        if end > start and offset % dtype.itemsize == 0:
            with warnings.catch_warnings():  # torch warns that the buffer is read-only: it is, by design
                warnings.simplefilter("ignore", UserWarning)
                raw = torch.frombuffer(self._mapping(), dtype=torch.uint8, count=end - start, offset=offset)
            return raw.view(dtype).reshape(shape)
        raw = torch.empty(end - start, dtype=torch.uint8)  # not zero-filled: the read fills it
        if end == start:
            return raw.view(dtype).reshape(shape)
        view, done = memoryview(raw.numpy()), 0
        while done < len(view):
            read = os.preadv(self._file(), [view[done:]], offset + done)
            if read == 0:
                raise AdaptError(f"{self.label} ended inside tensor '{key}' (truncated while being read?)")
            done += read
        return raw.view(dtype).reshape(shape)

    def _file(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return self._fd

    def _mapping(self) -> mmap.mmap:
        """The whole file, mapped once, read-only (a writable private mapping would copy every page it
        populates into anonymous memory), its page table filled in one call."""
        if self._map is None:
            if os.fstat(self._file()).st_size < self._header_bytes + self._data_bytes:
                raise AdaptError(f"{self.label} is shorter than its header says (truncated while being read?)")
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            self._map = mmap.mmap(self._file(), 0, flags=flags, prot=mmap.PROT_READ)
        return self._map

    @property
    def _header_bytes(self) -> int:
        return self._header["__size__"]

    @property
    def _data_bytes(self) -> int:
        return max((entry["data_offsets"][1] for k, entry in self._header.items() if k != "__size__"), default=0)

    def close(self) -> None:
        if getattr(self, "_map", None) is not None:
            try:
                self._map.close()
            except BufferError:  # a tensor still views it: the mapping goes with the last view
                pass
            self._map = None
        if getattr(self, "_fd", None) is not None:  # also when __init__ failed before opening anything
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.close()


def _read_header(path: Path) -> dict:
    """The safetensors header (already validated by the library) with where the data starts."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    header.pop("__metadata__", None)
    header["__size__"] = 8 + length
    return header


def nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    return math.prod(shape) * dtype.itemsize


def _tensor_bytes(tensor: torch.Tensor):
    """The tensor's bytes as a buffer over its memory (no copy for contiguous CPU tensors)."""
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


def _write_all(handle, data) -> None:
    """Write a whole buffer straight from its memory (an unbuffered write may take less than all of it)."""
    view = memoryview(data).cast("B")
    while view:
        view = view[handle.write(view) :]


def _reserve(handle, size: int) -> None:
    """Allocate the whole file up front: a full disk fails now, not halfway, and the writes then only
    fill blocks that exist (about twice as fast on ext4 as growing the file)."""
    try:
        os.posix_fallocate(handle.fileno(), 0, size)
    except OSError as error:
        if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise


class StreamingWriter:
    """Writes tensors in a fixed order into one or more safetensors shards.

    Use as a context manager; tensors must arrive in `order`. With `max_shard_bytes`,
    tensors are packed into shards `NAME-00001-of-0000N.safetensors` plus an index JSON
    `NAME.safetensors.index.json` (the Hugging Face layout).
    """

    def __init__(
        self,
        path: str | Path,
        order: Iterable[tuple[str, tuple[int, ...], torch.dtype]],
        metadata: dict[str, str] | None = None,
        max_shard_bytes: int | None = None,
    ):
        self.path = Path(path)
        self.metadata = {**HF_METADATA, **(metadata or {})}
        self.order = list(order)
        self.shards = self._plan(max_shard_bytes)
        self._files: list = []
        self._header_sizes: dict[Path, int] = {}
        self._next = 0

    def _plan(self, max_shard_bytes: int | None) -> list[list[tuple[str, tuple[int, ...], torch.dtype]]]:
        shards: list[list] = [[]]
        size = 0
        for entry in self.order:
            size_of = nbytes(entry[1], entry[2])
            if max_shard_bytes and shards[-1] and size + size_of > max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append(entry)
            size += size_of
        return shards

    def _remove_replaced(self) -> None:
        """An earlier output of the other layout under the same name (the caller was asked to replace it):
        a single file when we wrote shards, or an index and its shards when we wrote a single file."""
        index = self.path.with_name(self.path.name + ".index.json")
        if len(self.shards) > 1:
            self.path.unlink(missing_ok=True)
            return
        if index.is_file():
            try:
                old_shards = set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values())
            except (OSError, ValueError, AttributeError):
                old_shards = set()
            stem = self.path.name.removesuffix(".safetensors")
            for name in old_shards:
                if isinstance(name, str) and name.startswith(f"{stem}-") and "/" not in name:
                    self.path.with_name(name).unlink(missing_ok=True)
            index.unlink()

    def shard_paths(self) -> list[Path]:
        if len(self.shards) == 1:
            return [self.path]
        stem = self.path.name.removesuffix(".safetensors")
        n = len(self.shards)
        return [self.path.with_name(f"{stem}-{i + 1:05d}-of-{n:05d}.safetensors") for i in range(n)]

    def _header(self, shard: list) -> bytes:
        header: dict = {"__metadata__": self.metadata}
        offset = 0
        for key, shape, dtype in shard:
            end = offset + nbytes(shape, dtype)
            header[key] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, end]}
            offset = end
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        return struct.pack("<Q", len(raw)) + raw

    def __enter__(self) -> StreamingWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            for shard, final in zip(self.shards, self.shard_paths()):
                handle = open(final.with_name(f".{final.name}.tmp"), "wb", buffering=0)  # each tensor is one big write
                self._files.append((handle, final, {key for key, _, _ in shard}))
                header = self._header(shard)
                self._header_sizes[final] = len(header)
                _reserve(handle, len(header) + sum(nbytes(shape, dtype) for _, shape, dtype in shard))
                _write_all(handle, header)
        except BaseException as error:  # a failed reservation (EFBIG, ENOSPC, EDQUOT): __exit__ will not run
            self.__exit__(type(error), error, error.__traceback__)
            raise
        return self

    def write(self, key: str, tensor: torch.Tensor) -> None:
        expected_key, shape, dtype = self.order[self._next]
        if key != expected_key or tuple(tensor.shape) != shape or tensor.dtype != dtype:
            raise ValueError(f"writer expected {expected_key} {shape} {dtype}, got {key} {tuple(tensor.shape)} {tensor.dtype}")
        handle = next(h for h, _, keys in self._files if key in keys)
        _write_all(handle, _tensor_bytes(tensor))
        self._next += 1

    def restate(self, metadata: dict[str, str]) -> None:
        """Replace the metadata in every header already written, for facts known only at the end (the
        inputs' digests). The new header must have the old one's length: fields of fixed width."""
        self.metadata = {**HF_METADATA, **metadata}
        for (handle, final, _), shard in zip(self._files, self.shards):
            header = self._header(shard)
            if len(header) != self._header_sizes[final]:
                raise ValueError(f"restated header of {final.name} is {len(header)} bytes, not {self._header_sizes[final]}")
            written = os.pwrite(handle.fileno(), header, 0)
            if written != len(header):
                raise OSError(f"short write of the header of {final.name}")

    def __exit__(self, kind, value, traceback) -> None:
        complete = kind is None and self._next == len(self.order)
        for handle, final, _ in self._files:
            handle.close()
            tmp = final.with_name(f".{final.name}.tmp")
            if complete:
                os.replace(tmp, final)
            else:
                tmp.unlink(missing_ok=True)
        if complete:
            self._remove_replaced()
        if complete and len(self.shards) > 1:
            from adapt.checkpoint import write_json_atomic

            weight_map = {key: final.name for _, final, keys in self._files for key in sorted(keys)}
            total = sum(nbytes(s, d) for _, s, d in self.order)
            write_json_atomic(self.path.with_name(self.path.name + ".index.json"),
                              {"metadata": {"total_size": total, **self.metadata}, "weight_map": weight_map})  # fmt: skip
        if kind is None and not complete:
            raise ValueError(f"writer closed after {self._next} of {len(self.order)} tensors")
