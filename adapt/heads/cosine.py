"""Cosine classifier: learned class vectors, scored by scaled cosine similarity.

Normalizing both sides removes the bias of new classes' larger weight norms that a plain
linear head builds up in class-incremental learning."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adapt.heads.base import IncrementalHead
from adapt.heads.statistics import FeatureStatistics

INITIAL_SCALE = 16.0


class CosineHead(IncrementalHead):
    kind = "cosine"

    def __init__(self, feature_dim: int):
        super().__init__(feature_dim)
        self.blocks = nn.ParameterList()
        self.scale = nn.Parameter(torch.tensor(INITIAL_SCALE))

    def grow(self, names: list[str]) -> None:
        weight = torch.empty(len(names), self.feature_dim)
        nn.init.kaiming_uniform_(weight, a=5**0.5)
        self.blocks.append(nn.Parameter(weight))

    @torch.no_grad()
    def fit_prototypes(self, statistics: FeatureStatistics) -> None:
        """SimpleCIL: each class vector is the mean of its features (scored by cosine)."""
        for block, rows in zip(self.blocks, statistics.means().float().split(self.task_sizes)):
            block.copy_(rows)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        weights = F.normalize(torch.cat(list(self.blocks)), dim=-1)
        return self.scale * F.normalize(features, dim=-1) @ weights.T

    def as_linear(self) -> tuple[torch.Tensor, torch.Tensor, bool]:
        weights = self.scale.detach() * F.normalize(torch.cat(list(self.blocks)).detach(), dim=-1)
        return weights, torch.zeros(len(weights)), False  # drops only the per-image 1/|features|
