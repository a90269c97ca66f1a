"""BatchNorm under frozen statistics, with its ReLU/ReLU6 (or no) activation, as one autograd node
that keeps only its output.

With running statistics, BatchNorm is a per-channel affine: y = act(w * (x - mean) / sigma + b).
Its input gradient needs only the constant w / sigma and where the activation clipped; b's
gradient needs nothing; w's needs (x - mean) / sigma, which the output still holds wherever the
activation did not clip (y = w * x_hat + b there; where it clipped the gradient is zero anyway),
as in-place activated BatchNorm recovers it. So the node saves y, which the next layer keeps
anyway, instead of torch's input copy for the norm plus the activation's own tensor: about two
activation maps per BatchNorm on a gradient path. While w has an exact zero and trains, y
forgets x_hat there, so the node keeps x instead; with w frozen and no activation it keeps
nothing.

Backward allocates one map, the input's gradient (_channel_dot; a masked gradient is scaled
in place). Works for any w and b, trained or not, and for affines computed from other
parameters (SSF's re-parameterized affine: its gradients flow on through autograd).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CLIPS = {nn.ReLU: (0.0, float("inf")), nn.ReLU6: (0.0, 6.0), nn.Identity: (None, None)}  # activation -> clamp range


def _channels(t: torch.Tensor) -> torch.Tensor:
    return t.view(1, -1, 1, 1)


def _kept(weight_trains: bool, clips: bool, weight: torch.Tensor) -> str | None:
    """What backward needs: the output (where the activation clipped, and x_hat = (y - b) / w when w
    trains), the input (w trains and has an exact zero, where y forgets x_hat), or nothing (w frozen,
    no activation: the input's gradient is a per-channel constant times the output's). With w frozen, a
    one-byte mask of where the activation passed would be a quarter of the output's bytes (LoRA's peak
    on Lite0 0.24x full instead of 0.33x), but building and applying it took this node from 14 to 30 ms
    on a 32x96x48x48 map (measured), more than a step-time budget allows, so the output is kept."""
    if weight_trains and not bool((weight != 0).all()):
        return "input"
    return "output" if weight_trains or clips else None


def keeps_output(weight: torch.Tensor, clip: tuple[float | None, float | None]) -> bool:
    """Whether frozen_batchnorm_act's node keeps its output for backward (rather than its input or nothing)."""
    return _kept(weight.requires_grad and torch.is_grad_enabled(), clip[0] is not None, weight) == "output"


class _FrozenBatchNormAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, mean, var, weight, bias, eps, low, high):
        y = F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)
        if low is not None:
            y.clamp_(low, high)
        ctx.eps, ctx.low, ctx.high = eps, low, high
        ctx.kept = _kept(ctx.needs_input_grad[3], low is not None, weight)
        ctx.save_for_backward({"output": y, "input": x}.get(ctx.kept), mean, var, weight, bias)
        return y

    @staticmethod
    def backward(ctx, grad):
        kept, mean, var, weight, bias = ctx.saved_tensors
        y = F.batch_norm(kept, mean, var, weight, bias, False, 0.0, ctx.eps) if ctx.kept == "input" else kept
        # no gradient where the activation clipped (torch's own ReLU/ReLU6 backward kernels, which read the
        # output as well); elsewhere y is still the pre-activation value. The masked gradient is then ours.
        owned = ctx.low is not None
        if ctx.high == float("inf"):
            grad = torch.ops.aten.threshold_backward(grad, y, ctx.low)
        elif owned:
            grad = torch.ops.aten.hardtanh_backward(grad, y, ctx.low, ctx.high)
        invstd = torch.rsqrt(var + ctx.eps)
        grad_bias = grad.sum((0, 2, 3)) if ctx.needs_input_grad[3] or ctx.needs_input_grad[4] else None
        grad_weight = None
        if ctx.needs_input_grad[3]:
            if ctx.kept == "output":  # sum(g * x_hat) with x_hat = (y - b) / w
                grad_weight = (_channel_dot(grad, y) - bias * grad_bias) / weight
            else:  # sum(g * (x - mean)) * invstd
                grad_weight = (_channel_dot(grad, kept) - mean * grad_bias) * invstd
            grad_weight = grad_weight.to(weight.dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:  # in place on a masked gradient: one map fewer alive at this moment
            scale = _channels((weight * invstd).to(grad.dtype))
            grad_x = grad.mul_(scale) if owned else grad * scale
        if grad_bias is not None:
            grad_bias = grad_bias.to(bias.dtype) if ctx.needs_input_grad[4] else None
        return grad_x, None, None, grad_weight, grad_bias, None, None, None


def _channel_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum(a * b) over batch and space, per channel, as one dot product per (sample, channel) row:
    no a * b temporary, which at a large map's norm was a whole map more at the peak of training
    (SPT's and SSF's, whose norms train their scales); as fast as the product and sum."""
    rows = a.shape[0] * a.shape[1]
    return torch.bmm(a.reshape(rows, 1, -1), b.reshape(rows, -1, 1)).view(a.shape[:2]).sum(0)


def lean_activation(norm: nn.Module) -> tuple[float | None, float | None] | None:
    """The clamp range of the activation a frozen BatchNorm2d (or timm's BatchNormAct2d) runs, when
    frozen_batchnorm_act can run it: running statistics, an affine, and no activation, a ReLU or a
    ReLU6 without dropout or hooks on it; else None (the layer's own forward then runs)."""
    if not isinstance(norm, nn.BatchNorm2d) or norm.running_mean is None or not norm.affine:
        return None
    act, drop = getattr(norm, "act", nn.Identity()), getattr(norm, "drop", nn.Identity())
    if not isinstance(drop, nn.Identity) or act._forward_hooks or act._forward_pre_hooks:  # hooks must still run
        return None
    return CLIPS.get(type(act))


def frozen_batchnorm_act(
    x: torch.Tensor, norm: nn.BatchNorm2d, weight: torch.Tensor, bias: torch.Tensor, clip: tuple[float | None, float | None]
) -> torch.Tensor:
    """clamp(batchnorm(x) with `norm`'s running statistics and the affine (weight, bias), *clip)."""
    return _FrozenBatchNormAct.apply(x, norm.running_mean, norm.running_var, weight, bias, norm.eps, *clip)
