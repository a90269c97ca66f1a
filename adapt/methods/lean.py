"""Frozen layers that keep no activation they do not need for backward.

Every method's frozen BatchNorms (with timm's ReLU/ReLU6 or no activation) and frozen convs run
through adapt.kernels' lean autograd nodes: a BatchNorm keeps only its output (or nothing),
a conv nothing but its weight, and the last norm of a residual block (timm's InvertedResidual,
DepthwiseSeparableConv) not even its output: the block's sum minus its input gives it back. Values and gradients are the plain layers' (tested to 1e-6).
They are mixins (adapt.methods.mixins), given before a method adds its own, so a method's
layers (SSF's re-parameterized affine, SPT's parametrized deltas and structured modules, peft's
LoRA around a base conv) run on top of them; the parameters and state-dict keys stay the
plain layers', and merging gives the plain classes back.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual
from torch import nn
from torch.nn.utils import parametrize

from adapt.kernels.frozen_batchnorm import frozen_batchnorm_act, keeps_output, lean_activation
from adapt.kernels.frozen_conv import frozen_conv2d, is_frozen, runs_frozen
from adapt.kernels.residual_output import OutputFromResidual
from adapt.methods.mixins import with_mixin, without_mixin
from adapt.methods.norms import FrozenStatistics


class LeanBatchNorm:
    """Mixin over a BatchNorm2d with frozen statistics (and timm's BatchNormAct2d): one node, keeping only
    what its backward reads, whatever trains its affine (nothing, BitFit, SSF's re-parameterized affine,
    SPT's deltas)."""

    residual: OutputFromResidual | None = None  # set by its block (LeanResidualBlock) during the block's forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        clip = lean_activation(self)
        if clip is None or not torch.is_grad_enabled():
            return super().forward(x)
        weight, bias = self.weight, self.bias  # computed once: SSF's and SPT's are
        recovered = self.residual is not None and clip == (None, None) and keeps_output(weight, clip)
        with self.residual.saving_no_output(x) if recovered else nullcontext():
            return frozen_batchnorm_act(x, self, weight, bias, clip)


class LeanResidualBlock:
    """Mixin over timm's InvertedResidual / DepthwiseSeparableConv with a skip: its last norm keeps no output
    (adapt.kernels.residual_output); the block hands that norm its sum and input instead. timm's forward runs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.bn3 if hasattr(self, "bn3") else self.bn2
        if not (self.has_skip and isinstance(self.drop_path, nn.Identity) and isinstance(norm, LeanBatchNorm)
                and torch.is_grad_enabled()):  # fmt: skip
            return super().forward(x)
        norm.residual = recovery = OutputFromResidual()
        try:
            out = super().forward(x)
        finally:
            del norm.residual  # back to the class's None
        recovery.fill(out, x)
        return out


class FrozenConv:
    """Mixin over nn.Conv2d / timm's Conv2dSame: while nothing of it trains, its forward keeps nothing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() or not is_frozen(self):  # a method or a user may train it
            return super().forward(x)
        return frozen_conv2d(self, x)


LEAN_MIXINS = (LeanBatchNorm, FrozenConv, LeanResidualBlock)


def keep_frozen_layers_lean(model: nn.Module) -> int:
    """Give `model`'s BatchNorm2ds with frozen statistics and its plain convs the lean forwards; returns
    how many layers. Call it after freezing the statistics and before a method changes layers."""
    layers = 0
    for module in model.modules():
        if parametrize.is_parametrized(module):
            continue
        if isinstance(module, nn.BatchNorm2d) and isinstance(module, FrozenStatistics):
            with_mixin(module, LeanBatchNorm)
            layers += 1
        elif runs_frozen(module):
            with_mixin(module, FrozenConv)
            layers += 1
        elif isinstance(module, (InvertedResidual, DepthwiseSeparableConv)):
            with_mixin(module, LeanResidualBlock)
    return layers


def without_lean_layers(model: nn.Module) -> None:
    """The plain layers' forwards again (a reference for tests and benchmarks); parametrized layers,
    whose class a parametrization owns, keep theirs."""
    for module in model.modules():
        if not parametrize.is_parametrized(module):
            for mixin in LEAN_MIXINS:
                without_mixin(module, mixin)
