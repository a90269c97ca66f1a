"""How HST reads a frozen backbone ("taps"): one `Reading` (patch map + meta tokens) per side block.

- `PromptedViTTap` (variant paper, timm ViT/DeiT), as the official code: one meta token
  per ViT block (xavier init) is joined to the block's sequence, so the patch tokens attend
  to it and it changes them (a deep prompt); the ViT runs with gradients, and its blocks'
  norm1/norm2 train. Side block j reads block j (12 side blocks on a 12-block ViT).
- `OneWayViTTap` (variant light): meta tokens (default 12) attend to the block's tokens,
  which do not attend back (a one-way mask), so the ViT's own forward is unchanged and runs
  under no_grad; only the meta rows carry gradients through the frozen weights.
- `FeatureMapTap` (hierarchical/CNN backbones, both variants): timm's feature maps at
  strides 4, 8, 16, 32 under no_grad; the blocks of stage s read the map of stride 4 * 2^s.
  No meta tokens. The light variant pools maps to at most 14 x 14 positions (its blocks
  attend to every position); the paper variant keeps them whole (it only resizes them).
Side block j of n reads the ViT's block ceil((j + 1) L / n) - 1 of L.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from adapt.errors import AdaptError
from adapt.methods.hst.paper import Reading, map_of

PYRAMID_STRIDES = (4, 8, 16, 32)


def read_blocks(depth: int, side_blocks: int) -> list[int]:
    """The ViT block each side block reads, spread evenly (block j of 12 on a 12-block ViT)."""
    return [-(-(j + 1) * depth // side_blocks) - 1 for j in range(side_blocks)]


def _timm_blocks(vit: VisionTransformer) -> None:
    if not all(isinstance(block, Block) for block in vit.blocks):
        raise AdaptError("hst supports timm ViT/DeiT blocks (timm.models.vision_transformer.Block) only")


class PromptedViTTap(nn.Module):
    """The paper's tap: a meta token joins every block's sequence; the blocks' LayerNorms train."""

    def __init__(self, vit: VisionTransformer, side_blocks: int, meta_tokens: int):
        super().__init__()
        _timm_blocks(vit)
        self.read_blocks = read_blocks(len(vit.blocks), side_blocks)
        self.meta_tokens = nn.ParameterList(
            nn.Parameter(nn.init.xavier_uniform_(torch.empty(1, meta_tokens, vit.embed_dim)))
            for _ in range(self.read_blocks[-1] + 1)
        )
        for block in vit.blocks[: len(self.meta_tokens)]:  # the blocks the side network's readings pass
            block.norm1.requires_grad_(True)
            block.norm2.requires_grad_(True)
        self.context_dims = [vit.embed_dim] * 4
        self.vit = [vit]  # in a list: the backbone is registered once, by HSTModel

    def forward(self, image: torch.Tensor) -> list[Reading]:
        vit = self.vit[0]
        x = vit.patch_embed(image)
        grid = tuple(x.shape[1:3]) if x.ndim == 4 else tuple(vit.patch_embed.grid_size)
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(x)))
        skip = vit.num_prefix_tokens
        readings = []
        for meta, block in zip(self.meta_tokens, vit.blocks):
            count = meta.shape[1]
            x = block(torch.cat([meta.expand(x.shape[0], -1, -1), x], dim=1))
            readings.append(Reading(map_of(x[:, count + skip :], grid), x[:, :count]))
            x = x[:, count:]
        return [readings[i] for i in self.read_blocks]


@contextmanager
def captured_outputs(modules: list[nn.Module]) -> Iterator[list]:
    """Collect what each of `modules` returns during the `with` body (one slot each)."""
    slots: list = [None] * len(modules)

    def keeper(index: int):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            slots[index] = output

        return hook

    handles = [module.register_forward_hook(keeper(i)) for i, module in enumerate(modules)]
    try:
        yield slots
    finally:
        for handle in handles:
            handle.remove()


def meta_through_block(block: Block, meta: torch.Tensor, patch_qkv: torch.Tensor) -> torch.Tensor:
    """Meta tokens through a frozen ViT block, attending to themselves and to the block's
    tokens (whose qkv the block already computed), which do not attend back.

    Equal to the meta rows of `block(cat(meta, tokens), attn_mask)` with the tokens' rows
    masked off the meta columns (tested), at the cost of only the meta rows."""
    attn = block.attn
    batch, count, _ = meta.shape
    x = block.norm1(meta)
    q, k, v = attn.qkv(x).unflatten(-1, (3, attn.num_heads, attn.head_dim)).permute(2, 0, 3, 1, 4)
    patch_k, patch_v = patch_qkv.unflatten(-1, (3, attn.num_heads, attn.head_dim)).permute(2, 0, 3, 1, 4)[1:]
    q, k = attn.q_norm(q), attn.k_norm(torch.cat([k, patch_k], dim=2))
    mixed = F.scaled_dot_product_attention(q, k, torch.cat([v, patch_v], dim=2))
    mixed = attn.norm(mixed.transpose(1, 2).reshape(batch, count, attn.attn_dim))
    if getattr(attn, "gate", None) is not None:
        mixed = mixed * attn.gate(x).sigmoid()
    meta = meta + block.ls1(attn.proj(mixed))
    return meta + block.ls2(block.mlp(block.norm2(meta)))


class OneWayViTTap(nn.Module):
    """The light tap: per side block, meta tokens that read the frozen ViT's block one way."""

    def __init__(self, vit: VisionTransformer, side_blocks: int, meta_tokens: int):
        super().__init__()
        _timm_blocks(vit)
        self.read_blocks = read_blocks(len(vit.blocks), side_blocks)
        self.meta_tokens = nn.Parameter(torch.empty(side_blocks, meta_tokens, vit.embed_dim).normal_(0, 0.02))
        self.context_dims = [vit.embed_dim] * side_blocks
        self.vit = [vit]

    def forward(self, image: torch.Tensor) -> list[Reading]:
        vit = self.vit[0]
        blocks = [vit.blocks[i] for i in self.read_blocks]
        indices = sorted(set(self.read_blocks))
        with torch.no_grad(), captured_outputs([b.attn.qkv for b in blocks]) as patch_qkvs:
            maps = vit.forward_intermediates(image, indices=indices, output_fmt="NCHW", intermediates_only=True)
        grids = dict(zip(indices, maps))
        readings = []
        for meta, block, index, patch_qkv in zip(self.meta_tokens, blocks, self.read_blocks, patch_qkvs):
            readings.append(Reading(grids[index], meta_through_block(block, meta.expand(image.shape[0], -1, -1), patch_qkv)))
        return readings


class FeatureMapTap(nn.Module):
    """Readings from a frozen hierarchical backbone's feature maps at strides 4..32 (no meta tokens)."""

    def __init__(self, backbone: nn.Module, depths: tuple[int, ...], max_side: int | None):
        super().__init__()
        info = getattr(backbone, "feature_info", None)
        if info is None or not hasattr(backbone, "forward_intermediates"):
            raise AdaptError(f"hst needs a ViT or a timm backbone with feature maps; {type(backbone).__name__} has neither")
        strides = [entry["reduction"] for entry in info]
        missing = [s for s in PYRAMID_STRIDES if s not in strides]
        if missing:
            raise AdaptError(f"hst needs feature maps at strides 4, 8, 16, 32; {type(backbone).__name__} has {strides}")
        self.levels = [strides.index(s) for s in PYRAMID_STRIDES]
        self.repeats = list(depths)
        self.max_side = max_side
        stage_dims = [info[i]["num_chs"] for i in self.levels]
        self.context_dims = stage_dims if max_side is None else [c for c, d in zip(stage_dims, depths) for _ in range(d)]
        self.backbone = [backbone]

    def forward(self, image: torch.Tensor) -> list[Reading]:
        with torch.no_grad():
            maps = self.backbone[0].forward_intermediates(image, indices=self.levels, intermediates_only=True)
        readings = []
        for feature_map, repeat in zip(maps, self.repeats):
            if self.max_side is not None:
                side = (min(feature_map.shape[2], self.max_side), min(feature_map.shape[3], self.max_side))
                feature_map = F.adaptive_avg_pool2d(feature_map, side)
            readings += [Reading(feature_map, None)] * repeat
        return readings
