"""The contract of a classifier head that grows by tasks (class-incremental learning)."""

from __future__ import annotations

import torch
from torch import nn


class IncrementalHead(nn.Module):
    """Scores features against every class added so far, in the order added.

    A head has no output for a class it has not been given, so it can never predict one."""

    def __init__(self, feature_dim: int):
        super().__init__()
        self.feature_dim = feature_dim
        self.class_names: list[str] = []

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def add_classes(self, names: list[str]) -> None:
        """Give the head outputs for `names` after the existing ones; old outputs keep their parameters."""
        self.grow(names)
        self.class_names += list(names)

    def grow(self, names: list[str]) -> None:
        raise NotImplementedError

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
