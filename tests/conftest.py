"""Shared fixtures: small real image folders (VTAB-1k and class-per-folder) made from digits; helpers."""

from __future__ import annotations

import os
from pathlib import Path

import adapt  # noqa: F401  (first: makes timm importable beside the CPU torch, see adapt._compat)
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ADAPT_CACHE_DIR", os.path.join(os.environ.get("TMPDIR", "/tmp"), f"adapt-test-cache-{os.getpid()}"))


def digit_image(index: int) -> Image.Image:
    pixels = (load_digits().images[index] * (255 / 16)).astype(np.uint8)
    return Image.fromarray(pixels).resize((32, 32)).convert("RGB")


def perturb_trainable(model: torch.nn.Module, scale: float) -> None:
    """Move every trainable tensor by scale * N(0, 1), in place: a model "as if trained"."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn_like(p))


def saved_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct tensors autograd keeps for backward in a forward pass, parameters and buffers excluded."""
    storages: dict[int, int] = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(x)
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    return sum(size for pointer, size in storages.items() if pointer not in own)


def _write_images(folder: Path, indices: list[int]) -> list[tuple[str, int]]:
    targets = load_digits().target
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for i in indices:
        path = folder / f"{i}.jpg"
        digit_image(i).save(path)
        written.append((path.name, int(targets[i])))
    return written


@pytest.fixture(scope="session")
def vtab_root(tmp_path_factory) -> Path:
    """Two VTAB-1k-style tasks of digits images: `svhn` (natural) and `eurosat` (specialized)."""
    root = tmp_path_factory.mktemp("vtab")
    for offset, task in enumerate(("svhn", "eurosat")):
        task_dir = root / task
        splits = {"train800": range(0, 40), "val200": range(40, 60), "test": range(60, 100)}
        lines = {}
        for split, indices in splits.items():
            written = _write_images(task_dir / "images" / split, [i + offset * 100 for i in indices])
            lines[split] = [f"images/{split}/{name} {label}" for name, label in written]
        lines["train800val200"] = lines["train800"] + lines["val200"]
        for split, rows in lines.items():
            (task_dir / f"{split}.txt").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="session")
def folder_root(tmp_path_factory) -> Path:
    """folder:PATH layout with 3 classes (digits 0, 1, 2) and train/val/test."""
    root = tmp_path_factory.mktemp("folder")
    targets = load_digits().target
    by_class = {c: [i for i in range(len(targets)) if targets[i] == c][:30] for c in range(3)}
    names = {0: "zero", 1: "one", 2: "two"}
    for c, indices in by_class.items():
        for split, part in (("train", indices[:16]), ("val", indices[16:22]), ("test", indices[22:30])):
            _write_images(root / split / names[c], part)
    return root
