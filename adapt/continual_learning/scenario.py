"""Class-incremental scenarios: a dataset's classes in a seeded order, split into tasks.

Task 0 holds `initial` classes, every later task `increment` more (the last one what is
left). Labels are renumbered to the class's position in the order, so a model's output j
is always the j-th class seen. The class names travel with the tasks (digits: "zero" …
"nine"; folders: folder names; VTAB: a task's classnames.txt, else the label numbers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from adapt.backbones import EMBEDDED_BACKBONE, preprocessing
from adapt.data import DataSplits, image_size_for, load_data
from adapt.data.subsets import RelabeledSubset, dataset_targets
from adapt.errors import AdaptError, term


@dataclass
class Task:
    index: int
    classes: range  # output positions of this task's classes
    class_names: list[str]
    train: Dataset
    val: Dataset | None
    test: Dataset
    train_plain: Dataset  # train's images through the test transform: herding, class means, prototypes (as PyCIL)


@dataclass
class Scenario:
    name: str
    class_names: list[str]  # in scenario order
    tasks: list[Task]
    image_size: int
    backbone: str
    task_incremental: bool = False  # evaluate each task with its own classes only (the task id is given)
    spec: str = ""  # the data spec the classes come from (what `adapt eval` reloads)

    @classmethod
    def from_splits(
        cls,
        splits: DataSplits,
        initial: int,
        increment: int,
        seed: int,
        image_size: int,
        backbone: str,
        task_incremental: bool = False,
    ) -> Scenario:
        count = splits.num_classes
        if not 1 <= initial <= count or increment < 1:
            raise AdaptError(f"{splits.name} has {count} classes: need 1 <= {term('initial')} <= {count} and {term('increment')} >= 1")
        order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
        relabel = {label: position for position, label in enumerate(order)}
        bounds = [0, *range(initial, count, increment), count]
        tasks = []
        for index, (start, stop) in enumerate(zip(bounds, bounds[1:])):
            chosen = set(order[start:stop])

            def part(dataset: Dataset | None) -> Dataset | None:
                if dataset is None:
                    return None
                return RelabeledSubset(dataset, [i for i, t in enumerate(dataset_targets(dataset)) if t in chosen], relabel)

            names = [splits.class_names[label] for label in order[start:stop]]
            tasks.append(Task(index, range(start, stop), names, part(splits.train), part(splits.held_out_val),
                              part(splits.test), part(splits.unaugmented_train)))  # fmt: skip
        names = [splits.class_names[label] for label in order]
        return cls(splits.name, names, tasks, image_size, backbone, task_incremental, splits.spec)


def class_incremental(
    data: str = "digits",
    initial: int = 2,
    increment: int = 2,
    seed: int = 0,
    backbone: str = EMBEDDED_BACKBONE,
    image_size: int | None = None,
    task_incremental: bool = False,
    limit: int | None = None,
) -> Scenario:
    """Load `data` preprocessed for `backbone` and split its classes into tasks (order from `seed`)."""
    defaults = preprocessing(backbone)
    size = image_size_for(data, image_size, defaults.image_size)
    splits = load_data(data, size, defaults.mean, defaults.std, limit=limit, seed=seed)
    return Scenario.from_splits(splits, initial, increment, seed, size, backbone, task_incremental)
