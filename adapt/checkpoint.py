"""The adapter checkpoint: one .safetensors file with only the trained tensors.

Tensors: the method's trainable state (adapter + head; everything for `full`).
Metadata (all strings): format version, method and its options (JSON), backbone name,
its weights source and sha256, class names, image size, normalization, and a free-form
`training` record. Reading checks the file and the metadata; `adapt.adapted` checks
that the tensors fit the model they are loaded into.

Every file goes to a temporary name in the same folder first, then `os.replace`, so a
crash never leaves a half-written checkpoint under the real name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from adapt.config import MAX_CLASSES, MAX_IMAGE_SIZE, MAX_SEED, MIN_IMAGE_SIZE, option, validate
from adapt.errors import AdaptError

FORMAT_VERSION = "1"
FORMAT_KEY = "adapt_format"
MERGED_KEY = "merged_by"  # a merged model (or a soup of them): a plain timm state dict with our metadata
# what a checkpoint's tensors may be: trained values in float, SPT's indices, BatchNorm's counters
CHECKPOINT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64)
# what Hugging Face loaders (transformers, accelerate, huggingface_hub) require of a safetensors file
HF_METADATA = {"format": "pt"}


def umasked(mode: int) -> int:
    """`mode` as the user's umask would leave it (mkstemp/mkdtemp create private files)."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        yield Path(tmp)
        os.chmod(tmp, umasked(0o666))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def save_tensors_atomic(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        try:
            save_file(contiguous, str(tmp), metadata={**HF_METADATA, **metadata})
        except SafetensorError as error:  # the library wraps the OS's error (disk full, file size limit) in its own
            code = re.search(r"os error (\d+)", str(error))
            if code is None:
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from None


def read_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the metadata of a safetensors file, with a clear error if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise AdaptError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:  # torch's: the file shrank under its map
        raise AdaptError(f"{path} is truncated or not a safetensors file ({str(error).splitlines()[0]})") from None
    return tensors, metadata


@dataclass
class CheckpointMeta:
    """Everything needed to rebuild the adapted model and to refuse the wrong backbone."""

    method: str
    method_options: dict[str, Any]
    backbone: str
    backbone_weights: str
    backbone_sha256: str
    class_names: list[str]
    image_size: int = option(low=MIN_IMAGE_SIZE, high=MAX_IMAGE_SIZE)
    mean: list[float] = option()
    std: list[float] = option()
    interpolation: str = option("bicubic", choices=("bicubic", "bilinear"))  # of the resize (files before it: bicubic)
    training: dict[str, Any] = field(default_factory=dict)
    # an incremental head (continual runs): {"kind", "options", "task_sizes"}; None for a timm head
    head: dict[str, Any] | None = None
    # a merged model: the file holds the whole state dict, read as backbone weights
    merged: bool = False

    def to_metadata(self) -> dict[str, str]:
        fields = asdict(self)
        return {
            FORMAT_KEY: FORMAT_VERSION,
            **{k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()},
        }

    def to_json(self) -> dict[str, Any]:
        """The metadata as plain JSON values (what a JSON file beside an export holds)."""
        return {FORMAT_KEY: FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, values: dict[str, Any], source: str) -> CheckpointMeta:
        """Read to_json's values (or, from older exports, the string metadata)."""
        if not isinstance(values, dict):
            raise AdaptError(f"{source} is not adapt's JSON metadata")
        return cls.from_metadata({k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}, source)

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], source: str) -> CheckpointMeta:
        if metadata.get(FORMAT_KEY) is None:
            raise AdaptError(f"{source} is not an adapt checkpoint (no '{FORMAT_KEY}' metadata)")
        if metadata[FORMAT_KEY] != FORMAT_VERSION:
            raise AdaptError(
                f"{source} has checkpoint format {metadata[FORMAT_KEY]}, this adapt reads {FORMAT_VERSION}"
            )
        return cls._parse(metadata, source)

    @classmethod
    def from_merged_metadata(cls, metadata: dict[str, str], source: str) -> CheckpointMeta:
        """The metadata of a merged model (adapt merge, or a soup of merged models)."""
        fields = {"backbone_weights": source, "backbone_sha256": "", "merged": "true", "method_options": "{}",
                  **{k: metadata[k] for k in ("backbone", "class_names", "image_size", "mean", "std", "interpolation",
                                              "training")
                     if k in metadata}}  # fmt: skip
        fields["method"] = "full"  # a merged model is the plain network: every weight is its own
        meta = cls._parse(fields, source)
        meta.training = {**meta.training, "merged_method": metadata.get("method", "unknown")}
        return meta

    @classmethod
    def _parse(cls, metadata: dict[str, str], source: str) -> CheckpointMeta:
        values: dict[str, Any] = {}
        for item in dataclasses.fields(cls):
            if item.name not in metadata:
                if item.default is not dataclasses.MISSING or item.default_factory is not dataclasses.MISSING:
                    continue
                raise AdaptError(f"{source}: metadata field '{item.name}' is missing")
            raw = metadata[item.name]
            try:
                values[item.name] = raw if item.type == "str" else json.loads(raw)
            except (json.JSONDecodeError, RecursionError):
                raise AdaptError(f"{source}: metadata field '{item.name}' is not valid JSON: {raw[:60]!r}") from None
        meta = cls(**values)
        validate(meta, f"{source} metadata")
        if not meta.class_names or len(meta.mean) != 3 or len(meta.std) != 3 or min(meta.std) <= 0:
            raise AdaptError(f"{source} metadata: needs at least one class name, and 3 means and 3 positive stds")
        seed, data = meta.training.get("seed", 0), meta.training.get("data", "")
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED or not isinstance(data, str):
            raise AdaptError(f"{source} metadata: training seed must be a whole number >= 0 and data a string")
        if len(meta.class_names) > MAX_CLASSES:  # the head is sized by them
            raise AdaptError(f"{source} metadata: {len(meta.class_names):,} class names, more than {MAX_CLASSES:,}")
        return meta


def all_finite(tensor: torch.Tensor) -> bool:
    """No NaN or Inf in a float tensor: one min/max reduction (NaN and Inf reach the min or the max),
    about 40 times faster than isfinite().all() and without its boolean copy."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return True
    low, high = torch.aminmax(tensor.detach())
    return bool(torch.isfinite(low)) and bool(torch.isfinite(high))


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], meta: CheckpointMeta) -> None:
    save_tensors_atomic(path, tensors, meta.to_metadata())


# the checkpoint a folder stands for: a hub folder's weights (adapt merge --out DIR/), a run folder's adapter
FOLDER_CHECKPOINTS = ("model.safetensors", "adapter.safetensors")


def checkpoint_file(path: str | Path) -> Path:
    """The file a checkpoint argument names: the file itself, a hub folder's model.safetensors, or a
    run folder's adapter.safetensors, so that every command takes what another one wrote."""
    path = Path(path).expanduser()
    if path.is_dir():
        found = next((path / name for name in FOLDER_CHECKPOINTS if (path / name).is_file()), None)
        if found is None:
            raise AdaptError(f"{path} is a folder without model.safetensors (a hub folder) or adapter.safetensors "
                             "(a run folder)")  # fmt: skip
        return found
    if not path.exists():
        raise AdaptError(f"checkpoint not found: {path}")
    return path


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    """Read and validate an adapter checkpoint or a merged model (format, metadata, finite values);
    `path` may be a hub or run folder (checkpoint_file)."""
    path = checkpoint_file(path)
    tensors, metadata = read_tensors(path)
    return tensors, checked_meta(tensors, metadata, path)


def checked_meta(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: str | Path) -> CheckpointMeta:
    """The metadata of a checkpoint already read (read_tensors), validated with its tensors (dtypes, finite)."""
    if FORMAT_KEY not in metadata and MERGED_KEY in metadata:
        meta = CheckpointMeta.from_merged_metadata(metadata, str(path))
    else:
        meta = CheckpointMeta.from_metadata(metadata, str(path))
    for key, tensor in tensors.items():
        if tensor.dtype not in CHECKPOINT_DTYPES:
            raise AdaptError(f"{path}: tensor '{key}' has dtype {tensor.dtype}, which adapt checkpoints do not use")
        if not all_finite(tensor):
            raise AdaptError(f"{path}: tensor '{key}' has NaN or Inf values")
    return meta
