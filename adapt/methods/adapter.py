"""A bottleneck adapter beside a layer: y = layer(x) + up(relu(down(x))).

SPT's alternative structured module ("SPT-Adapter"). `down` sees the layer's input the
way the layer does (a Linear, or a Conv2d with the same kernel, stride and padding),
`up` maps the r channels to the layer's outputs and starts at zero, so training starts
from the unchanged layer. Its cost is r * (inputs + outputs), as LoRA's. The ReLU makes
it non-linear: unlike LoRA it cannot be folded into the layer's weight.
"""

from __future__ import annotations

import torch
from torch import nn


class BottleneckAdapter(nn.Module):
    def __init__(self, layer: nn.Module, rank: int):
        super().__init__()
        if isinstance(layer, nn.Linear):
            self.down = nn.Linear(layer.in_features, rank, bias=False)
            self.up = nn.Linear(rank, layer.out_features, bias=False)
        elif isinstance(layer, nn.Conv2d) and layer.groups == 1:
            self.down = nn.Conv2d(layer.in_channels, rank, layer.kernel_size, layer.stride, layer.padding,
                                  layer.dilation, bias=False)  # fmt: skip
            self.up = nn.Conv2d(rank, layer.out_channels, 1, bias=False)
        else:
            raise TypeError(f"no bottleneck adapter for {type(layer).__name__}")
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(torch.relu(self.down(x)))

    def beside(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        """Forward hook on the adapted layer: add the adapter's output to the layer's."""
        return output + self(args[0])
