"""Datasets by spec: `digits`, `folder:PATH`, `vtab:ROOT/TASK` (and `vtab:ROOT` for all tasks)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from adapt.config import bounded_image_size
from adapt.data.digits import DIGIT_NAMES, digits_splits
from adapt.data.folder import folder_splits
from adapt.data.transforms import eval_transform, train_transform
from adapt.data.vtab import find_vtab_tasks, vtab_split, vtab_splits
from adapt.errors import AdaptError, term

DEFAULT_DATA = "digits"
DIGITS_IMAGE_SIZE = 96  # the 8x8 digits gain nothing from 224 px, and 96 px is ~5x cheaper


@dataclass
class DataSplits:
    """A task's splits. `val` is optional; `test_name` says which file/split `test` is."""

    spec: str
    name: str
    class_names: list[str]
    train: Dataset
    val: Dataset | None
    test: Dataset
    test_name: str = "test"
    note: str = ""  # how the splits were made, when not as found on disk
    train_plain: Dataset | None = None  # train's images through the test transform, when train augments
    augment: str = "off"  # the training transform used: "off", "on" or an auto-augment policy
    # VTAB-1k's train800 through the test transform when the run trains on train800val200: the split the
    # official SPT scores sensitivity on (its sensitivity configs pass no --test)
    tuning_train: Dataset | None = None
    # `val` is part of `train` (VTAB-1k's val200 under the final protocol, which trains on train800val200): it
    # chooses a soup's weights or lambda as the official merging code does, but does not score training epochs
    val_in_train: bool = False
    limit: int | None = None  # every split is a seeded choice of at most this many images (--limit)

    @property
    def unaugmented_train(self) -> Dataset:
        """The training images as the test transform gives them (for class means, herding, sensitivity)."""
        return self.train_plain if self.train_plain is not None else self.train

    @property
    def held_out_val(self) -> Dataset | None:
        """The val split when training does not see it (what scores each epoch), else None."""
        return None if self.val_in_train else self.val

    @property
    def tuning_images(self) -> Dataset:
        """The unaugmented training images of the tuning protocol (VTAB-1k: train800), else the run's."""
        return self.tuning_train if self.tuning_train is not None else self.unaugmented_train

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def parse_spec(spec: str) -> tuple[str, Path | None]:
    kind, _, rest = spec.partition(":")
    if kind == "digits" and not rest:
        return kind, None
    if kind in ("folder", "vtab") and rest:
        return kind, Path(rest).expanduser()
    raise AdaptError(f"unknown data spec {spec!r}: use digits, folder:PATH or vtab:ROOT[/TASK]")


def expand_spec(spec: str) -> list[str]:
    """`vtab:ROOT` with several task folders becomes one spec per task; others stay as they are."""
    kind, path = parse_spec(spec)
    if kind != "vtab":
        return [spec]
    return [f"vtab:{task}" for task in find_vtab_tasks(path)]


def image_size_for(spec: str, given: int | None, backbone_size: int) -> int:
    """The image size a run uses: the one given (within adapt.config's bound, wherever it came from),
    else 96 for the digits, else the backbone's."""
    if given is not None:
        return bounded_image_size(given, "image_size")
    return DIGITS_IMAGE_SIZE if parse_spec(spec)[0] == "digits" else backbone_size


def _limited(dataset: Dataset, limit: int | None, seed: int) -> Dataset:
    """At most `limit` items, a seeded random choice (for quick checks)."""
    if limit is None or limit >= len(dataset):
        return dataset
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return Subset(dataset, order[:limit].tolist())


def load_data(
    spec: str,
    image_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    split_protocol: str = "final",
    limit: int | None = None,
    seed: int = 0,
    augment: str | None = None,
    interpolation: str = "bicubic",
    train_crop: str = "random-resized",
) -> DataSplits:
    """Load one task. `limit` caps every split (a seeded subset) for quick runs.

    augment: the training transform (adapt.data.transforms.train_transform): "on", "off" or an
    auto-augment policy; None means on for folder: data and off for the VTAB-1k protocol and digits.
    interpolation: of every resize but an augmented training image's; train_crop: how that one is sized."""
    kind, path = parse_spec(spec)
    if augment not in (None, "off") and kind == "digits":
        raise AdaptError(f"{term('augment')} applies to image files (folder:, vtab:); the digits are 8x8 drawings held in memory")
    augment = augment or ("on" if kind == "folder" else "off")
    test_name, note = "test", ""
    if kind == "digits":
        splits, class_names = digits_splits(image_size, mean, std), list(DIGIT_NAMES)
        name, note = "digits", "val and test are the digits' fixed stratified split (60% train, 20% val, 20% test)"
    elif kind == "folder":
        class_names, splits, note = folder_splits(path, eval_transform(image_size, mean, std, interpolation), seed)
        name = path.name
    else:
        tasks = find_vtab_tasks(path)
        if len(tasks) > 1:
            raise AdaptError(f"{path} holds {len(tasks)} VTAB tasks; pick one (vtab:{tasks[0]})")
        plain = eval_transform(image_size, mean, std, interpolation)
        class_names, splits = vtab_splits(tasks[0], split_protocol, plain)
        if split_protocol == "final":  # train800val200 trains; its two parts serve SPT's sensitivity and soups
            for key, split in (("tuning_train", "train800"), ("val", "val200")):
                if (tasks[0] / f"{split}.txt").is_file():
                    splits[key] = vtab_split(tasks[0], split, len(class_names), plain)
        name = tasks[0].name
        test_name = "test" if split_protocol == "final" else "val200"
    plain = None
    if augment != "off":
        plain = copy.copy(splits["train"])  # the same images, still with the test transform
        splits["train"].transform = train_transform(image_size, mean, std, augment, train_crop, interpolation)
    val = splits.get("val")
    return DataSplits(
        spec=spec,
        name=name,
        class_names=class_names,
        train=_limited(splits["train"], limit, seed),
        val=_limited(val, limit, seed) if val is not None else None,
        test=_limited(splits["test"], limit, seed),
        test_name=test_name,
        note=note,
        train_plain=_limited(plain, limit, seed) if plain is not None else None,  # the same seeded choice as train
        augment=augment,
        tuning_train=_limited(splits["tuning_train"], limit, seed) if "tuning_train" in splits else None,
        val_in_train=kind == "vtab" and split_protocol == "final",
        limit=limit,
    )
