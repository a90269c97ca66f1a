"""The Hugging Face / timm hub folder: config.json + model.safetensors.

config.json is timm's own (the config writer of `timm.models.save_for_hf`), carrying our
preprocessing (input size, bicubic, crop_pct 1.0, squash, mean, std) and the class names, so
that `timm.create_model("local-dir:DIR", pretrained=True)` with
`timm.data.create_transform(**resolve_data_config(model=m))` reproduces adapt's inputs and
outputs without adapt. model.safetensors is written by us, with `format: pt` (which the
Hugging Face loaders require) and our metadata.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from torch import nn

from adapt.checkpoint import save_tensors_atomic, umasked
from adapt.data.transforms import data_config

HUB_FILES = ("config.json", "model.safetensors", "README.md")  # README.md: the model card, when there is one


def save_hub_folder(
    folder: str | Path,
    model: nn.Module,
    class_names: list[str],
    image_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    metadata: dict[str, str],
    card: str | None = None,
    interpolation: str = "bicubic",
) -> Path:
    """Write `model` as a hub folder, with `card` as its README.md; each file appears whole (written aside,
    then renamed)."""
    # the config half of timm's save_for_hf (which would also write the weights, without our metadata)
    from timm.models._hub import save_config_for_hf

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder))
    try:
        save_config_for_hf(model, str(staging / "config.json"), model_config={"label_names": list(class_names)},
                           data_config=data_config(image_size, mean, std, interpolation))  # fmt: skip
        save_tensors_atomic(staging / "model.safetensors", model.state_dict(), metadata)  # written once
        if card is not None:
            (staging / "README.md").write_text(card, encoding="utf-8")
        for name in (name for name in HUB_FILES if (staging / name).exists()):
            os.chmod(staging / name, umasked(0o666))
            os.replace(staging / name, folder / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
