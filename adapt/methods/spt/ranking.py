"""What SPT ranks, and under which names, as the released code does on ViTs.

- A ViT's fused `qkv` Linear is three matrices to SPT (q, k, v: ranked, costed and adapted
  each on its own). Its weight and bias are split into row blocks named `...qkv.weight#q`,
  `#k`, `#v` (and `...qkv.bias#q`, ...); adapt.methods.spt.method maps them back to rows.
- On a ViT the head, cls_token, pos_embed and patch_embed are not ranked; cls_token always
  trains whole and counts against the budget.
CNNs are ranked tensor by tensor, everything but the head.
"""

from __future__ import annotations

import torch
from torch import nn

BLOCK_SEPARATOR = "#"
QKV_BLOCKS = ("q", "k", "v")
VIT_UNRANKED = ("cls_token", "pos_embed", "patch_embed", "reg_token")


def is_vit(model: nn.Module) -> bool:
    return isinstance(getattr(model, "cls_token", None), nn.Parameter) and hasattr(model, "pos_embed")


def is_fused_qkv(name: str) -> bool:
    return name.endswith((".qkv.weight", ".qkv.bias"))


def real_name(name: str) -> tuple[str, int | None]:
    """'blocks.0.attn.qkv.weight#k' -> ('blocks.0.attn.qkv.weight', 1); a plain name -> (name, None)."""
    real, _, block = name.partition(BLOCK_SEPARATOR)
    return real, QKV_BLOCKS.index(block) if block else None


def split_fused(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each fused qkv weight/bias as its three row blocks (views), other tensors as they are."""
    out = {}
    for name, tensor in tensors.items():
        if is_fused_qkv(name) and tensor.shape[0] % 3 == 0:
            for block, part in zip(QKV_BLOCKS, tensor.chunk(3, dim=0)):
                out[f"{name}{BLOCK_SEPARATOR}{block}"] = part
        else:
            out[name] = tensor
    return out


def ranked(model: nn.Module, scores: dict[str, torch.Tensor], eligible: set[str]) -> tuple[
        dict[str, torch.Tensor], set[str], dict[str, int]]:  # fmt: skip
    """(scores SPT ranks, matrices its structured module may take, tensors always trained whole),
    under the names above."""
    always: dict[str, int] = {}
    if is_vit(model):
        scores = {k: v for k, v in scores.items() if not k.startswith(VIT_UNRANKED)}
        always = {"cls_token": model.cls_token.numel()}
    scores = split_fused(scores)
    eligible = {k for k in scores if real_name(k)[0] in eligible and scores[k].ndim >= 2}
    return scores, eligible, always
