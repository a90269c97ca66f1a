"""A dataset over (image file, label) pairs, checked before training starts."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from adapt.errors import AdaptError


def open_rgb(path: Path) -> Image.Image:
    """Decode an image file to RGB, or say which file could not be read."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise AdaptError(f"unreadable image {path}: {error}") from None


class ImageListDataset(Dataset):
    """Images listed with their labels; every file is checked (header) up front."""

    def __init__(
        self,
        items: Sequence[tuple[Path, int]],
        num_classes: int,
        transform: Callable[[Image.Image], torch.Tensor],
        source: str,
    ):
        if not items:
            raise AdaptError(f"no images in {source}")
        for path, label in items:
            if not 0 <= label < num_classes:
                raise AdaptError(f"label {label} of {path} is out of range 0..{num_classes - 1} ({source})")
            self._check_header(path)
        self.items = list(items)
        self.targets = [label for _, label in self.items]
        self.transform = transform

    @staticmethod
    def _check_header(path: Path) -> None:
        try:
            with Image.open(path) as image:
                image.verify()
        except FileNotFoundError:
            raise AdaptError(f"image not found: {path}") from None
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
            raise AdaptError(f"unreadable image {path}: {error}") from None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[index]
        return self.transform(open_rgb(path)), label
