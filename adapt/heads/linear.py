"""The usual classifier: one learned weight row and bias per class, a block per task."""

from __future__ import annotations

import torch
from torch import nn

from adapt.heads.base import IncrementalHead
from adapt.heads.statistics import FeatureStatistics


class LinearHead(IncrementalHead):
    kind = "linear"

    def __init__(self, feature_dim: int):
        super().__init__(feature_dim)
        self.blocks = nn.ModuleList()

    def grow(self, names: list[str]) -> None:
        self.blocks.append(nn.Linear(self.feature_dim, len(names)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.cat([block(features) for block in self.blocks], dim=-1)

    @torch.no_grad()
    def fit_prototypes(self, statistics: FeatureStatistics) -> None:
        """Nearest class mean: w_c = mean_c, b_c = -|mean_c|^2 / 2, so the largest score is the
        class whose mean is closest in Euclidean distance."""
        for block, rows in zip(self.blocks, statistics.means().float().split(self.task_sizes)):
            block.weight.copy_(rows)
            block.bias.copy_(-0.5 * rows.pow(2).sum(-1))

    def as_linear(self) -> tuple[torch.Tensor, torch.Tensor, bool]:
        weight = torch.cat([block.weight for block in self.blocks]).detach()
        return weight, torch.cat([block.bias for block in self.blocks]).detach(), True
