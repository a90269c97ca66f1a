"""In-place fused ops for folding adapters into weights.

Each op updates a weight where it lies and allocates nothing the size of the weight:
`addmm_` accumulates B @ A straight into W (the GEMM's beta = 1), `mul_` scales rows,
and the bias update touches one vector. On CUDA, when Triton is installed, the weight
updates run as one fused Triton kernel instead (adapt.kernels.fused_triton); the CPU
path never needs Triton.
"""

from __future__ import annotations

import torch


def _rows(weight: torch.Tensor) -> torch.Tensor:
    """A (out, -1) view of a Linear (out, in) or Conv (out, in, kh, kw) weight, sharing storage."""
    return weight.view(weight.shape[0], -1)


def _use_triton(weight: torch.Tensor) -> bool:
    if not (weight.is_cuda and weight.is_contiguous()):
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def add_low_rank_(weight: torch.Tensor, b: torch.Tensor, a: torch.Tensor, alpha: float) -> None:
    """weight += alpha * b @ a, in place (b: (out, r), a: (r, in * k * k))."""
    if _use_triton(weight):
        from adapt.kernels.fused_triton import scale_add_low_rank_

        scale_add_low_rank_(weight, None, b, a, alpha)
    else:
        _rows(weight).addmm_(b.to(weight.dtype), a.to(weight.dtype), alpha=alpha)


def scale_rows_(weight: torch.Tensor, scale: torch.Tensor) -> None:
    """weight <- diag(scale) @ weight (per output channel), in place."""
    if _use_triton(weight) and weight.ndim > 1:
        from adapt.kernels.fused_triton import scale_add_low_rank_

        scale_add_low_rank_(weight, scale, None, None)
    else:
        _rows(weight).mul_(scale.to(weight.dtype).unsqueeze(1))


def scale_shift_(weight: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """Fold y = scale * (W x + b) + shift into W, b: W <- diag(scale) W, b <- scale * b + shift."""
    scale_rows_(weight, scale)
    bias.mul_(scale.to(bias.dtype)).add_(shift.to(bias.dtype))


def fold_batchnorm_(conv_weight: torch.Tensor, bn: torch.nn.modules.batchnorm._BatchNorm) -> None:
    """Move an eval-mode BatchNorm's normalization into the conv before it, in place.

    The BatchNorm stays in the graph but becomes `x + b'` (weight 1, mean 0, var 1 - eps),
    so the model keeps its architecture and state-dict keys.
    """
    with torch.no_grad():
        factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        scale_rows_(conv_weight, factor)
        bn.bias.sub_(factor * bn.running_mean)
        bn.weight.fill_(1.0)
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)
