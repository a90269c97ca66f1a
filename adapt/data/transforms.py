"""Image -> normalized tensor: a plain resize to a square (the VTAB-1k convention; bicubic unless a run says
bilinear, as V-PETL Bench's test images), no crop.

Built by timm's own `create_transform` from a data config, and that same config is what
`adapt merge --format hub` writes into config.json, so a merged model loaded with plain
timm (`resolve_data_config` + `create_transform`) preprocesses exactly as adapt does.
"""

from __future__ import annotations

from typing import Any

from PIL import Image
from timm.data import auto_augment, create_transform
from torchvision.transforms import InterpolationMode, Resize


def _posterize(img: Image.Image, bits_to_keep: int, **__: Any) -> Image.Image:
    """timm's posterize, with 0 bits kept as Pillow gave it before it refused them (a black image: every
    pixel & ~255). timm's increasing RandAugment (`inc1`, as V-PETL Bench trains with) reaches 0 bits at
    magnitude 10, which current Pillow refuses with "bits must be between 1 and 8", ending the run."""
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return _timm_posterize(img, bits_to_keep)


_timm_posterize = auto_augment.posterize
for _name, _op in list(auto_augment.NAME_TO_OP.items()):
    if _op is _timm_posterize:
        auto_augment.NAME_TO_OP[_name] = _posterize


def data_config(image_size: int, mean: tuple[float, ...], std: tuple[float, ...],
                interpolation: str = "bicubic") -> dict[str, Any]:  # fmt: skip
    """timm's data config for our preprocessing ('squash' at crop_pct 1.0 = resize to S x S)."""
    return {"input_size": (3, image_size, image_size), "interpolation": interpolation, "crop_pct": 1.0,
            "crop_mode": "squash", "mean": tuple(mean), "std": tuple(std)}  # fmt: skip


def eval_transform(image_size: int, mean: tuple[float, ...], std: tuple[float, ...], interpolation: str = "bicubic"):
    """PIL image -> float tensor (3, S, S), resized to S x S with `interpolation` and normalized."""
    return create_transform(**data_config(image_size, mean, std, interpolation), is_training=False)


def train_transform(image_size: int, mean: tuple[float, ...], std: tuple[float, ...], augment: str,
                    crop: str = "random-resized", interpolation: str = "bicubic"):  # fmt: skip
    """The training transform: timm's `create_transform(is_training=True)` (random-resized crop, horizontal
    flip) for augment "on", plus an auto-augment policy when augment is one of timm's policy strings
    ("rand-m9-mstd0.5", "augmix-m5", "trivialaugment", ...); "off" is the eval transform. crop "resize"
    replaces the random-resized crop by a bicubic resize to S x S, as V-PETL Bench does
    (ImageClassification/dataloader/vtab.py L55-65)."""
    from adapt.errors import AdaptError, term

    if augment == "off":
        return eval_transform(image_size, mean, std, interpolation)
    policy = None if augment == "on" else augment
    try:
        pipeline = create_transform(input_size=(3, image_size, image_size), is_training=True, interpolation="bicubic",
                                    mean=tuple(mean), std=tuple(std), auto_augment=policy)  # fmt: skip
    except (AssertionError, ValueError, KeyError, IndexError) as error:
        raise AdaptError(f"{term('augment')} {augment!r} is not on, off or a timm auto-augment policy such as "
                         f"rand-m9-mstd0.5 ({error})") from None
    if crop == "resize":
        pipeline.transforms[0] = Resize((image_size, image_size), interpolation=InterpolationMode.BICUBIC)
    return pipeline
