"""HST's side network as in the paper's official code (AFeng-x/HST, models/vit_hsn.py).

Four stages (widths 32/48/64/72, depths 3/3/3/3, heads 2/4/8/12, MLP ratio 4) at 1/4,
1/8, 1/16 and 1/32 of the input. The stem is conv3x3 s2 + BatchNorm + ReLU + conv2x2 s2,
then LayerNorm; each later stage starts with a conv3x3 s2 + LayerNorm. Each stage has
one shared bridge (Linear, backbone width -> stage width) for everything it reads. A side
block reads one backbone level (`Reading`): its patch map, bridged and bilinearly resized
to the stage's resolution (the fine-grained features), and the level's meta tokens,
bridged and layer-normalized (one LayerNorm per block). The block's positions attend (q,
k, v, proj) to [meta tokens, mean of the fine-grained features]; the fine-grained
features are then added to the positions; an MLP follows. The attention and the MLP each go
through DropPath (stochastic depth) at rates rising linearly from 0 to `drop_path` over the
side network's 12 blocks (the official `dpr_new`, vit_hsn.py L222-233 and vit_custom_modules.py
L178, L201-203, with the run's drop_path_rate). The head is BatchNorm1d (no affine) + Linear on
the mean of the last stage's positions.

Departures, both exact or nearly: the bridge runs before the resize (bilinear weights sum
to one, so this equals the official resize-then-bridge, and costs less when the stage
map is larger than the backbone's), and the stem's 2x2 conv pads odd sides so that every
level has ceil(H / s) x ceil(W / s) positions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

PAPER_HEADS = (2, 4, 8, 12)
PAPER_MLP_RATIO = 4.0
EPS = 1e-6  # the official norm_layer: LayerNorm(eps=1e-6)


class Reading(NamedTuple):
    """What one side block reads from the backbone."""

    grid: torch.Tensor  # (B, C, h, w) the level's patch tokens or feature map
    meta: torch.Tensor | None  # (B, m, C) the level's meta tokens; None on backbones without them


def init_weights(module: nn.Module) -> None:
    """The official initialisation: Linear trunc-normal(0.02) with zero bias; conv normal(0,
    sqrt(2 / fan_out)) with zero bias; norms ones and zeros."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def tokens_of(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)


def map_of(tokens: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return tokens.transpose(1, 2).unflatten(2, size)


class Stem(nn.Module):
    """conv3x3 s2 (no bias) + BatchNorm + ReLU + conv2x2 s2, then LayerNorm over channels: 1/4 resolution."""

    def __init__(self, width: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, width, 3, 2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, width, 2, 2))  # fmt: skip
        self.norm = nn.LayerNorm(width)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.conv[:3](image)
        x = self.conv[3](F.pad(x, (0, x.shape[3] % 2, 0, x.shape[2] % 2)))
        return map_of(self.norm(tokens_of(x)), x.shape[2:])


class Downsample(nn.Module):
    """conv3x3 s2 (padding 1: ceil(H/2)) + LayerNorm over channels (the official OverlapPatchEmbed)."""

    def __init__(self, width_in: int, width_out: int):
        super().__init__()
        self.proj = nn.Conv2d(width_in, width_out, 3, 2, padding=1)
        self.norm = nn.LayerNorm(width_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        return map_of(self.norm(tokens_of(x)), x.shape[2:])


class CrossAttention(nn.Module):
    """Positions (queries) attend to a few context tokens (keys and values), with q, k, v and out projections."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = (nn.Linear(width, width) for _ in range(3))
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        def split(t: torch.Tensor) -> torch.Tensor:
            return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)

        mixed = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(context)), split(self.v(context)))
        return self.proj(mixed.transpose(1, 2).flatten(2))


class SideBlock(nn.Module):
    """x + drop_path(attn(norm1(x) -> context)); + the fine-grained features; + drop_path(mlp(norm2(x))).
    On tokens (B, hw, width)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=EPS)
        self.attn = CrossAttention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=EPS)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, context: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), context))
        x = x + fine
        return x + self.drop_path(self.mlp(self.norm2(x)))


class BatchNormHead(nn.Module):
    """BatchNorm1d without affine, then Linear. A training batch of one is normalized with the
    running statistics (batch statistics of one sample do not exist)."""

    def __init__(self, width: int, num_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(width, affine=False, eps=EPS)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        if self.training and pooled.shape[0] == 1:
            pooled = F.batch_norm(pooled, self.norm.running_mean, self.norm.running_var, eps=EPS)
        else:
            pooled = self.norm(pooled)
        return self.fc(pooled)


class PaperSideNetwork(nn.Module):
    """Stem + four stages of side blocks, each stage with one bridge; the head on the pooled last stage.

    context_dims: the backbone's channel count at each stage; meta_tokens: whether readings carry them;
    drop_path: the last side block's stochastic depth (module docstring)."""

    def __init__(
        self,
        widths: Sequence[int],
        depths: Sequence[int],
        heads: Sequence[int],
        context_dims: Sequence[int],
        meta_tokens: bool,
        mlp_ratio: float,
        num_classes: int,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.depths = list(depths)
        rates = iter(torch.linspace(0, drop_path, sum(depths)).tolist())
        self.stem = Stem(widths[0])
        self.downsamples = nn.ModuleList([Downsample(a, b) for a, b in zip(widths, widths[1:])])
        self.bridges = nn.ModuleList(nn.Linear(c, w) for c, w in zip(context_dims, widths))
        per_block = [w for w, d in zip(widths, depths) for _ in range(d)]
        self.meta_norms = nn.ModuleList(nn.LayerNorm(w) for w in per_block) if meta_tokens else None
        self.stages = nn.ModuleList(
            nn.ModuleList(SideBlock(w, h, mlp_ratio, next(rates)) for _ in range(d)) for w, d, h in zip(widths, depths, heads)
        )
        self.stage_norms = nn.ModuleList(nn.LayerNorm(w, eps=EPS) for w in widths)
        self.head = BatchNormHead(widths[-1], num_classes)
        self.apply(init_weights)

    def pyramid(self, image: torch.Tensor, readings: Sequence[Reading]) -> list[torch.Tensor]:
        """The four normalized stage outputs, as maps at strides 4, 8, 16 and 32."""
        readings = iter(readings)
        block_index = 0
        levels = []
        x = self.stem(image)
        for stage, (bridge, blocks, norm) in enumerate(zip(self.bridges, self.stages, self.stage_norms)):
            if stage:
                x = self.downsamples[stage - 1](x)
            size = x.shape[2:]
            tokens = tokens_of(x)
            grid = None
            for block in blocks:
                reading = next(readings)
                if reading.grid is not grid:  # a CNN stage's blocks all read one map: bridge and resize it once
                    grid = reading.grid
                    fine = tokens_of(F.interpolate(map_of(bridge(tokens_of(grid)), grid.shape[2:]), size=size,
                                                   mode="bilinear", align_corners=False))  # fmt: skip
                    global_token = fine.mean(dim=1, keepdim=True)
                context = global_token
                if self.meta_norms is not None:
                    meta = self.meta_norms[block_index](bridge(reading.meta))
                    context = torch.cat([meta, global_token], dim=1)
                tokens = block(tokens, context, fine)
                block_index += 1
            x = map_of(norm(tokens), size)
            levels.append(x)
        return levels

    def forward(self, image: torch.Tensor, readings: Sequence[Reading]) -> torch.Tensor:
        return self.head(self.pyramid(image, readings)[-1].mean(dim=(2, 3)))
