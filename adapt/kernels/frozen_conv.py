"""A convolution whose weight (and bias) is frozen, as an autograd node that keeps no activation.

torch's convolution keeps its input for backward even when its weight does not train, but the
input's gradient needs only the weight: this node keeps the weight and the input's shape, and
computes the input gradient as the transposed convolution of the output's gradient (what
torch's convolution backward computes for it; on CPU as fast or faster, and equal in tests).
timm's Conv2dSame pads first, as its forward does (the padding keeps nothing either).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame, pad_same
from torch import nn


class _FrozenConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        ctx.save_for_backward(weight)
        ctx.input_shape, ctx.settings = x.shape, (stride, padding, dilation, groups)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None, None
        (weight,) = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.settings
        # the input's gradient is the transposed convolution of the output's; output_padding restores the
        # input rows and columns a strided convolution did not reach
        extra = [ctx.input_shape[d + 2] - ((grad.shape[d + 2] - 1) * stride[d] - 2 * padding[d]
                                           + dilation[d] * (weight.shape[d + 2] - 1) + 1) for d in range(2)]  # fmt: skip
        grad_x = F.conv_transpose2d(grad, weight.to(grad.dtype), None, stride, padding, extra, groups, dilation)
        return grad_x, None, None, None, None, None, None


def is_frozen(conv: nn.Module) -> bool:
    """Nothing of the layer trains."""
    return not conv.weight.requires_grad and (conv.bias is None or not conv.bias.requires_grad)


def runs_frozen(conv: nn.Module) -> bool:
    """Whether frozen_conv2d can run this layer: a plain nn.Conv2d (or timm's Conv2dSame) with numeric
    zero padding (whether it trains is asked at each forward: is_frozen)."""
    return type(conv) in (nn.Conv2d, Conv2dSame) and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)


def frozen_conv2d(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """conv(x), keeping nothing for backward but the weight."""
    if isinstance(conv, Conv2dSame):
        x = pad_same(x, conv.weight.shape[-2:], conv.stride, conv.dilation)
        padding = (0, 0)
    else:
        padding = conv.padding
    return _FrozenConv2d.apply(x, conv.weight, conv.bias, conv.stride, padding, conv.dilation, conv.groups)
