"""SPT's sparse deltas on Linear/Conv2d equal W + scatter(values) in value and in every gradient,
without a weight-sized gradient."""

import copy

import pytest
import torch
from timm.layers import Conv2dSame
from torch import nn

from adapt.methods.mixins import with_mixin
from adapt.methods.spt.sparse import CHUNK, SparseDelta, SparseDeltaConv2d, SparseDeltaLinear

TOLERANCE = 1e-5


def _sparse_pair(layer: nn.Module, count: int, join: type, seed: int = 0):
    """(layer with the sparse mixin, reference computing with W + scatter(values)) sharing the values."""
    generator = torch.Generator().manual_seed(seed)
    layer.requires_grad_(False)
    indices = torch.randperm(layer.weight.numel(), generator=generator)[:count]
    values = torch.randn(count, generator=generator)
    ours = copy.deepcopy(layer)
    ours.sparse = SparseDelta(count)
    with torch.no_grad():
        ours.sparse.indices.copy_(indices)
        ours.sparse.values.copy_(values)
    with_mixin(ours, join)
    reference = copy.deepcopy(layer)
    delta = nn.Parameter(values.clone())

    def forward(x):
        weight = layer.weight.flatten().index_add(0, indices, delta).view_as(layer.weight)
        if isinstance(layer, nn.Linear):
            return nn.functional.linear(x, weight, layer.bias)
        return reference._conv_forward(x, weight, layer.bias) if not isinstance(layer, Conv2dSame) else (
            torch.nn.functional.conv2d(nn.functional.pad(x, _same_pads(layer, x)), weight, layer.bias, layer.stride, 0,
                                       layer.dilation, layer.groups))  # fmt: skip

    return ours, forward, delta


def _same_pads(layer, x):
    from timm.layers.padding import pad_same_arg

    return pad_same_arg(list(x.shape[-2:]), list(layer.kernel_size), list(layer.stride), list(layer.dilation))


def _check(ours, reference, delta, x):
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    weights = torch.randn(ours(x1).shape, generator=torch.Generator().manual_seed(9))
    (ours(x1) * weights).sum().backward()
    (reference(x2) * weights).sum().backward()
    with torch.no_grad():
        assert (ours(x) - reference(x)).abs().max() <= TOLERANCE
    assert (ours.sparse.values.grad - delta.grad).abs().max() <= TOLERANCE * max(1.0, float(delta.grad.abs().max()))
    assert (x1.grad - x2.grad).abs().max() <= TOLERANCE
    assert ours.weight.grad is None  # the frozen weight gets no gradient


def test_linear_with_tokens_and_more_entries_than_a_chunk():
    ours, reference, delta = _sparse_pair(nn.Linear(24, 40), CHUNK + 37, SparseDeltaLinear)
    _check(ours, reference, delta, torch.randn(3, 7, 24))


@pytest.mark.parametrize("conv", [
    nn.Conv2d(6, 8, 3, padding=1),
    nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=False),
    nn.Conv2d(6, 8, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
    nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),  # depthwise
    nn.Conv2d(6, 8, 1),
    nn.Conv2d(6, 8, 3, padding="same"),
    Conv2dSame(6, 8, 3, stride=2, bias=False),  # timm's TF "SAME" padding (the default Lite0's convs)
    Conv2dSame(8, 8, 5, stride=2, groups=8, bias=False),
    nn.Conv2d(4, 8, 3, padding=2, dilation=2, groups=4),  # depthwise, multiplier 2, dilated
    nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2),  # grouped, not depthwise
])  # fmt: skip
@pytest.mark.parametrize("share", [1 / 3, 1.0, 0.02])  # a third, every entry, a few (some channels have none)
def test_conv_kinds(conv, share):
    count = max(1, round(conv.weight.numel() * share))
    ours, reference, delta = _sparse_pair(conv, count, SparseDeltaConv2d)
    _check(ours, reference, delta, torch.randn(2, conv.in_channels, 11, 13))


def test_frozen_input_gets_no_gradient():
    """The first conv of a network (an image input) needs only the values' gradient."""
    ours, _, _ = _sparse_pair(nn.Conv2d(3, 8, 3, padding=1, groups=1), 20, SparseDeltaConv2d)
    ours(torch.randn(2, 3, 9, 9)).sum().backward()
    assert ours.sparse.values.grad is not None and ours.sparse.values.grad.abs().sum() > 0


def test_a_sparse_conv_keeps_no_kernel_for_backward():
    """W + D is formed again in backward, not kept: the node keeps the input, values and indices only."""
    from conftest import saved_bytes

    conv = nn.Conv2d(64, 96, 1)
    ours, reference, delta = _sparse_pair(conv, 500, SparseDeltaConv2d)
    x = torch.randn(2, 64, 3, 3)  # an input smaller than the 96x64 kernel, so a kept kernel would show
    assert saved_bytes(ours, x.requires_grad_(True)) == x.numel() * 4  # the input alone (values: a parameter)
    _check(ours, reference, delta, torch.randn(2, 64, 5, 5))
