"""Datasets restricted to some of their classes, relabeled (continual tasks, evaluating a subset)."""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset, Subset

from adapt.errors import AdaptError


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


def align_classes(dataset: Dataset, data_names: list[str], model_names: list[str], source: str = "the checkpoint") -> Dataset:
    """`dataset` labeled as the model's outputs are ordered: by class name.

    A model whose classes are the data's in another order (a continual run's scenario order), or a
    subset of them (a continual task), scores each image against its own output for that name. Names
    that share nothing with the data's (e.g. a VTAB task without names: "0", "1", ...) fall back to
    position, where the counts agree; a partial overlap is refused, as no mapping is right."""
    if model_names == data_names:
        return dataset
    known = set(model_names)
    if len(known) == len(model_names) and known <= set(data_names):
        return classes_subset(dataset, data_names, model_names)
    if len(model_names) == len(data_names) and not known & set(data_names):
        return dataset
    missing = [name for name in model_names if name not in set(data_names)]
    raise AdaptError(f"{source} has {len(model_names)} classes, {len(missing)} of them not in the data "
                     f"(e.g. {missing[0]!r}); the data has {len(data_names)}: {', '.join(data_names[:5])}"
                     f"{' …' if len(data_names) > 5 else ''}")
