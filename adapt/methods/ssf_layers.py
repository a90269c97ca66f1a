"""SSF's layers: the per-channel scale & shift, and the ways it joins the layer it follows.

Training memory is the point of SSF, so it never keeps an activation the frozen network
would not keep:
- timm's BatchNormAct2d with frozen statistics and a ReLU/ReLU6 (or no) activation runs
  norm, SSF and activation as one autograd node that keeps only its output, which the next
  layer keeps anyway (`ScaleShiftBatchNormAct`): where the activation clips, the gradient is
  zero; elsewhere the output still holds the pre-activation value, from which backward
  recovers what it needs (as in-place activated BatchNorm does);
- any other norm with an affine (BatchNorm, LayerNorm, GroupNorm, ...) trains the
  re-parameterized affine (weight * scale, bias * scale + shift) inside its own single norm
  call (`ScaledAffine`);
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


def _channels(t: torch.Tensor) -> torch.Tensor:
    return t.view(1, -1, 1, 1)


class _ScaleShiftBatchNormAct(torch.autograd.Function):
    """y = clamp(scale * batchnorm(x) + shift, low, high) under frozen statistics, keeping only y.
    While some scale is exactly 0 it keeps x instead and recomputes y in backward."""

    @staticmethod
    def forward(ctx, x, mean, var, weight, bias, eps, scale, shift, low, high):
        y = F.batch_norm(x, mean, var, weight * scale, bias * scale + shift, False, 0.0, eps)
        if low is not None:
            y.clamp_(low, high)
        ctx.from_output = bool((scale != 0).all())
        ctx.eps, ctx.low, ctx.high = eps, low, high
        ctx.save_for_backward(y if ctx.from_output else x, mean, var, weight, bias, scale, shift)
        return y

    @staticmethod
    def backward(ctx, grad):
        saved, mean, var, weight, bias, scale, shift = ctx.saved_tensors
        if ctx.from_output:
            y = saved
        else:
            y = F.batch_norm(saved, mean, var, weight * scale, bias * scale + shift, False, 0.0, ctx.eps)
        # no gradient where the activation clipped (torch's own ReLU/ReLU6 backward kernels, which read the
        # output as well); elsewhere y is still the pre-activation value
        if ctx.high == float("inf"):
            grad = torch.ops.aten.threshold_backward(grad, y, ctx.low)
        elif ctx.low is not None:
            grad = torch.ops.aten.hardtanh_backward(grad, y, ctx.low, ctx.high)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = grad * _channels((weight * scale * torch.rsqrt(var + ctx.eps)).to(grad.dtype))
        grad_shift = grad.sum((0, 2, 3))
        if ctx.from_output:  # sum(g * (y - shift)) / scale = (sum(g * y) - shift * sum(g)) / scale
            grad_scale = ((grad * y).sum((0, 2, 3)) - shift * grad_shift) / scale
        else:
            grad_scale = (grad * F.batch_norm(saved, mean, var, weight, bias, False, 0.0, ctx.eps)).sum((0, 2, 3))
        return grad_x, None, None, None, None, None, grad_scale.to(scale.dtype), grad_shift.to(shift.dtype), None, None


CLIPS = {nn.ReLU: (0.0, float("inf")), nn.ReLU6: (0.0, 6.0), nn.Identity: (None, None)}


def fuses_with_activation(norm: nn.Module) -> bool:
    """Whether ScaleShiftBatchNormAct can run this norm: timm's BatchNormAct2d with running statistics,
    an affine, no dropout and a ReLU/ReLU6/no activation."""
    return (type(norm).__name__.endswith("BatchNormAct2d") and norm.running_mean is not None and norm.affine
            and isinstance(norm.drop, nn.Identity) and type(norm.act) in CLIPS)  # fmt: skip


class ScaleShiftBatchNormAct:
    """Mixin over timm's BatchNormAct2d (frozen statistics): norm, SSF and activation in one node."""

    ssf: ScaleShift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low, high = CLIPS[type(self.act)]
        return _ScaleShiftBatchNormAct.apply(x, self.running_mean, self.running_var, self.weight, self.bias, self.eps,
                                             self.ssf.scale, self.ssf.shift, low, high)  # fmt: skip


class ScaleShiftLinear:
    """Mixin over nn.Linear (frozen weight and bias): the Linear and its SSF in one autograd node."""

    ssf: ScaleShift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ScaleShiftLinear.apply(x, self.weight, self.bias, self.ssf.scale, self.ssf.shift)
