"""`folder:PATH`: PATH/{train,val,test}/<class name>/<image>; val is optional."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from adapt.data.images import ImageListDataset
from adapt.errors import AdaptError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def _class_folders(split_dir: Path) -> list[Path]:
    return sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _items(split_dir: Path, class_names: list[str]) -> list[tuple[Path, int]]:
    items = []
    for folder in _class_folders(split_dir):
        if folder.name not in class_names:
            raise AdaptError(f"class folder {folder} is not among the classes of the train split")
        label = class_names.index(folder.name)
        items += [(p, label) for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    return items


def folder_splits(root: Path, transform: Callable) -> tuple[list[str], dict[str, ImageListDataset]]:
    if not root.is_dir():
        raise AdaptError(f"data folder not found: {root}")
    for required in ("train", "test"):
        if not (root / required).is_dir():
            raise AdaptError(f"data folder {root} has no {required}/ subfolder (expected train/, val/, test/)")
    class_names = [p.name for p in _class_folders(root / "train")]
    if not class_names:
        raise AdaptError(f"no class folders in {root / 'train'}")
    splits = {}
    for split in ("train", "val", "test"):
        if (root / split).is_dir():
            items = _items(root / split, class_names)
            if split == "train":
                empty = sorted(set(class_names) - {class_names[label] for _, label in items})
                if empty:  # the head would get an output that no image ever trains
                    raise AdaptError(f"class folder(s) with no images in {root / 'train'}: {', '.join(empty[:5])}")
            splits[split] = ImageListDataset(items, len(class_names), transform, str(root / split))
    return class_names, splits
