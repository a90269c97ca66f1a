"""A Triton kernel for CUDA: W <- diag(s) (W + alpha * B @ A), in place, in one pass.

Each program owns one (BLOCK_M, BLOCK_N) tile of W: it loads the tile once, adds the
low-rank product of its rows of B and columns of A (rank padded to 16 for `tl.dot`),
scales the rows, and stores the tile back. SSF's row scaling and LoRA's update thus
touch every weight element once, with no temporary the size of W. Either part can be
left out (s = None or B, A = None).

Only imported when a CUDA weight is merged and Triton is installed; the tests run it
through Triton's interpreter (TRITON_INTERPRET=1) on CPU tensors.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_M = 64
BLOCK_N = 64


@triton.jit
def _scale_add_low_rank_kernel(
    w_ptr, s_ptr, b_ptr, a_ptr,
    rows, cols, rank, alpha,
    stride_wm, stride_bm, stride_ak,
    HAS_SCALE: tl.constexpr, HAS_LOW_RANK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < rows
    mask_n = offs_n < cols
    tile_mask = mask_m[:, None] & mask_n[None, :]
    w_ptrs = w_ptr + offs_m[:, None] * stride_wm + offs_n[None, :]
    w = tl.load(w_ptrs, mask=tile_mask, other=0.0).to(tl.float32)
    if HAS_LOW_RANK:
        offs_r = tl.arange(0, BLOCK_R)
        mask_r = offs_r < rank
        b = tl.load(b_ptr + offs_m[:, None] * stride_bm + offs_r[None, :], mask=mask_m[:, None] & mask_r[None, :], other=0.0)
        a = tl.load(a_ptr + offs_r[:, None] * stride_ak + offs_n[None, :], mask=mask_r[:, None] & mask_n[None, :], other=0.0)
        w += alpha * tl.dot(b.to(tl.float32), a.to(tl.float32))
    if HAS_SCALE:
        s = tl.load(s_ptr + offs_m, mask=mask_m, other=1.0).to(tl.float32)
        w = w * s[:, None]
    tl.store(w_ptrs, w.to(w_ptr.dtype.element_ty), mask=tile_mask)


def scale_add_low_rank_(
    weight: torch.Tensor,
    scale: torch.Tensor | None,
    b: torch.Tensor | None,
    a: torch.Tensor | None,
    alpha: float = 1.0,
) -> None:
    """weight (contiguous, viewed as (out, -1)) <- diag(scale) (weight + alpha * b @ a)."""
    rows = weight.shape[0]
    w2d = weight.view(rows, -1)
    cols = w2d.shape[1]
    has_low_rank = b is not None and a is not None
    rank = b.shape[1] if has_low_rank else 1
    b = b.contiguous() if has_low_rank else w2d
    a = a.contiguous() if has_low_rank else w2d
    s = scale.contiguous() if scale is not None else w2d
    grid = (triton.cdiv(rows, BLOCK_M), triton.cdiv(cols, BLOCK_N))
    _scale_add_low_rank_kernel[grid](
        w2d, s, b, a,
        rows, cols, rank, float(alpha),
        w2d.stride(0), b.stride(0), a.stride(0),
        HAS_SCALE=scale is not None, HAS_LOW_RANK=has_low_rank,
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_R=max(16, triton.next_power_of_2(rank)),
    )  # fmt: skip
