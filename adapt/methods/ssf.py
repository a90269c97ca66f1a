"""SSF: Scaling & Shifting your Features (Lian et al., NeurIPS 2022).

After each operation of the frozen network, SSF inserts y = scale * x + shift per
channel (scale ~ N(1, 0.02), shift ~ N(0, 0.02)). We place it after every Linear,
Conv and normalization layer outside the head; on a timm ViT that is exactly the
paper's set (patch embed, qkv, attn proj, norm1, norm2, fc1, fc2, final norm: 205,824
parameters on ViT-B/16). For timm's fused norm+activation layers (BatchNormAct2d and
kin) the SSF goes between the norm and the activation, so that it stays linear next
to the norm and can be folded into it.

The `ScaleShift` lives on the layer it follows (`<layer>.ssf`), so the backbone's own
parameter names never change; how it joins that layer without costing training memory is
in adapt.methods.ssf_layers.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections import Counter
from collections.abc import Callable

import torch
from timm.layers import LayerNorm2d
from torch import nn

from adapt.backbones import is_head_key
from adapt.config import option
from adapt.errors import AdaptError
from adapt.kernels import scale_shift_
from adapt.kernels.frozen_batchnorm import lean_activation
from adapt.methods.base import Method
from adapt.methods.lean import LeanBatchNorm
from adapt.methods.mixins import plain_class, with_mixin, without_mixin
from adapt.methods.ssf_layers import CHANNELS_FIRST, CHANNELS_LAST, ScaledAffine, ScaleShift, ScaleShiftLinear


def ssf_site(module: nn.Module) -> tuple[int, int] | None:
    """(channels, channel_dim) when SSF belongs after this layer, else None."""
    if isinstance(module, nn.Linear):
        return module.out_features, CHANNELS_LAST
    if isinstance(module, nn.modules.conv._ConvNd):
        # A bias-free conv feeds a norm in timm's CNNs: SSF there would repeat the norm's
        # own SSF (per-channel affines compose), and under frozen BatchNorm statistics a
        # shift before the norm is amplified by 1/sigma. The norm's SSF covers it.
        return (module.out_channels, CHANNELS_FIRST) if module.bias is not None else None
    if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
        return module.num_features, CHANNELS_FIRST
    if isinstance(module, nn.GroupNorm):
        return module.num_channels, CHANNELS_FIRST
    if isinstance(module, LayerNorm2d):
        return module.normalized_shape[0], CHANNELS_FIRST
    if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1:
        return module.normalized_shape[0], CHANNELS_LAST
    return None


def has_fused_activation(module: nn.Module) -> bool:
    """timm's norm+act layers (BatchNormAct2d, GroupNormAct, ...) apply `.act` inside forward."""
    return isinstance(getattr(module, "act", None), nn.Module) and ssf_site(module) is not None


def fused_join(layer: nn.Module) -> type | None:
    """The mixin that runs `layer` and its SSF as one op (ssf_layers), or None for a hook."""
    if isinstance(layer, nn.Linear):
        return ScaleShiftLinear
    has_affine = getattr(layer, "weight", None) is not None and getattr(layer, "bias", None) is not None
    if has_affine and not isinstance(layer, nn.modules.conv._ConvNd):
        return ScaledAffine
    return None


def _join_label(layer: nn.Module, join: type) -> str:
    """How `adapt tune` describes a layer that runs with its SSF as one op."""
    if join is not ScaledAffine:
        return ""
    if isinstance(layer, LeanBatchNorm) and lean_activation(layer) is not None:
        return " (in its affine, one node with its frozen statistics and activation)"
    return " (in its affine)"


def fold_ssf_(layer: nn.Module, name: str) -> None:
    """Fold `layer.ssf` into the layer's own weight and bias, in place.

    For a Linear/Conv (W x + b) and for a norm's affine (w * x_hat + b) alike:
    weight <- diag(scale) weight, bias <- scale * bias + shift.
    """
    if getattr(layer, "weight", None) is None or getattr(layer, "bias", None) is None:
        raise AdaptError(f"cannot fold SSF into {name}: {type(layer).__name__} has no weight and bias to absorb it")
    with torch.no_grad():
        scale_shift_(layer.weight, layer.bias, layer.ssf.scale, layer.ssf.shift)


@dataclasses.dataclass
class SSFConfig:
    init_std: float = option(0.02, low=0, high=1)  # scale ~ N(1, init_std), shift ~ N(0, init_std)
    targets: str | None = option(None, regex=True)  # regex on layer names; None: every Linear/Conv/Norm outside the head


class SSF(Method):
    name = "ssf"
    summary = "per-channel scale & shift after every linear/conv/norm layer (Lian et al. 2022)"
    config_class = SSFConfig
    mergeable = True
    default_lr = 3e-3

    def __init__(self, config: SSFConfig | None = None):
        super().__init__(config)
        self.wrapped: dict[str, str] = {}  # layer name -> kind, filled by apply
        self._detach: dict[str, Callable[[], None]] = {}  # layer name -> what unhooks its SSF (mixin or hook)

    def add_trainable(self, model: nn.Module) -> None:
        pattern = re.compile(self.config.targets) if self.config.targets else None
        for layer_name, layer in list(model.named_modules()):
            site = ssf_site(layer)
            if site is None or not layer_name or is_head_key(model, layer_name):
                continue
            if pattern and not pattern.search(layer_name):
                continue
            layer.ssf = ScaleShift(*site, init_std=self.config.init_std)
            join = fused_join(layer)
            if join is not None:
                with_mixin(layer, join)
                self._detach[layer_name] = functools.partial(without_mixin, layer, join)
                self.wrapped[layer_name] = plain_class(layer).__name__ + _join_label(layer, join)
            elif has_fused_activation(layer):
                self._detach[layer_name] = layer.act.register_forward_pre_hook(layer.ssf.before_input).remove
                self.wrapped[layer_name] = f"{plain_class(layer).__name__} (before its activation)"
            else:
                self._detach[layer_name] = layer.register_forward_hook(layer.ssf.after_output).remove
                self.wrapped[layer_name] = plain_class(layer).__name__  # not the lean mixins' class name
        if pattern and not self.wrapped:  # else only the head would train, under SSF's name
            raise AdaptError(f"ssf targets {self.config.targets!r} match no linear, conv or norm layer of this model")

    def fold(self, model: nn.Module) -> nn.Module:
        """Fold every SSF into the layer it follows and remove it (see `fold_ssf_`). The layer is plain
        again first: a re-parameterized affine would otherwise be read in place of its own."""
        for layer_name, detach in self._detach.items():
            layer = model.get_submodule(layer_name)
            detach()
            fold_ssf_(layer, layer_name)
            del layer.ssf
        self._detach.clear()
        return model

    def report(self) -> str:
        counts = Counter(self.wrapped.values())
        return f"SSF after {len(self.wrapped)} layers: " + ", ".join(f"{n} {kind}" for kind, n in counts.most_common())
