"""A dataset over (image file, label) pairs, checked before training starts."""

from __future__ import annotations

import stat
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from adapt.errors import AdaptError


IMAGE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def require_regular_file(path: Path) -> None:
    """Only regular files are opened: a FIFO or a device named like an image would block or never end."""
    try:
        mode = Path(path).stat().st_mode
    except FileNotFoundError:
        raise AdaptError(f"image not found: {path}") from None
    except OSError as error:
        raise AdaptError(f"cannot read image {path}: {error.strerror}") from None
    if not stat.S_ISREG(mode):
        raise AdaptError(f"{path} is not a regular file (a folder, FIFO or device); images must be files")


def open_rgb(path: Path) -> Image.Image:
    """Decode an image file to RGB, or say which file could not be read (PIL's size limit included)."""
    require_regular_file(path)
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except IMAGE_ERRORS as error:
        raise AdaptError(f"unreadable image {path}: {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


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
        require_regular_file(path)
        try:
            with Image.open(path) as image:
                image.verify()
        except IMAGE_ERRORS as error:
            raise AdaptError(f"unreadable image {path}: {_first_line(error)}") from None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[index]
        return self.transform(open_rgb(path)), label
