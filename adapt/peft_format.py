"""LoRA checkpoints to and from peft's folder layout (and peft's other tuners' checkpoints to it).

Export builds a real `PeftModel` over the timm backbone (LoRA on our targets, the head in
`modules_to_save`), copies the trained tensors in and lets peft write
`adapter_config.json` + `adapter_model.safetensors`. The base model the adapter belongs
to (the backbone weights it was trained on, which timm cannot build by name when they are
the embedded or a local file) goes into `DIR/base/` as a timm hub folder, and
`base_model_name_or_path` points there, so that
`PeftModel.from_pretrained(timm.create_model("local-dir:DIR/base", pretrained=True), DIR)`
gives our model's outputs. Our checkpoint metadata goes into `adapt.json` (peft ignores
it), so that importing needs nothing else; without it, import asks for the backbone.

An export folder is new or holds only an earlier export (replaced with `overwrite`): nothing
else in it is ever touched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adapt.adapted import AdaptedModel
from adapt.backbones import classifier_prefixes, create_backbone
from adapt.checkpoint import CheckpointMeta, read_tensors, umasked, write_json_atomic
from adapt.config import read_text_file
from adapt.errors import AdaptError, term
from adapt.hub import HUB_FILES, save_hub_folder
from adapt.model_card import model_card
from adapt.methods.lora import ADAPTER, LoRA
from adapt.methods.peft_tuners import PeftTuner
from adapt.outputs import check_owned_folder, exclusive_lock, remove_owned, writing_file

META_FILE = "adapt.json"
PEFT_LOADER = """from pathlib import Path

import adapt  # first: it makes timm importable beside a CPU-only torch (not needed otherwise)
import timm
from peft import PeftModel

# adapter_config.json's base_model_name_or_path is "base": the folder base/ beside it, a timm hub folder of the
# backbone these weights were trained on. peft does not resolve it (it puts the adapter on the model you give),
# so timm builds the base from that folder: nothing is looked up on the network, from any working directory.
folder = Path("{folder}")  # this folder, wherever it is now
base = timm.create_model(f"local-dir:{{folder / 'base'}}", pretrained=True)
model = PeftModel.from_pretrained(base, str(folder))
"""
BASE_FOLDER = "base"
PEFT_PREFIX = "base_model.model."
# everything an export writes (peft adds a model card, README.md)
EXPORT_FILES = ("adapter_config.json", "adapter_model.safetensors", "README.md", META_FILE, BASE_FOLDER)


def _our_key(peft_key: str) -> str:
    """peft's name of a trainable tensor -> the name in our LoRA-injected model."""
    key = peft_key.removeprefix(PEFT_PREFIX)
    return key.replace(f".modules_to_save.{ADAPTER}.", ".")


def _peft_model(backbone: nn.Module, method: LoRA | PeftTuner):
    from peft import get_peft_model

    config = method.peft_config()
    config.modules_to_save = list(classifier_prefixes(backbone))
    return get_peft_model(backbone, config, adapter_name=ADAPTER)


def _copy_trainable(peft_model: nn.Module, ours: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for key, parameter in peft_model.named_parameters():
            if parameter.requires_grad:
                parameter.copy_(ours[_our_key(key)])


def export_peft(checkpoint: str | Path, out_dir: str | Path, weights: str | None = None, overwrite: bool = False,
                command: str | None = None) -> Path:  # fmt: skip
    """Write a LoRA (or DoRA, LoHa, LoKr, IA3, OFT, BOFT, VeRA) checkpoint as a peft adapter folder, with its base model in OUT/base/ and a model card
    (README.md, naming `command`) in place of peft's empty template."""
    out_dir = Path(out_dir).expanduser()
    with exclusive_lock(out_dir):
        check_owned_folder(out_dir, EXPORT_FILES, overwrite, inputs=[checkpoint, weights], folders={BASE_FOLDER: HUB_FILES},
                           marker=META_FILE)  # fmt: skip
        adapted, meta = AdaptedModel.from_checkpoint(checkpoint, weights)
        if not isinstance(adapted.method, (LoRA, PeftTuner)):
            raise AdaptError(f"{checkpoint} holds a {meta.method} adapter; only peft's tuners (lora, dora, loha, lokr, "
                             "ia3, oft, boft, vera) export to the peft layout; export the merged model (--format hub)")
        if getattr(adapted.method, "sliced", None):
            raise AdaptError(f"{checkpoint} adapts row blocks of the fused qkv (qkv_blocks "
                             f"{adapted.method.config.qkv_blocks}), which peft's layers cannot hold; export the "
                             "merged model instead (adapt merge --out DIR/)")  # fmt: skip
        seed = int(meta.training.get("seed", 0))  # random-weight backbones are rebuilt from the run's seed
        backbone, _ = create_backbone(meta.backbone, adapted.backbone.weights, len(meta.class_names), meta.image_size, seed)
        created = not out_dir.exists()
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.resolve().name}.", dir=out_dir))
        try:
            save_hub_folder(staging / BASE_FOLDER, backbone, meta.class_names, meta.image_size, adapted.mean,
                            adapted.std, {"base_of": str(checkpoint), "backbone": meta.backbone},
                            interpolation=adapted.interpolation)  # fmt: skip
            peft_model = _peft_model(backbone, adapted.method)
            _copy_trainable(peft_model, adapted.method.trainable_state(adapted.model))
            # relative to the folder, so that it still names the base once the folder is moved or uploaded
            peft_model.peft_config[ADAPTER].base_model_name_or_path = BASE_FOLDER
            # no embedding layers here: without "auto", peft does not look the base's config.json up (on the Hub,
            # or relative to the working directory)
            peft_model.save_pretrained(staging, save_embedding_layers=False)
            write_json_atomic(staging / META_FILE, meta.to_json())
            trained = adapted.parameter_counts()[0]
            (staging / "README.md").write_text(model_card(meta, trained, PEFT_LOADER.format(folder=out_dir.resolve()), "peft", command))
            for child in staging.iterdir():
                if (out_dir / child.name).exists():
                    remove_owned(out_dir / child.name)  # an earlier export's (checked above)
                if child.is_file():
                    os.chmod(child, umasked(0o666))
                os.replace(child, out_dir / child.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            if created and not any(out_dir.iterdir()):
                out_dir.rmdir()  # failed before writing anything: leave no empty folder behind
    return out_dir


def _from_peft_file_key(key: str) -> str:
    """A key of adapter_model.safetensors -> our name ('…qkv.lora_A.weight' -> '…qkv.lora_A.default.weight')."""
    key = key.removeprefix(PEFT_PREFIX)
    for part in ("lora_A", "lora_B"):
        key = key.replace(f".{part}.", f".{part}.{ADAPTER}.")
    return key


def import_peft(
    folder: str | Path, out: str | Path, backbone: str | None = None, weights: str | None = None, overwrite: bool = False
) -> CheckpointMeta:
    """Read a peft LoRA folder (ours, or another tool's with --backbone) into an adapter checkpoint."""
    folder = Path(folder)
    inputs = [folder / "adapter_model.safetensors", folder / "adapter_config.json", weights]
    with writing_file(out, overwrite, inputs):
        return _import_peft(folder, out, backbone, weights)


def _import_peft(folder: Path, out: str | Path, backbone: str | None, weights: str | None) -> CheckpointMeta:
    from peft import PeftConfig

    for name in ("adapter_config.json", "adapter_model.safetensors"):
        if not (folder / name).is_file():
            raise AdaptError(f"{folder} is not a peft adapter folder: {name} is missing")
    try:
        config = PeftConfig.from_pretrained(str(folder))
    except (ValueError, KeyError, TypeError, OSError) as error:  # json.JSONDecodeError is a ValueError
        raise AdaptError(f"{folder / 'adapter_config.json'} is not a peft config ({str(error).splitlines()[0][:120]})") from None
    if config.peft_type != "LORA":
        raise AdaptError(f"{folder} holds a {config.peft_type} adapter; only LORA imports")
    tensors = {_from_peft_file_key(k): v for k, v in read_tensors(folder / "adapter_model.safetensors")[0].items()}
    meta_file = folder / META_FILE
    if meta_file.is_file():
        try:
            saved = CheckpointMeta.from_json(json.loads(read_text_file(meta_file)), str(meta_file))
        except (json.JSONDecodeError, RecursionError):
            raise AdaptError(f"{meta_file} is not adapt's JSON metadata") from None
        backbone, options = backbone or saved.backbone, saved.method_options
        class_names, image_size, training = saved.class_names, saved.image_size, saved.training
        weights = weights or saved.backbone_weights
    elif backbone is None:
        raise AdaptError(f"{folder} does not say which backbone it adapts (no {META_FILE}); pass {term('backbone')}")
    else:
        saved, targets = None, config.target_modules
        # peft matches a list entry as a whole name or a dotted suffix; a string as a full regex
        pattern = f"^(?:{targets})$" if isinstance(targets, str) else r"(^|\.)(" + "|".join(map(re.escape, sorted(targets))) + ")$"
        options = {"rank": config.r, "alpha": config.lora_alpha, "dropout": config.lora_dropout, "targets": pattern}
        head = [v for k, v in tensors.items() if "lora_" not in k and v.ndim == 2]
        class_names = [str(i) for i in range(head[0].shape[0] if head else 1000)]
        image_size, training = None, {}
    options = {**options, **_rank_and_alpha(config, tensors, folder)}  # adapter_config.json is what peft would use
    adapted = AdaptedModel.create("lora", class_names, image_size, backbone, weights, options)
    if saved is not None and adapted.backbone.sha256 != saved.backbone_sha256:
        raise AdaptError(f"{folder} was trained on other {backbone} weights (sha256 {saved.backbone_sha256[:12]}…)")
    adapted.method.load_trainable_state(adapted.model, tensors, source=f"tensors in {folder}")
    training = {**training, "imported_from": str(folder)}
    adapted.save(out, training)
    return adapted.meta(training)


def _rank_and_alpha(config: Any, tensors: dict[str, torch.Tensor], folder: Path) -> dict[str, Any]:
    """r and lora_alpha from adapter_config.json, checked against the tensors' rank: peft scales each
    delta by lora_alpha / r, so a config that disagrees with its tensors would load to another model."""
    if getattr(config, "rank_pattern", None) or getattr(config, "alpha_pattern", None):
        raise AdaptError(f"{folder / 'adapter_config.json'} sets per-layer ranks or alphas (rank_pattern/alpha_pattern); "
                         "adapt's LoRA has one rank and alpha")  # fmt: skip
    ranks = sorted({int(v.shape[0]) for k, v in tensors.items() if ".lora_A." in k})
    if ranks and ranks != [config.r]:
        raise AdaptError(f"{folder / 'adapter_config.json'} says r={config.r}, but its tensors have rank "
                         f"{', '.join(map(str, ranks))}")  # fmt: skip
    return {"rank": int(config.r), "alpha": float(config.lora_alpha)}
