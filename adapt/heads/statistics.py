"""Running feature statistics per class: what a head needs to be fitted without gradients.

The `prototype` learner (PILOT's SimpleCIL) never trains: after each task it adds the
task's features here, and the head sets its class vectors from them
(`IncrementalHead.fit_prototypes`). Only sums are kept, never images or features, so old
classes need no stored data.
"""

from __future__ import annotations

import torch


class FeatureStatistics:
    """Per class: the sum and count of its features; over all: the Gram matrix of [features, 1]."""

    def __init__(self, feature_dim: int):
        self.feature_dim = feature_dim
        self.sums: dict[int, torch.Tensor] = {}
        self.counts: dict[int, int] = {}
        self.gram = torch.zeros(feature_dim + 1, feature_dim + 1, dtype=torch.float64)

    def add(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        features = features.detach().to(torch.float64).cpu()
        for label in labels.unique().tolist():
            rows = features[labels.cpu() == label]
            self.sums[label] = self.sums.get(label, torch.zeros(self.feature_dim, dtype=torch.float64)) + rows.sum(0)
            self.counts[label] = self.counts.get(label, 0) + len(rows)
        augmented = torch.cat([features, torch.ones(len(features), 1, dtype=torch.float64)], dim=1)
        self.gram += augmented.T @ augmented

    def state(self) -> dict[str, torch.Tensor]:
        """As tensors (a resumed continual run reads them back with `from_state`)."""
        classes = sorted(self.counts)
        return {"gram": self.gram, "classes": torch.tensor(classes, dtype=torch.int64),
                "counts": torch.tensor([self.counts[c] for c in classes], dtype=torch.int64),
                "sums": torch.stack([self.sums[c] for c in classes]) if classes else torch.zeros(0, self.feature_dim)}

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor]) -> FeatureStatistics:
        statistics = cls(tensors["gram"].shape[0] - 1)
        statistics.gram = tensors["gram"].to(torch.float64).clone()
        for label, count, row in zip(tensors["classes"].tolist(), tensors["counts"].tolist(), tensors["sums"]):
            statistics.sums[label], statistics.counts[label] = row.to(torch.float64).clone(), count
        return statistics

    @property
    def num_classes(self) -> int:
        return len(self.counts)

    def classes(self) -> range:
        """0, 1, …, num_classes - 1: the classes in order; every one of them must have been seen."""
        missing = [c for c in range(self.num_classes) if c not in self.counts]
        if missing:
            raise ValueError(f"no features for class {missing[0]}")
        return range(self.num_classes)

    def means(self) -> torch.Tensor:
        """(classes, feature_dim) class means, in class order."""
        return torch.stack([self.sums[c] / self.counts[c] for c in self.classes()])

    def augmented_sums(self) -> torch.Tensor:
        """(classes, feature_dim + 1): each class's sum of [features, 1]."""
        classes = self.classes()
        counts = torch.tensor([float(self.counts[c]) for c in classes], dtype=torch.float64)
        return torch.cat([torch.stack([self.sums[c] for c in classes]), counts[:, None]], dim=1)
