"""Finding the BatchNorms that directly follow a conv, and folding them into it.

Under frozen statistics BN(conv(x)) = gamma * (W x - mu) / sigma + beta = (W * gamma / sigma) x
+ (beta - gamma * mu / sigma): the conv takes the scale, the norm keeps only a shift
(fold_batchnorm_), so the model keeps its architecture and state-dict keys.
"""

from __future__ import annotations

import torch
from torch import nn

from adapt.kernels.fold import fold_batchnorm_


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


def fold_conv_batchnorms_(model: nn.Module, image_size: int) -> int:
    """Fold every BatchNorm that follows a conv into it, in place; returns how many."""
    pairs = conv_batchnorm_pairs(model, image_size)
    for conv, bn in pairs:
        fold_batchnorm_(conv.weight.data, bn)
    return len(pairs)
