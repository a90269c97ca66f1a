"""SSF's layers: the per-channel scale & shift, and the ways it joins the layer it follows.

Training memory is the point of SSF, so it never keeps an activation the frozen network
would not keep:
- a norm with an affine (BatchNorm, LayerNorm, GroupNorm, ...) trains the re-parameterized
  affine (weight * scale, bias * scale + shift) inside its own single norm call
  (`ScaledAffine`); a BatchNorm with frozen statistics (with timm's ReLU/ReLU6 or no
  activation) runs that call as one autograd node that keeps only its output
  (adapt.kernels.frozen_batchnorm, which every method's frozen BatchNorm uses);
- a Linear runs `scale_shift_linear`, which saves only its output (shared with whatever reads
  it next) and recovers the pre-SSF values from it in backward;
- anything else (a conv with a bias, a norm without affine) applies the ScaleShift in a
  forward hook, which autograd handles like any multiply-add.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CHANNELS_FIRST = 1
CHANNELS_LAST = -1


class ScaleShift(nn.Module):
    """Per-channel y = scale * x + shift along `channel_dim` (1 for NCHW, -1 for tokens)."""

    def __init__(self, channels: int, channel_dim: int, init_std: float = 0.02):
        super().__init__()
        self.channel_dim = channel_dim
        self.scale = nn.Parameter(torch.empty(channels).normal_(1.0, init_std))
        self.shift = nn.Parameter(torch.empty(channels).normal_(0.0, init_std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channel_dim == CHANNELS_LAST:
            return x * self.scale + self.shift
        shape = [1] * x.ndim
        shape[self.channel_dim] = -1
        return x * self.scale.view(shape) + self.shift.view(shape)

    def after_output(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        """Forward hook: scale and shift what the layer returned."""
        return self(output)

    def before_input(self, module: nn.Module, args: tuple) -> tuple:
        """Forward pre-hook on a fused norm's activation: scale and shift what it receives."""
        return (self(args[0]), *args[1:])

    def extra_repr(self) -> str:
        return f"channels={self.scale.numel()}, channel_dim={self.channel_dim}"


class ScaledAffine:
    """Mixin over a norm class: its forward reads `weight` and `bias`, which here are the
    frozen affine re-parameterized by the layer's `ssf`. The state dict keeps the plain
    tensors (a class property is found before nn.Module's parameter lookup)."""

    ssf: ScaleShift

    @property
    def weight(self) -> torch.Tensor:
        return self._parameters["weight"] * self.ssf.scale

    @property
    def bias(self) -> torch.Tensor:
        return self._parameters["bias"] * self.ssf.scale + self.ssf.shift


class _ScaleShiftLinear(torch.autograd.Function):
    """y = scale * (x W^T + b) + shift for a frozen W, b. Backward needs W, scale, shift and y
    only: the input gradient is (g * scale) W, and scale's is sum(g * (y - shift)) / scale.
    While some scale is exactly 0 (y forgets z there) it saves z = x W^T + b instead."""

    @staticmethod
    def forward(ctx, x, weight, bias, scale, shift):
        z = F.linear(x, weight, bias)
        y = z * scale.to(z.dtype) + shift.to(z.dtype)
        ctx.from_output = bool((scale != 0).all())
        ctx.save_for_backward(y if ctx.from_output else z, weight, scale, shift)
        return y

    @staticmethod
    def backward(ctx, grad):
        saved, weight, scale, shift = ctx.saved_tensors
        dims = tuple(range(grad.ndim - 1))
        grad_x = (grad * scale.to(grad.dtype)) @ weight.to(grad.dtype) if ctx.needs_input_grad[0] else None
        if ctx.from_output:
            grad_scale = (grad * (saved - shift.to(saved.dtype))).sum(dims) / scale.to(grad.dtype)
        else:
            grad_scale = (grad * saved).sum(dims)
        return grad_x, None, None, grad_scale.to(scale.dtype), grad.sum(dims).to(shift.dtype)


class ScaleShiftLinear:
    """Mixin over nn.Linear (frozen weight and bias): the Linear and its SSF in one autograd node."""

    ssf: ScaleShift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ScaleShiftLinear.apply(x, self.weight, self.bias, self.ssf.scale, self.ssf.shift)
