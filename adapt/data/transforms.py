"""Image -> normalized tensor. Plain resize to a square (the VTAB-1k convention), no crop."""

from __future__ import annotations

from torchvision import transforms


def eval_transform(image_size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> transforms.Compose:
    """PIL image -> float tensor (3, S, S), resized with bicubic interpolation and normalized."""
    return transforms.Compose(
        [
            transforms.Resize((image_size, image_size), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
