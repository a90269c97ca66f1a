"""Finding the BatchNorms that directly follow a conv, and folding them into it.

Under frozen statistics BN(conv(x)) = gamma * (W x - mu) / sigma + beta = (W * gamma / sigma) x
+ (beta - gamma * mu / sigma): the conv takes the scale, the norm keeps only a shift
(fold_batchnorm_), so the model keeps its architecture and state-dict keys.

`unfold_conv_batchnorm_` goes back after training in the folded form: with f = gamma / sigma, a folded
conv W f + D and a norm whose weight w and shift b' trained, the plain parametrization holding the same
function is W + D / f (rows), gamma w, beta + (b' - b'_0) + (w - 1) f mu, with the statistics as they
were; entries that did not move come back bitwise. It needs gamma != 0 in every channel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from adapt.kernels.fold import fold_batchnorm_, scale_rows_


@dataclass
class FoldedBatchNorm:
    """A conv and the BatchNorm folded into it (names in the model), with what they held before the fold."""

    conv: str
    norm: str
    weight: torch.Tensor  # the conv's weight
    gamma: torch.Tensor
    beta: torch.Tensor
    mean: torch.Tensor
    var: torch.Tensor


def conv_batchnorm_pairs(model: nn.Module, image_size: int) -> list[tuple[nn.Conv2d, nn.modules.batchnorm._BatchNorm]]:
    """(conv, BatchNorm) pairs where the BatchNorm runs right after a bias-free conv, found by one
    forward pass (a conv with a bias would need its bias scaled too; such pairs are left alone)."""
    order: list[nn.Module] = []
    hooks = [
        m.register_forward_pre_hook(lambda module, args: order.append(module))
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.modules.batchnorm._BatchNorm))
    ]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, image_size, image_size))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return [
        (conv, bn)
        for conv, bn in zip(order, order[1:])
        if isinstance(conv, nn.Conv2d)
        and conv.bias is None
        and isinstance(bn, nn.modules.batchnorm._BatchNorm)
        and conv.out_channels == bn.num_features
        and bn.affine
        and bn.running_var is not None
    ]


def fold_conv_batchnorms_(model: nn.Module, image_size: int) -> list[FoldedBatchNorm]:
    """Fold every BatchNorm that follows a conv into it, in place; returns what unfolding each needs."""
    names = {id(module): name for name, module in model.named_modules()}
    folded = []
    for conv, bn in conv_batchnorm_pairs(model, image_size):
        folded.append(FoldedBatchNorm(names[id(conv)], names[id(bn)], conv.weight.detach().clone(),
                                      *(t.detach().clone() for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var))))  # fmt: skip
        fold_batchnorm_(conv.weight.data, bn)
    return folded


def unfold_conv_batchnorm_(model: nn.Module, folded: FoldedBatchNorm) -> bool:
    """Back to the plain parametrization, in place (module docstring); False, leaving the pair folded
    (the same function), when a channel's gamma is 0 and no plain weight can hold its delta."""
    conv, bn = model.get_submodule(folded.conv), model.get_submodule(folded.norm)
    factor = folded.gamma / torch.sqrt(folded.var + bn.eps)  # as fold_batchnorm_ computes it
    if bool((factor == 0).any()):
        return False
    with torch.no_grad():
        start = folded.weight.clone()
        scale_rows_(start, factor)  # the folded weight before training, bitwise as the fold made it
        delta = conv.weight.data - start
        conv.weight.data.copy_(folded.weight + delta / factor.reshape(-1, *[1] * (delta.ndim - 1)))
        shift_before = folded.beta - factor * folded.mean
        bn.bias.data.copy_(folded.beta + (bn.bias.data - shift_before) + (bn.weight.data - 1) * factor * folded.mean)
        bn.weight.data.mul_(folded.gamma)
        bn.running_mean.copy_(folded.mean)
        bn.running_var.copy_(folded.var)
    return True
