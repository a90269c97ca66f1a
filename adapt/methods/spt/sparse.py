"""SPT's unstructured part: a trainable delta on exactly the selected entries of a frozen weight.

The delta (`SparseDelta`: values + flat indices) is never scattered into a weight-sized
tensor while training. A Linear or Conv2d computes y = layer(x) + S(x), where S is the
layer's operation with only the selected weight entries, done entry by entry
(`_SparseLinearTerm`, `_SparseConvTerm`); its backward gives the gradient of exactly the
selected values (no weight-sized gradient) and their share of the input gradient, and the
frozen layer keeps its own cheap input-gradient path. Cost grows with the number of
selected entries, not with the weight. A tensor of another kind of layer (rare) falls back
to a parametrization W + scatter(values). Merging adds the values into W in place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame
from torch import nn

CHUNK = 256  # entries handled at once: bounds the transient (batch x CHUNK x spatial) products


class SparseDelta(nn.Module):
    """Trainable values at fixed flat indices of the weight of the layer that owns it."""

    def __init__(self, count: int):
        super().__init__()
        self.values = nn.Parameter(torch.zeros(count))
        self.register_buffer("indices", torch.zeros(count, dtype=torch.long))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """As a parametrization (layers other than Linear/Conv2d): the weight plus the delta."""
        return weight.flatten().index_add(0, self.indices, self.values.to(weight.dtype)).view_as(weight)

    def fold_into(self, weight: torch.Tensor) -> None:
        with torch.no_grad():
            weight.view(-1).index_add_(0, self.indices, self.values.to(weight.dtype))


def _chunks(count: int):
    for start in range(0, count, CHUNK):
        yield slice(start, min(start + CHUNK, count))


class _SparseLinearTerm(torch.autograd.Function):
    """x -> x D^T for a sparse D (rows, cols, values): each entry adds x[..., col] * value to out[..., row]."""

    @staticmethod
    def forward(ctx, x, values, rows, cols, out_features):
        out = x.new_zeros(*x.shape[:-1], out_features)
        v = values.to(x.dtype)
        for part in _chunks(len(values)):
            out.index_add_(-1, rows[part], x[..., cols[part]] * v[part])
        ctx.save_for_backward(x, values, rows, cols)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, values, rows, cols = ctx.saved_tensors
        dims = tuple(range(grad.ndim - 1))
        grad_values = torch.empty_like(values)
        grad_x = torch.zeros_like(x) if ctx.needs_input_grad[0] else None
        v = values.to(grad.dtype)
        for part in _chunks(len(values)):
            g = grad[..., rows[part]]
            grad_values[part] = (g * x[..., cols[part]]).sum(dims).to(values.dtype)
            if grad_x is not None:
                grad_x.index_add_(-1, cols[part], g * v[part])
        return grad_x, grad_values, None, None, None


def conv_padding(layer: nn.Conv2d, height: int, width: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) zero padding that `layer` applies to an input of this size."""
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.stride, layer.dilation
    if layer.padding == "same":  # torch's own (stride 1): the odd pixel goes right/bottom
        pad_h, pad_w = dh * (kh - 1), dw * (kw - 1)
    elif isinstance(layer, Conv2dSame):  # timm's TF-style "SAME", from the input size
        pad_h = max((-(height // -sh) - 1) * sh + (kh - 1) * dh + 1 - height, 0)
        pad_w = max((-(width // -sw) - 1) * sw + (kw - 1) * dw + 1 - width, 0)
    else:
        ph, pw = (0, 0) if layer.padding == "valid" else layer.padding
        return pw, pw, ph, ph
    return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2


class _SparseConvTerm(torch.autograd.Function):
    """x -> conv2d(x, D) for a sparse kernel D: an entry (o, c, i, j) adds value * the input channel c
    seen through kernel offset (i, j) to output channel o."""

    @staticmethod
    def forward(ctx, x, values, entries, geometry):
        out_channels, pads, stride, dilation, kernel = geometry
        xp = F.pad(x, pads)
        size = tuple((xp.shape[2 + a] - dilation[a] * (kernel[a] - 1) - 1) // stride[a] + 1 for a in range(2))
        out = x.new_zeros(x.shape[0], out_channels, *size)
        v = values.to(x.dtype)
        for rows, channels, offset, part in _offsets(entries):
            view = _strided(xp, offset, stride, dilation, size)
            out.index_add_(1, rows, view[:, channels] * v[part].view(1, -1, 1, 1))
        ctx.save_for_backward(x, values, *entries)
        ctx.geometry = geometry
        return out

    @staticmethod
    def backward(ctx, grad):
        x, values, *entries = ctx.saved_tensors
        _, pads, stride, dilation, _ = ctx.geometry
        xp = F.pad(x, pads)
        size = tuple(grad.shape[-2:])
        grad_values = torch.empty_like(values)
        grad_xp = torch.zeros_like(xp) if ctx.needs_input_grad[0] else None
        v = values.to(grad.dtype)
        for rows, channels, offset, part in _offsets(entries):
            g = grad[:, rows]
            grad_values[part] = (g * _strided(xp, offset, stride, dilation, size)[:, channels]).sum((0, 2, 3)).to(values.dtype)
            if grad_xp is not None:
                _strided(grad_xp, offset, stride, dilation, size).index_add_(1, channels, g * v[part].view(1, -1, 1, 1))
        grad_x = None
        if grad_xp is not None:
            left, right, top, bottom = pads
            grad_x = grad_xp[:, :, top : grad_xp.shape[2] - bottom, left : grad_xp.shape[3] - right]
        return grad_x, grad_values, None, None


def _strided(xp, offset: tuple[int, int], stride, dilation, size) -> torch.Tensor:
    """The padded input as kernel offset (i, j) sees it: (B, C, Ho, Wo), a view."""
    top, left = offset[0] * dilation[0], offset[1] * dilation[1]
    return xp[:, :, top : top + stride[0] * (size[0] - 1) + 1 : stride[0], left : left + stride[1] * (size[1] - 1) + 1 : stride[1]]


def _offsets(entries):
    """(output rows, input channels, kernel offset (i, j), entry slice) per kernel offset and chunk;
    entries are sorted by offset (conv_entries)."""
    rows, channels, ki, kj = entries
    flat = ki * 1000 + kj
    bounds = torch.nonzero(torch.diff(flat, prepend=flat[:1] - 1)).flatten().tolist() + [len(flat)]
    for start, end in zip(bounds, bounds[1:]):
        offset = (int(ki[start]), int(kj[start]))
        for part in _chunks(end - start):
            part = slice(start + part.start, start + part.stop)
            yield rows[part], channels[part], offset, part


def conv_entries(layer: nn.Conv2d, indices: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Flat kernel indices -> (output channel, input channel, i, j) sorted by offset (i, j), and the sort
    order. The input channel accounts for groups."""
    out_channels, per_group, kh, kw = layer.weight.shape
    o = indices // (per_group * kh * kw)
    rest = indices % (per_group * kh * kw)
    c = rest // (kh * kw) + (o // (out_channels // layer.groups)) * per_group
    i, j = (rest % (kh * kw)) // kw, rest % kw
    order = torch.argsort(i * 1000 + j, stable=True)
    return o[order], c[order], i[order], j[order], order


class SparseDeltaLinear:
    """Mixin over nn.Linear: y = linear(x) + x D^T with D = the layer's `sparse` delta."""

    sparse: SparseDelta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        indices = self.sparse.indices
        rows, cols = indices // self.in_features, indices % self.in_features
        term = _SparseLinearTerm.apply(x, self.sparse.values, rows, cols, self.out_features)
        return super().forward(x) + term  # the frozen layer's own forward


class SparseDeltaConv2d:
    """Mixin over nn.Conv2d (and timm's Conv2dSame): y = conv(x) + conv(x, D) with D sparse."""

    sparse: SparseDelta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *entries, order = conv_entries(self, self.sparse.indices)
        pads = conv_padding(self, x.shape[-2], x.shape[-1])
        geometry = (self.out_channels, pads, self.stride, self.dilation, self.kernel_size)
        term = _SparseConvTerm.apply(x, self.sparse.values[order], tuple(entries), geometry)
        return super().forward(x) + term  # the frozen layer's own forward
