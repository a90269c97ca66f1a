"""`ContinualRun(...).fit(scenario)`: learn a scenario's tasks one after another.

One model lives through the whole run: the frozen backbone adapted by a tune method (its
adapter state carries from task to task) and an incremental head that gains the new
classes' outputs before each task. A task is trained by the same Trainer as `adapt tune`
(its folder holds the task's checkpoint), on the task's images, plus the exemplar memory
with the `replay` learner. After each task the model is tested on every task seen so far,
which fills one row of the accuracy matrix.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from adapt.adapted import AdaptedModel
from adapt.backbones import create_backbone
from adapt.checkpoint import write_json_atomic
from adapt.continual.memory import ExemplarMemory
from adapt.continual.metrics import ContinualMetrics, Matrix, plot_matrix
from adapt.continual.scenario import Scenario, Task
from adapt.data import DataSplits
from adapt.errors import AdaptError
from adapt.evaluate import accuracy
from adapt.heads import ContinualModel, TextEmbedder, create_head
from adapt.methods import create_method
from adapt.outputs import check_run_folder, exclusive_lock
from adapt.train import TrainConfig, Trainer, make_accelerator, write_run_config
from adapt.train_config import CONFIG_FILE

LEARNERS = ("naive", "replay")
RESULT_FILE = "continual.json"
MATRIX_PLOT = "accuracy_matrix.png"
RUN_FILES = (RESULT_FILE, MATRIX_PLOT, CONFIG_FILE, "task_*")


@dataclass
class ContinualResult:
    matrix: Matrix
    metrics: ContinualMetrics
    tasks: list[list[str]]  # class names of each task
    checkpoints: list[Path]  # the adapter checkpoint after each task
    setup: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"setup": self.setup, "tasks": self.tasks, "matrix": self.matrix, **dataclasses.asdict(self.metrics),
                "checkpoints": [str(p) for p in self.checkpoints]}  # fmt: skip

    def save(self, out_dir: str | Path) -> None:
        """OUT/continual.json and OUT/accuracy_matrix.png."""
        write_json_atomic(Path(out_dir) / RESULT_FILE, self.to_dict())
        title = f"{self.setup.get('head', '')} head, {self.setup.get('learner', '')}: accuracy (%)"
        plot_matrix(self.matrix, Path(out_dir) / MATRIX_PLOT, title)


@dataclass
class ContinualRun:
    """A learner for class-incremental scenarios. `memory` and `selection` apply to `replay`."""

    method: str = "ssf"
    head: str = "language"
    learner: str = "naive"
    memory: int = 200
    selection: str = "herding"
    method_options: dict[str, Any] | None = None
    head_options: dict[str, Any] | None = None
    weights: str | None = None
    epochs: int = 5
    batch_size: int = 32
    lr: float | None = None
    seed: int = 0
    out_dir: str | Path = "runs/continual"
    overwrite: bool = False  # replace an earlier run in out_dir (only its files)

    def __post_init__(self) -> None:
        self.train_config()  # checks epochs, batch size, lr and seed before anything runs
        if self.learner not in LEARNERS:
            raise AdaptError(f"unknown learner {self.learner!r} (choose from {', '.join(LEARNERS)})")
        if self.head == "language":  # a missing text model should stop the run before any training
            TextEmbedder((self.head_options or {}).get("text_model"))

    def train_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, seed=self.seed)

    def build(self, scenario: Scenario) -> tuple[ContinualModel, AdaptedModel]:
        """The model before any task: adapted backbone + empty head (seeded)."""
        backbone, info = create_backbone(scenario.backbone, self.weights, 0, scenario.image_size, self.seed)
        method = create_method(self.method, self.method_options)
        if method.apply(backbone) is not backbone:
            raise AdaptError(f"method {self.method} predicts through its own network; continual learning needs "
                             "one that adapts the backbone's features (ssf, lora, bitfit, linear, full, …)")  # fmt: skip
        head = create_head(self.head, backbone.num_features, **(self.head_options or {}))
        model = ContinualModel(backbone, head)
        return model, AdaptedModel(model, method, info, [], scenario.image_size)

    def fit(
        self,
        scenario: Scenario,
        on_task_end: Callable[[Task, Matrix, ContinualModel], None] | None = None,
        record: dict[str, Any] | None = None,
    ) -> ContinualResult:
        """Train on each task in turn; after each, test on all tasks seen. Writes OUT/task_N/ per task
        and OUT/continual.json + accuracy_matrix.png at the end, and `record` (the command's resolved
        options) as OUT/config.yaml. `on_task_end(task, matrix, model)` runs after each task's row is measured."""
        out = Path(self.out_dir)
        with exclusive_lock(out):
            check_run_folder(out, RUN_FILES, resume=False, overwrite=self.overwrite, resumable=False)
            return self._fit(scenario, out, on_task_end, record)

    def _fit(self, scenario: Scenario, out: Path, on_task_end, record: dict[str, Any] | None) -> ContinualResult:
        model, adapted = self.build(scenario)
        if record is not None:  # once the model is built, so that a refused run leaves nothing
            write_run_config(out, record)
        memory = ExemplarMemory(self.memory, self.selection, self.seed) if self.learner == "replay" else None
        config = self.train_config()
        matrix: Matrix = []
        checkpoints = []
        for task in scenario.tasks:
            model.head.add_classes(task.class_names)
            adapted.class_names = list(model.head.class_names)
            seen = scenario.tasks[: task.index + 1]
            train = task.train if memory is None or not memory.ranked else ConcatDataset([task.train, memory.dataset()])
            splits = DataSplits(scenario.spec or scenario.name, f"{scenario.name} task {task.index + 1}",
                                adapted.class_names, train, task.val, ConcatDataset([t.test for t in seen]))  # fmt: skip
            task_dir = out / f"task_{task.index + 1}"
            Trainer(adapted, splits, config, task_dir).fit()
            checkpoints.append(task_dir / "adapter.safetensors")
            row = [self._test(model, t, scenario.task_incremental) for t in seen]
            matrix.append(row + [None] * (len(scenario.tasks) - len(seen)))
            if memory is not None:
                memory.add_task(task.train, lambda images: features(model, images))
            if on_task_end is not None:
                on_task_end(task, matrix, model)
        unused = {"out_dir", "overwrite"} | ({"memory", "selection"} if memory is None else set())
        setup = {"data": scenario.name, "backbone": scenario.backbone, "image_size": scenario.image_size,
                 "task_incremental": scenario.task_incremental, "class_order": scenario.class_names,
                 **{k: v for k, v in dataclasses.asdict(self).items() if k not in unused}}  # fmt: skip
        tasks = [t.class_names for t in scenario.tasks]
        result = ContinualResult(matrix, ContinualMetrics.from_matrix(matrix), tasks, checkpoints, setup)
        result.save(out)
        return result

    @staticmethod
    def _test(model: ContinualModel, task: Task, task_incremental: bool) -> float:
        return accuracy(model, task.test, make_accelerator(), columns=task.classes if task_incremental else None)


@torch.no_grad()
def features(model: ContinualModel, images: Dataset, batch_size: int = 128) -> torch.Tensor:
    """Backbone features of `images`, in order, in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = [model.backbone(batch.to(device)).cpu() for batch, _ in DataLoader(images, batch_size=batch_size)]
    model.train(was_training)
    return torch.cat(out)

