"""`folder:PATH`: PATH/{train,val,test}/<class name>/<image>; val and test are optional.

Without test/, a seeded stratified fifth of each class's train images becomes the test
split (and the data says so), so that a folder of labelled images is enough to start.
"""

from __future__ import annotations

import random
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


TEST_SHARE = 0.2  # of each class's train images, when there is no test/


def held_out_split(items: list[tuple[Path, int]], share: float, seed: int) -> tuple[list, list]:
    """(kept, held out): a seeded share of each class's items (at least one of a class with two or more)."""
    generator = random.Random(seed)
    kept, held = [], []
    for label in sorted({label for _, label in items}):
        members = [item for item in items if item[1] == label]
        generator.shuffle(members)
        count = max(1, round(share * len(members))) if len(members) > 1 else 0
        held += members[:count]
        kept += members[count:]
    return kept, held


def folder_splits(root: Path, transform: Callable, seed: int = 0) -> tuple[list[str], dict[str, ImageListDataset], str]:
    """Class names, the splits, and a note when the test split was made from train."""
    if not root.is_dir():
        raise AdaptError(f"data folder not found: {root}")
    if not (root / "train").is_dir():
        raise AdaptError(f"data folder {root} has no train/ subfolder (expected train/, and optionally val/ and test/)")
    class_names = [p.name for p in _class_folders(root / "train")]
    if not class_names:
        raise AdaptError(f"no class folders in {root / 'train'}")
    items = {split: _items(root / split, class_names) for split in ("train", "val", "test") if (root / split).is_dir()}
    empty = sorted(set(class_names) - {class_names[label] for _, label in items["train"]})
    if empty:  # the head would get an output that no image ever trains
        raise AdaptError(f"class folder(s) with no images in {root / 'train'}: {', '.join(empty[:5])}")
    note = ""
    if "test" not in items:
        items["train"], items["test"] = held_out_split(items["train"], TEST_SHARE, seed)
        note = (f"{root} has no test/: a seeded stratified {TEST_SHARE:.0%} of each class's train images "
                f"({len(items['test'])}) is the test split")  # fmt: skip
    splits = {split: ImageListDataset(found, len(class_names), transform, str(root / split)) for split, found in items.items()}
    return class_names, splits, note
