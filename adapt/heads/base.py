"""The contract of a classifier head that grows by tasks (class-incremental learning)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from adapt.heads.statistics import FeatureStatistics


class IncrementalHead(nn.Module):
    """Scores features against every class added so far, in the order added.

    A head has no output for a class it has not been given, so it can never predict one."""

    kind: str = ""  # its name in the registry (adapt.heads.HEADS)

    def __init__(self, feature_dim: int):
        super().__init__()
        self.feature_dim = feature_dim
        self.class_names: list[str] = []
        self.task_sizes: list[int] = []

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def add_classes(self, names: list[str]) -> None:
        """Give the head outputs for `names` after the existing ones; old outputs keep their parameters."""
        self.grow(names)
        self.class_names += list(names)
        self.task_sizes.append(len(names))

    def grow(self, names: list[str]) -> None:
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        """The constructor options that rebuild this head (saved in checkpoints)."""
        return {}

    def restore(self, class_names: list[str], task_sizes: list[int], state: dict[str, torch.Tensor]) -> None:
        """Give an empty head the shape of a saved one (its tensors are loaded afterwards).

        `state` holds the saved head tensors (keys relative to the head), for heads whose
        shape depends on them."""
        start = 0
        for size in task_sizes:
            self.add_classes(class_names[start : start + size])
            start += size

    def as_linear(self) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """(weight, bias, exact): a linear classifier for merging into a plain timm head.

        exact is False when the head normalizes features: the folded classifier then gives
        every image's scores times one positive factor, so its ranking of the classes (top-1,
        top-k) is the same but its probabilities are not."""
        raise NotImplementedError

    def fit_prototypes(self, statistics: FeatureStatistics) -> None:
        """Set every class's parameters from feature statistics instead of gradients (the
        `prototype` learner); `statistics` covers every class the head has."""
        raise NotImplementedError

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
