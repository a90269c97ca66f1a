"""HST's light side network (variant light): a small four-stage feature pyramid beside a frozen backbone.

A stem turns the raw image into a 1/4-resolution map; four stages (default widths
32/48/64/72, depths 3/3/3/3) each halve the resolution (the first keeps the stem's) and
end at 1/4, 1/8, 1/16 and 1/32 of the input. Every side block reads one `Reading` (the
backbone's patch map and, on a ViT, meta tokens): its own bridge (LayerNorm + Linear)
maps them to the block's width; the block's positions attend to them (cross-attention;
the bridged tokens serve as keys and values), the bridged patch map, bilinearly resized
to the block's resolution, is added (the fine-grained path, as in the paper's blocks),
then a convolutional feed-forward mixes neighbouring positions.
Spatial sizes round up at every halving, so a level at stride s has ceil(H/s) x ceil(W/s)
positions for any input size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn

from adapt.methods.hst.paper import Reading, map_of, tokens_of

HEAD_DIM = 8  # attention heads have 8 channels; every width must be a multiple of it


def stem_conv(channels_in: int, channels_out: int) -> nn.Conv2d:
    """A 3x3 stride-2 convolution: ceil(H/2) x ceil(W/2) out, for odd sizes too."""
    return nn.Conv2d(channels_in, channels_out, 3, stride=2, padding=1)


class Downsample(nn.Module):
    """Between stages: normalize, then a 2x2 stride-2 convolution over the map padded to
    even sides, so that odd sizes round up like the stem's."""

    def __init__(self, channels_in: int, channels_out: int):
        super().__init__()
        self.norm = LayerNorm2d(channels_in)
        self.conv = nn.Conv2d(channels_in, channels_out, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        return self.conv(F.pad(x, (0, x.shape[3] % 2, 0, x.shape[2] % 2)))


class SideBlock(nn.Module):
    """x + cross-attention(x -> bridged reading) + the bridged patch map resized to x, then x + convolutional
    feed-forward(x)."""

    def __init__(self, width: int, context_dim: int, mlp_ratio: float):
        super().__init__()
        self.heads = width // HEAD_DIM
        self.bridge = nn.Sequential(nn.LayerNorm(context_dim, elementwise_affine=False), nn.Linear(context_dim, width))
        self.attention_norm = LayerNorm2d(width)
        self.query = nn.Linear(width, width)
        hidden = round(width * mlp_ratio)
        self.feed_forward = nn.Sequential(
            LayerNorm2d(width),
            nn.Conv2d(width, hidden, 1),
            nn.GELU(),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden),
            nn.GELU(),
            nn.Conv2d(hidden, width, 1),
        )

    def forward(self, x: torch.Tensor, reading: Reading) -> torch.Tensor:
        batch, width, height, breadth = x.shape
        patches = tokens_of(reading.grid)
        context = patches if reading.meta is None else torch.cat([reading.meta, patches], dim=1)
        bridged = self.bridge(context)
        keys = bridged.unflatten(-1, (self.heads, HEAD_DIM)).transpose(1, 2)
        positions = tokens_of(self.attention_norm(x))
        queries = self.query(positions).unflatten(-1, (self.heads, HEAD_DIM)).transpose(1, 2)
        mixed = F.scaled_dot_product_attention(queries, keys, keys)
        x = x + mixed.transpose(1, 2).reshape(batch, height * breadth, width).transpose(1, 2).view_as(x)
        fine = map_of(bridged[:, context.shape[1] - patches.shape[1] :], reading.grid.shape[2:])
        x = x + F.interpolate(fine, size=(height, breadth), mode="bilinear", align_corners=False)
        return x + self.feed_forward(x)


class LightSideNetwork(nn.Module):
    """Stem + four stages of side blocks + a head on the pooled, normalized last level.

    context_dims: the channel count of each block's context, one per block in stage order."""

    def __init__(
        self,
        widths: Sequence[int],
        depths: Sequence[int],
        context_dims: Sequence[int],
        mlp_ratio: float,
        num_classes: int,
    ):
        super().__init__()
        if len(context_dims) != sum(depths):
            raise ValueError(f"{sum(depths)} side blocks need as many contexts, got {len(context_dims)}")
        self.stem = nn.Sequential(stem_conv(3, widths[0] // 2), nn.GELU(), stem_conv(widths[0] // 2, widths[0]))
        self.downsamples = nn.ModuleList([nn.Identity()] + [Downsample(a, b) for a, b in zip(widths, widths[1:])])
        dims = iter(context_dims)
        self.stages = nn.ModuleList(
            nn.ModuleList(SideBlock(width, next(dims), mlp_ratio) for _ in range(depth))
            for width, depth in zip(widths, depths)
        )
        self.level_norms = nn.ModuleList(LayerNorm2d(width) for width in widths)
        self.head_norm = nn.LayerNorm(widths[-1])
        self.head = nn.Linear(widths[-1], num_classes)

    def pyramid(self, image: torch.Tensor, readings: Sequence[Reading]) -> list[torch.Tensor]:
        """The four normalized levels, at strides 4, 8, 16 and 32."""
        readings = iter(readings)
        x = self.stem(image)
        levels = []
        for downsample, blocks, norm in zip(self.downsamples, self.stages, self.level_norms):
            x = downsample(x)
            for block in blocks:
                x = block(x, next(readings))
            levels.append(norm(x))
        return levels

    def forward(self, image: torch.Tensor, readings: Sequence[Reading]) -> torch.Tensor:
        pooled = self.pyramid(image, readings)[-1].mean(dim=(2, 3))
        return self.head(self.head_norm(pooled))
