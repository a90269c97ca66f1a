"""SPT's unstructured part: a trainable delta on exactly the selected entries of a frozen weight.

The delta (`SparseDelta`: values + flat indices) never gets a weight-sized gradient, and the
frozen weight none at all; how the layer runs depends on its kind:
- Linear: y = linear(x) + x D^T, the sparse term done entry by entry (`_SparseLinearTerm`):
  a ViT's matrices are large and few of their entries are selected, so the cost follows the
  selected entries, and W + scatter is never formed.
- Conv2d: y = conv(x, W + D), one convolution (`_DeltaConv`): a conv kernel is small next to
  its activations, so forming W + D costs nothing that matters, while an entry-by-entry
  convolution costs a gather per entry and pixel (it made SPT 1.6-3.5x slower than LoRA on
  Lite0). Backward takes the input gradient as the frozen layer would and the weight gradient
  only at the selected entries (for a depthwise conv, only over the channels that have any).
A tensor of another kind of layer (a norm, a bias) falls back to a parametrization
W + scatter(values). Merging adds the values into W in place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame
from torch import nn

CHUNK = 256  # entries handled at once: bounds the transient (tokens x CHUNK) products


class SparseDelta(nn.Module):
    """Trainable values at fixed flat indices of the weight of the layer that owns it."""

    def __init__(self, count: int):
        super().__init__()
        self.values = nn.Parameter(torch.zeros(count))
        self.register_buffer("indices", torch.zeros(count, dtype=torch.long))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """As a parametrization (layers other than Linear/Conv2d): the weight plus the delta."""
        return _kernel(weight, self.values, self.indices)

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


def _kernel(weight: torch.Tensor, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """W + D: the frozen kernel with the sparse values added at their flat indices."""
    return weight.flatten().index_add(0, indices, values.to(weight.dtype)).view_as(weight)


class _DeltaConv(torch.autograd.Function):
    """conv2d(x, W + D) for a frozen kernel W and a sparse D, as one convolution; backward gives the
    input gradient as the frozen layer's would and the gradient of D's values alone.

    An uneven ("SAME" at stride 2) padding is applied inside, in forward and again in backward, so
    that the node keeps the unpadded input, which the layer before keeps anyway, not a padded copy.
    The kernel W + D is formed in the forward pass and formed again in backward rather than kept: it
    is cheap to form (one copy of W and a scatter), and kept it was up to 0.9 MB per layer alive at
    the peak of training (on Lite0 at batch 32, three such kernels were SPT's memory beyond LoRA's);
    one convolution with it costs what the frozen layer costs. The values' gradient is the weight
    gradient at the selected entries: for a depthwise conv, the correlation of each selected channel's input with its output gradient, done
    as one grouped convolution over those channels only (torch's depthwise weight gradient is a
    slow loop on CPU); for any other conv, torch's weight gradient, read at the entries (the
    kernel-sized transient is small next to the activations).
    """

    @staticmethod
    def forward(ctx, x, values, weight, indices, geometry, pads):
        stride, padding, dilation, groups = geometry
        ctx.save_for_backward(x, values, weight, indices)  # x unpadded: the previous layer's output, which it keeps too
        ctx.geometry, ctx.pads = geometry, pads
        return F.conv2d(F.pad(x, pads) if pads else x, _kernel(weight, values, indices), None, stride, padding,
                        dilation, groups)  # fmt: skip

    @staticmethod
    def backward(ctx, grad):
        x, values, weight, indices = ctx.saved_tensors
        kernel = _kernel(weight, values, indices)
        stride, padding, dilation, groups = ctx.geometry
        padded = F.pad(x, ctx.pads) if ctx.pads else x  # again, for the backward only
        depthwise = groups > 1 and groups == x.shape[1]
        grad_x = grad_kernel = None
        if ctx.needs_input_grad[0] or not depthwise:
            mask = (ctx.needs_input_grad[0], not depthwise, False)
            grad_x, grad_kernel, _ = torch.ops.aten.convolution_backward(
                grad, padded, kernel, None, stride, padding, dilation, False, (0, 0), groups, mask)  # fmt: skip
        if grad_x is not None and ctx.pads:
            left, _, top, _ = ctx.pads
            grad_x = grad_x[..., top : top + x.shape[-2], left : left + x.shape[-1]]
        if depthwise:
            grad_values = _depthwise_kernel_grad(padded, grad, kernel.shape, indices, ctx.geometry)
        else:
            grad_values = grad_kernel.flatten()[indices]
        return grad_x, grad_values.to(values.dtype), None, None, None, None


def _depthwise_kernel_grad(x, grad, shape, indices, geometry) -> torch.Tensor:
    """d loss / d kernel at `indices` of a depthwise conv (out channel o reads input channel
    o // multiplier): per selected output channel, the correlation of its input with its output
    gradient (stride as dilation), for all of its taps at once, summed over the batch."""
    stride, padding, dilation, _ = geometry
    out_channels, _, kh, kw = shape
    channels, local = torch.unique(indices // (kh * kw), return_inverse=True)
    multiplier = out_channels // x.shape[1]
    if len(channels) * 2 > out_channels or multiplier > 1:  # most channels: all, rather than copy them out
        channels, local = torch.arange(out_channels, device=indices.device), indices // (kh * kw)
        inputs, grads = (x if multiplier == 1 else x.repeat_interleave(multiplier, 1)), grad
    else:
        inputs, grads = x.index_select(1, channels), grad.index_select(1, channels)
    batch, count = grad.shape[0], len(channels)
    taps = F.conv2d(inputs.reshape(1, batch * count, *x.shape[2:]), grads.reshape(batch * count, 1, *grad.shape[2:]),
                    None, 1, padding, stride, batch * count)  # fmt: skip
    taps = taps.view(batch, count, *taps.shape[2:]).sum(0)
    taps = taps[:, : (kh - 1) * dilation[0] + 1 : dilation[0], : (kw - 1) * dilation[1] + 1 : dilation[1]]
    return taps.reshape(count, kh * kw)[local, indices % (kh * kw)]


class SparseDeltaLinear:
    """Mixin over nn.Linear: y = linear(x) + x D^T with D = the layer's `sparse` delta."""

    sparse: SparseDelta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        indices = self.sparse.indices
        rows, cols = indices // self.in_features, indices % self.in_features
        term = _SparseLinearTerm.apply(x, self.sparse.values, rows, cols, self.out_features)
        return super().forward(x) + term  # the frozen layer's own forward


class SparseDeltaConv2d:
    """Mixin over nn.Conv2d (and timm's Conv2dSame): y = conv(x, W + D) with D sparse (_DeltaConv)."""

    sparse: SparseDelta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right, top, bottom = conv_padding(self, x.shape[-2], x.shape[-1])
        pads = None
        if (left, top) != (right, bottom):  # uneven ("SAME" at stride 2): pad first, as the layer does
            pads, left, top = (left, right, top, bottom), 0, 0
        geometry = (self.stride, (top, left), self.dilation, self.groups)
        out = _DeltaConv.apply(x, self.sparse.values, self.weight, self.sparse.indices, geometry, pads)
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)
