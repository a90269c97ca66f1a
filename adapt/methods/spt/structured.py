"""SPT's structured part: a LoRA or an adapter beside a frozen Linear/Conv2d, or beside a block of
its output rows (q, k or v of a ViT's fused qkv, which the paper treats as three matrices).

As in the released code: LoRA is down (kaiming) then up (zeros), no bias; the adapter is
down -> GELU -> up with biases (up and its bias start at zero), costed 2 * rows * r + r + rows;
the input goes through Dropout and the output through DropPath (0.1 each by default). Both
start as the unchanged layer. LoRA folds into the weight (W[rows] += scaling * up @ down);
the adapter's GELU makes it non-linear, so a model with adapters cannot be merged.
"""

from __future__ import annotations

import math

import torch
from timm.layers import DropPath
from torch import nn

from adapt.kernels import add_low_rank_

KINDS = ("lora", "adapter")


class StructuredDelta(nn.Module):
    """The structured module for output rows [start, stop) of `layer` (all rows: the whole layer)."""

    def __init__(self, layer: nn.Module, rows: tuple[int, int], kind: str, rank: int, alpha: float,
                 dropout: float = 0.1, drop_path: float = 0.1):  # fmt: skip
        super().__init__()
        self.rows, self.kind = rows, kind
        adapter = kind == "adapter"
        outputs = rows[1] - rows[0]
        if isinstance(layer, nn.Linear):
            self.down = nn.Linear(layer.in_features, rank, bias=adapter)
            self.up = nn.Linear(rank, outputs, bias=adapter)
        elif isinstance(layer, nn.Conv2d) and layer.groups == 1:  # down sees the input as the layer does
            self.down = type(layer)(layer.in_channels, rank, layer.kernel_size, layer.stride, layer.padding,
                                    layer.dilation, bias=adapter)  # fmt: skip
            self.up = nn.Conv2d(rank, outputs, 1, bias=adapter)
        else:
            raise TypeError(f"no structured module for {type(layer).__name__}")
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)
        if adapter:
            nn.init.zeros_(self.up.bias)
        self.act = nn.GELU() if adapter else nn.Identity()
        self.scaling = 1.0 if adapter else alpha / rank
        self.dropout = nn.Dropout(dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop_path(self.up(self.act(self.down(self.dropout(x)))) * self.scaling)

    def fold_into(self, weight: torch.Tensor) -> None:
        """W[rows] += scaling * up @ down, in place (LoRA only)."""
        if self.kind != "lora":
            raise ValueError("an adapter is non-linear and cannot be folded into a weight")
        start, stop = self.rows
        with torch.no_grad():
            add_low_rank_(weight[start:stop], self.up.weight.flatten(1), self.down.weight.flatten(1), self.scaling)


class WithStructured:
    """Mixin over a Linear/Conv2d: its output plus each structured module's, in that module's rows."""

    structured: nn.ModuleDict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        channel = -1 if isinstance(self, nn.Linear) else 1
        for module in self.structured.values():
            start, stop = module.rows
            out.narrow(channel, start, stop - start).add_(module(x))  # the layer's backward does not need `out`
        return out
