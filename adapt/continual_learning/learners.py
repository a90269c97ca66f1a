"""Continual learners: how each task is trained, and what is kept from one task to the next.

A learner sees the run at four points: `begin_task` (before the head grows; LwF and iCaRL
keep a frozen copy of the model here), `train_data` (the task's images, plus exemplars for
replay and iCaRL), `loss` (the objective the Trainer minimizes) and `end_task` (after
training: the exemplar memory, iCaRL's class means, the prototypes; these see the task's
images through the test transform, as PyCIL's do). `scorer` is the model that is tested.
Every learner works with every head (adapt.heads).

| learner | trains | keeps | objective | reference |
|---|---|---|---|---|
| naive | yes | nothing | cross-entropy on the task's classes (or all seen: loss=all-seen) | PyCIL's finetune |
| replay | yes | exemplars | cross-entropy on task + exemplars | experience replay |
| lwf | yes | the old model | CE on the task's classes + distillation on old logits | Li & Hoiem 2017 |
| icarl | yes | exemplars, old model | CE on all + distillation; head or NME classifier | Rebuffi et al. 2017 |
| prototype | no | class statistics | none: the head is set from class means | PILOT SimpleCIL |
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from adapt.config import NoOptions, build, option, validate
from adapt.continual_learning.losses import icarl_loss, lwf_loss
from adapt.continual_learning.memory import SELECTIONS, ExemplarMemory
from adapt.continual_learning.scenario import Scenario, Task
from adapt.data.subsets import dataset_targets
from adapt.errors import AdaptError, term
from adapt.heads import ContinualModel
from adapt.heads.statistics import FeatureStatistics
from adapt.train import classification_loss


@torch.no_grad()
def features(model: ContinualModel, images: Dataset, batch_size: int = 128) -> torch.Tensor:
    """Backbone features of `images`, in order, in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = [model.backbone(batch.to(device)).cpu() for batch, _ in DataLoader(images, batch_size=batch_size)]
    model.train(was_training)
    return torch.cat(out)


class FrozenCopy:
    """The model as it was before a task, for distillation: a deep copy, frozen, in eval mode."""

    def __init__(self, model: nn.Module):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        self.model.to(images.device)
        return self.model(images)


class NearestMeanOfExemplars(nn.Module):
    """iCaRL's classifier: the class whose mean of L2-normalized exemplar features is nearest.
    With normalized means and features, the nearest mean is the one of largest dot product."""

    def __init__(self, backbone: nn.Module, means: torch.Tensor):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("means", F.normalize(means, dim=-1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone(images), dim=-1) @ self.means.T


@dataclasses.dataclass
class NaiveOptions:
    # new-classes: CE over the task's own logits (PyCIL's finetune, models/finetune.py); all-seen: CE over every seen class
    loss: str = option("new-classes", choices=("new-classes", "all-seen"))


@dataclasses.dataclass
class ReplayOptions:
    memory: int = option(200, low=1, high=10_000_000)  # exemplars kept in total, balanced over classes
    selection: str = option("herding", choices=SELECTIONS)


@dataclasses.dataclass
class LwFOptions:
    distill_weight: float = option(3.0, low=0, high=1_000)  # PyCIL's lamda
    temperature: float = option(2.0, low=0, low_open=True, high=100)


@dataclasses.dataclass
class ICaRLOptions(ReplayOptions, LwFOptions):
    distill_weight: float = option(1.0, low=0, high=1_000)  # PyCIL's iCaRL adds the two losses
    classifier: str = option("head", choices=("head", "nme"))  # nme: nearest mean of exemplars


class Learner:
    """The contract, and what most learners share: training on a task's images with cross-entropy
    over every class seen so far."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    config_class: ClassVar[type] = NoOptions
    trains: ClassVar[bool] = True  # False: the head is set in end_task and no gradient step is taken

    def __init__(self, config: Any | None = None, seed: int = 0):
        self.config = config if config is not None else self.config_class()
        validate(self.config, f"learner {self.name}")
        self.seed = seed

    @classmethod
    def from_options(cls, options: dict[str, Any], seed: int = 0) -> Learner:
        return cls(build(cls.config_class, options, f"learner {cls.name}"), seed)

    def options(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    def check(self, scenario: Scenario) -> None:
        """Refuse a scenario this learner cannot run, before anything is trained or written."""

    def begin_task(self, model: ContinualModel, task: Task) -> None:
        """Before the head gains the task's classes."""

    def train_data(self, task: Task) -> Dataset:
        return task.train

    def loss(self, logits: torch.Tensor, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return classification_loss(logits, images, labels)

    def end_task(self, model: ContinualModel, task: Task) -> None:
        """After training on the task, before it is tested."""

    def scorer(self, model: ContinualModel) -> nn.Module:
        """What is tested after each task."""
        return model

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """What the learner carries from one task to the next (tensors, JSON values), for a resumed run.
        What begin_task rebuilds from the model (LwF's old model) is not carried."""
        return {}, {}

    def load_state(self, tensors: dict[str, torch.Tensor], values: dict[str, Any], tasks: list[Task]) -> None:
        """Undo `state()`; `tasks` are the scenario's tasks, whose data the state refers to."""


class Naive(Learner):
    """Fine-tuning on each task's images (`naive`), as PyCIL's finetune: the reference point."""

    name = "naive"
    summary = "fine-tunes on each task in turn with CE on its own classes (PyCIL's finetune); keeps nothing"
    config_class = NaiveOptions

    def __init__(self, config: Any | None = None, seed: int = 0):
        super().__init__(config, seed)
        self.known = 0  # classes learned before the current task

    def begin_task(self, model: ContinualModel, task: Task) -> None:
        self.known = task.classes.start

    def loss(self, logits: torch.Tensor, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.config.loss == "all-seen":
            return super().loss(logits, images, labels)
        return F.cross_entropy(logits[:, self.known:], labels - self.known)


class Replay(Learner):
    name = "replay"
    summary = "trains on each task plus a balanced memory of exemplars from the classes seen (herding or random)"
    config_class = ReplayOptions

    def __init__(self, config: Any | None = None, seed: int = 0):
        super().__init__(config, seed)
        self.memory = ExemplarMemory(self.config.memory, self.config.selection, seed)

    def check(self, scenario: Scenario) -> None:
        classes = len(scenario.class_names)
        if self.config.memory < classes:
            raise AdaptError(f"a memory of {self.config.memory} exemplars cannot keep one of each of the {classes} "
                             f"classes: use {term('memory')} {classes} or more")  # fmt: skip

    def train_data(self, task: Task) -> Dataset:
        return task.train if not self.memory.ranked else ConcatDataset([task.train, self.memory.dataset()])

    def end_task(self, model: ContinualModel, task: Task) -> None:
        self.memory.add_task(task.train, lambda images: features(model, images), task.train_plain)

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return {}, {"memory": self.memory.ranking()}

    def load_state(self, tensors: dict[str, torch.Tensor], values: dict[str, Any], tasks: list[Task]) -> None:
        def datasets(label: int) -> tuple[Dataset, Dataset]:
            task = next(t for t in tasks if label in t.classes)
            return task.train, task.train_plain if task.train_plain is not None else task.train

        self.memory.restore(values["memory"], datasets)


class LwF(Learner):
    name = "lwf"
    summary = "learns each task's classes while distilling the old classes' logits from the model before it; no memory"
    config_class = LwFOptions

    def __init__(self, config: Any | None = None, seed: int = 0):
        super().__init__(config, seed)
        self.old: FrozenCopy | None = None

    def begin_task(self, model: ContinualModel, task: Task) -> None:
        self.old = FrozenCopy(model) if model.head.num_classes else None

    def old_logits(self, images: torch.Tensor) -> torch.Tensor | None:
        return None if self.old is None else self.old.logits(images)

    def loss(self, logits: torch.Tensor, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return lwf_loss(logits, labels, self.old_logits(images), self.config.distill_weight, self.config.temperature)


class ICaRL(Replay, LwF):
    name = "icarl"
    summary = ("replay (herding) plus distillation of the old classes' logits; "
               "tested with the head or the nearest mean of exemplars (classifier=nme)")  # fmt: skip
    config_class = ICaRLOptions

    def __init__(self, config: Any | None = None, seed: int = 0):
        super().__init__(config, seed)
        self.means: torch.Tensor | None = None

    def loss(self, logits: torch.Tensor, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return icarl_loss(logits, labels, self.old_logits(images), self.config.distill_weight, self.config.temperature)

    def end_task(self, model: ContinualModel, task: Task) -> None:
        super().end_task(model, task)
        if self.config.classifier == "nme":
            labels = sorted(self.memory.ranked)
            self.means = torch.stack([F.normalize(features(model, self.memory.exemplars(c, plain=True)), dim=-1).mean(0)
                                      for c in labels])  # fmt: skip

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, values = super().state()
        return {**tensors, **({"means": self.means} if self.means is not None else {})}, values

    def load_state(self, tensors: dict[str, torch.Tensor], values: dict[str, Any], tasks: list[Task]) -> None:
        super().load_state(tensors, values, tasks)
        self.means = tensors.get("means")

    def scorer(self, model: ContinualModel) -> nn.Module:
        if self.config.classifier == "nme" and self.means is not None:
            return NearestMeanOfExemplars(model.backbone, self.means)
        return model


class Prototype(Learner):
    name = "prototype"
    summary = ("trains nothing: the frozen backbone's class-mean features set the head "
               "(cosine head: PILOT's SimpleCIL; linear: nearest mean; language: ridge map to the text targets)")  # fmt: skip

    trains = False

    def __init__(self, config: Any | None = None, seed: int = 0):
        super().__init__(config, seed)
        self.statistics: FeatureStatistics | None = None

    def end_task(self, model: ContinualModel, task: Task) -> None:
        if self.statistics is None:
            self.statistics = FeatureStatistics(model.head.feature_dim)
        self.statistics.add(features(model, task.train_plain), torch.tensor(dataset_targets(task.train_plain)))
        model.head.fit_prototypes(self.statistics)

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return (self.statistics.state() if self.statistics is not None else {}), {}

    def load_state(self, tensors: dict[str, torch.Tensor], values: dict[str, Any], tasks: list[Task]) -> None:
        self.statistics = FeatureStatistics.from_state(tensors) if tensors else None
