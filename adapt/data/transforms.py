"""Image -> normalized tensor: a plain bicubic resize to a square (the VTAB-1k convention), no crop.

Built by timm's own `create_transform` from a data config, and that same config is what
`adapt merge --format hub` writes into config.json, so a merged model loaded with plain
timm (`resolve_data_config` + `create_transform`) preprocesses exactly as adapt does.
"""

from __future__ import annotations

from typing import Any

from timm.data import create_transform


def data_config(image_size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> dict[str, Any]:
    """timm's data config for our preprocessing ('squash' at crop_pct 1.0 = resize to S x S)."""
    return {"input_size": (3, image_size, image_size), "interpolation": "bicubic", "crop_pct": 1.0,
            "crop_mode": "squash", "mean": tuple(mean), "std": tuple(std)}  # fmt: skip


def eval_transform(image_size: int, mean: tuple[float, ...], std: tuple[float, ...]):
    """PIL image -> float tensor (3, S, S), resized with bicubic interpolation and normalized."""
    return create_transform(**data_config(image_size, mean, std), is_training=False)


def train_transform(image_size: int, mean: tuple[float, ...], std: tuple[float, ...], augment: str):
    """The training transform: timm's `create_transform(is_training=True)` (random-resized crop, horizontal
    flip) for augment "on", plus an auto-augment policy when augment is one of timm's policy strings
    ("rand-m9-mstd0.5", "augmix-m5", "trivialaugment", ...); "off" is the eval transform."""
    from adapt.errors import AdaptError, term

    if augment == "off":
        return eval_transform(image_size, mean, std)
    policy = None if augment == "on" else augment
    try:
        return create_transform(input_size=(3, image_size, image_size), is_training=True, interpolation="bicubic",
                                mean=tuple(mean), std=tuple(std), auto_augment=policy)  # fmt: skip
    except (AssertionError, ValueError, KeyError, IndexError) as error:
        raise AdaptError(f"{term('augment')} {augment!r} is not on, off or a timm auto-augment policy such as "
                         f"rand-m9-mstd0.5 ({error})") from None
