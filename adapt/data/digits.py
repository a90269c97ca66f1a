"""The bundled sklearn digits (1,797 8x8 images, 10 classes) as a small real dataset.

The split is fixed (stratified, random_state 0): 60% train, 20% val, 20% test. Images
are upsampled once to the model's input size and kept in memory as uint8.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


class NormalizedTensorDataset(Dataset):
    """uint8 images (N, 3, S, S) normalized on access."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]):
        self.images = images
        self.targets = labels.tolist()
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index].float() / 255.0
        return (image - self.mean) / self.std, self.targets[index]


def digits_images(image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as uint8 RGB (N, 3, S, S) and their labels."""
    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    return images, torch.tensor(bunch.target, dtype=torch.long)


def digits_splits(image_size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> dict[str, Dataset]:
    images, labels = digits_images(image_size)
    index = torch.arange(len(labels)).numpy()
    train, rest = train_test_split(index, test_size=0.4, stratify=labels.numpy(), random_state=0)
    val, test = train_test_split(rest, test_size=0.5, stratify=labels.numpy()[rest], random_state=0)
    return {
        name: NormalizedTensorDataset(images[idx], labels[idx], mean, std)
        for name, idx in (("train", train), ("val", val), ("test", test))
    }
