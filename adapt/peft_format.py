"""LoRA checkpoints to and from peft's folder layout.

Export builds a real `PeftModel` over the timm backbone (LoRA on our targets, the head in
`modules_to_save`), copies the trained tensors in and lets peft write
`adapter_config.json` + `adapter_model.safetensors`, so that
`PeftModel.from_pretrained(timm.create_model(NAME, num_classes=K), DIR)` gives our
model's outputs. Our checkpoint metadata goes beside them in `adapt.json` (peft ignores
it), so that importing needs nothing else; without it, import asks for the backbone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from adapt.adapted import AdaptedModel
from adapt.backbones import classifier_prefixes, create_backbone
from adapt.checkpoint import CheckpointMeta, read_tensors, umasked, write_json_atomic
from adapt.errors import AdaptError
from adapt.methods.lora import ADAPTER, LoRA

META_FILE = "adapt.json"
PEFT_PREFIX = "base_model.model."


def _our_key(peft_key: str) -> str:
    """peft's name of a trainable tensor -> the name in our LoRA-injected model."""
    key = peft_key.removeprefix(PEFT_PREFIX)
    return key.replace(f".modules_to_save.{ADAPTER}.", ".")


def _peft_model(backbone: nn.Module, method: LoRA):
    from peft import get_peft_model

    config = method.peft_config()
    config.modules_to_save = list(classifier_prefixes(backbone))
    return get_peft_model(backbone, config, adapter_name=ADAPTER)


def _copy_trainable(peft_model: nn.Module, ours: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for key, parameter in peft_model.named_parameters():
            if parameter.requires_grad:
                parameter.copy_(ours[_our_key(key)])


def export_peft(checkpoint: str | Path, out_dir: str | Path, weights: str | None = None) -> Path:
    adapted, meta = AdaptedModel.from_checkpoint(checkpoint, weights)
    if not isinstance(adapted.method, LoRA):
        raise AdaptError(f"{checkpoint} holds a {meta.method} adapter; only lora exports to the peft layout")
    backbone, _ = create_backbone(meta.backbone, adapted.backbone.weights, len(meta.class_names), meta.image_size)
    peft_model = _peft_model(backbone, adapted.method)
    _copy_trainable(peft_model, adapted.method.trainable_state(adapted.model))
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        peft_model.save_pretrained(staging)
        write_json_atomic(staging / META_FILE, meta.to_metadata())
        os.chmod(staging, umasked(0o777))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _from_peft_file_key(key: str) -> str:
    """A key of adapter_model.safetensors -> our name ('…qkv.lora_A.weight' -> '…qkv.lora_A.default.weight')."""
    key = key.removeprefix(PEFT_PREFIX)
    for part in ("lora_A", "lora_B"):
        key = key.replace(f".{part}.", f".{part}.{ADAPTER}.")
    return key


def import_peft(folder: str | Path, out: str | Path, backbone: str | None = None, weights: str | None = None) -> CheckpointMeta:
    """Read a peft LoRA folder (ours, or another tool's with --backbone) into an adapter checkpoint."""
    from peft import PeftConfig

    folder = Path(folder)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        if not (folder / name).is_file():
            raise AdaptError(f"{folder} is not a peft adapter folder: {name} is missing")
    config = PeftConfig.from_pretrained(str(folder))
    if config.peft_type != "LORA":
        raise AdaptError(f"{folder} holds a {config.peft_type} adapter; only LORA imports")
    tensors = {_from_peft_file_key(k): v for k, v in read_tensors(folder / "adapter_model.safetensors")[0].items()}
    meta_file = folder / META_FILE
    if meta_file.is_file():
        saved = CheckpointMeta.from_metadata(json.loads(meta_file.read_text()), str(meta_file))
        backbone, options = backbone or saved.backbone, saved.method_options
        class_names, image_size, training = saved.class_names, saved.image_size, saved.training
        weights = weights or saved.backbone_weights
    elif backbone is None:
        raise AdaptError(f"{folder} does not say which backbone it adapts (no {META_FILE}); pass --backbone")
    else:
        saved, targets = None, config.target_modules
        # peft matches a list entry as a whole name or a dotted suffix; a string as a full regex
        pattern = f"^(?:{targets})$" if isinstance(targets, str) else r"(^|\.)(" + "|".join(map(re.escape, sorted(targets))) + ")$"
        options = {"rank": config.r, "alpha": config.lora_alpha, "dropout": config.lora_dropout, "targets": pattern}
        head = [v for k, v in tensors.items() if "lora_" not in k and v.ndim == 2]
        class_names = [str(i) for i in range(head[0].shape[0] if head else 1000)]
        image_size, training = None, {}
    adapted = AdaptedModel.create("lora", class_names, image_size, backbone, weights, options)
    if saved is not None and adapted.backbone.sha256 != saved.backbone_sha256:
        raise AdaptError(f"{folder} was trained on other {backbone} weights (sha256 {saved.backbone_sha256[:12]}…)")
    adapted.method.load_trainable_state(adapted.model, tensors, source=f"tensors in {folder}")
    training = {**training, "imported_from": str(folder)}
    adapted.save(out, training)
    return adapted.meta(training)
