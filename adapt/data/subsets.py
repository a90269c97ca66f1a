"""Datasets restricted to some of their classes, relabeled (continual tasks, evaluating a subset)."""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset, Subset


def dataset_targets(dataset: Dataset) -> list[int]:
    """The label of every item, read without decoding images where the dataset allows."""
    if isinstance(dataset, Subset):
        targets = dataset_targets(dataset.dataset)
        return [targets[i] for i in dataset.indices]
    if hasattr(dataset, "targets"):
        return list(dataset.targets)
    return [int(dataset[i][1]) for i in range(len(dataset))]


class RelabeledSubset(Dataset):
    """The items of `dataset` at `indices`, with labels mapped through `relabel`."""

    def __init__(self, dataset: Dataset, indices: list[int], relabel: dict[int, int]):
        self.dataset, self.indices, self.relabel = dataset, indices, relabel
        targets = dataset_targets(dataset)
        self.targets = [relabel[targets[i]] for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, _ = self.dataset[self.indices[index]]
        return image, self.targets[index]


def classes_subset(dataset: Dataset, names: list[str], wanted: list[str]) -> RelabeledSubset:
    """The items of the classes `wanted` (by name, among the dataset's `names`), labeled by position in `wanted`."""
    relabel = {names.index(name): position for position, name in enumerate(wanted)}
    return RelabeledSubset(dataset, [i for i, t in enumerate(dataset_targets(dataset)) if t in relabel], relabel)
