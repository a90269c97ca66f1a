"""Replay: an exemplar memory of fixed total size, balanced over the classes seen.

After each task the memory holds size // seen_classes exemplars per class (old classes give
up their last-chosen ones). Exemplars are chosen once per class, in a ranked order:
`herding` (iCaRL, Rebuffi et al. 2017) picks one at a time the image that brings the mean
of the chosen L2-normalized features closest to the class mean, with the features of the
model that has just learned the class; `random` is a seeded shuffle. As in PyCIL, herding and the class means see the images
through the test transform (`plain`); replay trains on the exemplars through the training
transform.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, Dataset, Subset

from adapt.data.subsets import dataset_targets
from adapt.errors import AdaptError

SELECTIONS = ("herding", "random")


def herding_order(features: torch.Tensor, count: int) -> list[int]:
    """Indices of `count` rows whose running mean best tracks the mean of all rows."""
    features = F.normalize(features, dim=-1)
    target = features.mean(dim=0)
    chosen: list[int] = []
    total = torch.zeros_like(target)
    available = torch.ones(len(features), dtype=torch.bool)
    for k in range(1, min(count, len(features)) + 1):
        distance = (target - (total + features) / k).norm(dim=-1)
        distance[~available] = float("inf")
        best = int(distance.argmin())
        chosen.append(best)
        available[best] = False
        total += features[best]
    return chosen


class ExemplarMemory:
    def __init__(self, size: int, selection: str = "herding", seed: int = 0):
        if size < 1:
            raise AdaptError(f"replay needs a memory of at least 1 image, got {size}")
        if selection not in SELECTIONS:
            raise AdaptError(f"unknown exemplar selection {selection!r} (choose from {', '.join(SELECTIONS)})")
        self.size, self.selection, self.seed = size, selection, seed
        # class -> (training dataset, the same images unaugmented, its images best first)
        self.ranked: dict[int, tuple[Dataset, Dataset, list[int]]] = {}

    def per_class(self) -> int:
        return self.size // max(len(self.ranked), 1)

    def add_task(self, train: Dataset, features: Callable[[Dataset], torch.Tensor], plain: Dataset | None = None) -> None:
        """Rank the exemplars of each class in `train`; `features(subset)` embeds images in order, taken from
        `plain` (the same images through the test transform) when given."""
        plain = plain if plain is not None else train
        targets = dataset_targets(train)
        classes = sorted(set(targets))
        keep = self.size // (len(self.ranked) + len(classes))
        for label in classes:
            indices = [i for i, t in enumerate(targets) if t == label]
            if self.selection == "herding":
                order = herding_order(features(Subset(plain, indices)), keep)
            else:
                generator = torch.Generator().manual_seed(self.seed * 1_000 + label)
                order = torch.randperm(len(indices), generator=generator)[:keep].tolist()
            self.ranked[label] = (train, plain, [indices[i] for i in order])

    def dataset(self) -> Dataset:
        """The current exemplars: the first per_class() of each class's ranking."""
        return ConcatDataset([self.exemplars(label) for label in self.ranked])

    def exemplars(self, label: int, plain: bool = False) -> Dataset:
        """The current exemplars of one class (`plain`: through the test transform)."""
        train, unaugmented, ranked = self.ranked[label]
        return Subset(unaugmented if plain else train, ranked[: self.per_class()])

    def ranking(self) -> dict[str, list[int]]:
        """Each class's ranked image indices (JSON keys): with the tasks' data, all a resumed run needs."""
        return {str(label): ranked for label, (_, _, ranked) in self.ranked.items()}

    def restore(self, ranking: dict[str, list[int]], datasets: Callable[[int], tuple[Dataset, Dataset]]) -> None:
        """Undo `ranking()`; `datasets(label)` gives the (training, unaugmented) images of the class's task."""
        self.ranked = {int(label): (*datasets(int(label)), list(ranked)) for label, ranked in ranking.items()}

    def counts(self) -> dict[int, int]:
        keep = self.per_class()
        return {label: min(keep, len(ranked)) for label, (_, _, ranked) in self.ranked.items()}
