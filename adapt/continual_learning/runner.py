"""`ContinualRun(...).fit(scenario)`: learn a scenario's tasks one after another.

One model lives through the whole run: the frozen backbone adapted by a tune method (its
adapter state carries from task to task) and an incremental head that gains the new
classes' outputs before each task. A task is trained by the same Trainer as `adapt tune`
(its folder holds the task's checkpoint) with the learner's data and objective
(adapt.continual_learning.learners). After each task the learner's scorer is tested on every task
seen so far, which fills one row of the accuracy matrix.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import ConcatDataset

from adapt.adapted import AdaptedModel
from adapt.backbones import create_backbone
from adapt.checkpoint import read_tensors, save_tensors_atomic, write_json_atomic
from adapt.continual_learning import create_learner
from adapt.continual_learning.learners import Learner
from adapt.continual_learning.metrics import ContinualMetrics, Matrix, plot_matrix
from adapt.continual_learning.scenario import Scenario, Task
from adapt.data import DataSplits
from adapt.config import build
from adapt.errors import AdaptError, term
from adapt.evaluation import accuracy
from adapt.heads import ContinualModel, TextEmbedder, create_head
from adapt.methods import count_trainable, create_method
from adapt.outputs import check_run_folder, exclusive_lock, remove_stale_temps
from adapt.devices import make_accelerator, precision_accelerator
from adapt.train import ADAPTER_FILE, TrainConfig, Trainer, write_run_config
from adapt.train import RUN_FILES as TRAIN_RUN_FILES
from adapt.train_config import CONFIG_FILE, RESULT_FREE
from adapt.train_state import STATE_FILE, changed_settings

RESULT_FILE = "continual.json"
MATRIX_PLOT = "accuracy_matrix.png"
PROGRESS_FILE = "progress.safetensors"  # after each task: what a resumed run starts the next one from
RUN_FILES = (RESULT_FILE, MATRIX_PLOT, CONFIG_FILE, PROGRESS_FILE, "task_*")


@dataclass
class ContinualResult:
    matrix: Matrix
    metrics: ContinualMetrics
    tasks: list[list[str]]  # class names of each task
    checkpoints: list[Path]  # the adapter checkpoint after each task
    setup: dict[str, Any] = field(default_factory=dict)
    test_sizes: list[int] = field(default_factory=list)  # each task's test samples: the pooled metrics' weights

    def to_dict(self) -> dict[str, Any]:
        return {"setup": self.setup, "tasks": self.tasks, "test_sizes": self.test_sizes, "matrix": self.matrix,
                **dataclasses.asdict(self.metrics), "checkpoints": [str(p) for p in self.checkpoints]}  # fmt: skip

    def save(self, out_dir: str | Path) -> None:
        """OUT/continual.json and OUT/accuracy_matrix.png."""
        write_json_atomic(Path(out_dir) / RESULT_FILE, self.to_dict())
        title = f"{self.setup.get('head', '')} head, {self.setup.get('learner', '')}: accuracy (%)"
        plot_matrix(self.matrix, Path(out_dir) / MATRIX_PLOT, title)


def _train_config(value: TrainConfig | Mapping[str, Any]) -> TrainConfig:
    return value if isinstance(value, TrainConfig) else build(TrainConfig, value, "training options")


@dataclass
class ContinualRun:
    """A class-incremental run: a tune method on the backbone, an incremental head, a learner
    (adapt.continual_learning.LEARNERS) with its options, and the training options of every task."""

    method: str = "ssf"
    head: str = "language"
    learner: str = "naive"
    learner_options: dict[str, Any] | None = None  # e.g. {"memory": 200} for replay and icarl
    method_options: dict[str, Any] | None = None
    head_options: dict[str, Any] | None = None
    weights: str | None = None
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=5))  # per task; its seed also seeds the run
    out_dir: str | Path = "runs/continual"
    overwrite: bool = False  # replace an earlier run in out_dir (only its files)
    resume: bool = False  # continue the run in out_dir: after its last finished task, inside the task it stopped in

    def __post_init__(self) -> None:
        self.train = _train_config(self.train)
        self.create_learner()  # checks the learner and its options before anything runs
        if self.head == "language":  # a missing text model should stop the run before any training
            TextEmbedder((self.head_options or {}).get("text_model"))

    def create_learner(self) -> Learner:
        return create_learner(self.learner, self.learner_options, self.train.seed)

    def build(self, scenario: Scenario) -> tuple[ContinualModel, AdaptedModel]:
        """The model before any task: adapted backbone + empty head (seeded)."""
        backbone, info = create_backbone(scenario.backbone, self.weights, 0, scenario.image_size, self.train.seed)
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
        on_start: Callable[[], None] | None = None,
        on_note: Callable[[str], None] | None = None,
    ) -> ContinualResult:
        """Train on each task in turn; after each, test on all tasks seen. Writes OUT/task_N/ per task
        and OUT/continual.json + accuracy_matrix.png at the end, and `record` (the command's resolved
        options) as OUT/config.yaml. `on_start()` runs once the run has passed every check (so a
        refused run prints nothing); `on_task_end(task, matrix, model)` after each task's row is measured."""
        out = Path(self.out_dir)
        with exclusive_lock(out):
            check_run_folder(out, RUN_FILES, resume=self.resume, overwrite=self.overwrite)
            if self.resume and out.is_dir():  # what a killed run's atomic writes left, here and in its task folders
                remove_stale_temps(out, RUN_FILES)
                for task_dir in out.glob("task_*"):
                    remove_stale_temps(task_dir, TRAIN_RUN_FILES)
            return self._fit(scenario, out, on_task_end, record, on_start, on_note or (lambda text: None))

    def _fit(self, scenario: Scenario, out: Path, on_task_end, record: dict[str, Any] | None, on_start,
             on_note) -> ContinualResult:  # fmt: skip
        learner = self.create_learner()
        learner.check(scenario)
        model, adapted = self.build(scenario)
        if not learner.trains and count_trainable(model.backbone):
            raise AdaptError(f"the {learner.name} learner trains nothing, so method {self.method}'s parameters would stay "
                             f"at their initialisation and only perturb the backbone: use {term('method')} linear")  # fmt: skip
        precision_accelerator(self.train)  # refuses what it cannot run (fp16 on a CPU) before anything is written
        if on_start is not None:
            on_start()
        identity = self._identity(scenario, learner)
        matrix: Matrix = []
        if self.resume and (out / PROGRESS_FILE).is_file():
            matrix = self._restore(out / PROGRESS_FILE, identity, scenario, model, adapted, learner)
            total = len(scenario.tasks)
            on_note(f"resuming after task {len(matrix)} of {total}" if len(matrix) < total
                    else f"all {total} tasks are done: nothing to train")  # fmt: skip
        elif record is not None:  # once the model is built, so that a refused run leaves nothing
            write_run_config(out, record)
        checkpoints = [out / f"task_{t + 1}" / ADAPTER_FILE for t in range(len(matrix))]
        for task in scenario.tasks[len(matrix) :]:
            learner.begin_task(model, task)
            model.head.add_classes(task.class_names)
            adapted.class_names = list(model.head.class_names)
            seen = scenario.tasks[: task.index + 1]
            task_dir = out / f"task_{task.index + 1}"
            if learner.trains:
                splits = DataSplits(scenario.spec or scenario.name, f"{scenario.name} task {task.index + 1}",
                                    adapted.class_names, learner.train_data(task), task.val,
                                    ConcatDataset([t.test for t in seen]))  # fmt: skip
                started = self.resume and (task_dir / STATE_FILE).is_file()  # the task the run stopped in
                if len(splits.train) <= self.train.batch_size:
                    on_note(f"task {task.index + 1} trains one step per epoch (its {len(splits.train)} training images "
                            f"fit one batch of {self.train.batch_size}): learners differ little there (LwF's "
                            f"distillation has no gradient at a task's first step); a smaller {term('batch_size')} "
                            "gives more steps")  # fmt: skip
                Trainer(adapted, splits, self.train, task_dir, loss=learner.loss).fit(resume=started)
            learner.end_task(model, task)
            if not learner.trains:
                task_dir.mkdir(parents=True, exist_ok=True)
                adapted.save(task_dir / ADAPTER_FILE, {"data": scenario.spec or scenario.name, "learner": learner.name})
            checkpoints.append(task_dir / ADAPTER_FILE)
            scorer = learner.scorer(model)
            row = [self._test(scorer, t, scenario.task_incremental) for t in seen]
            matrix.append(row + [None] * (len(scenario.tasks) - len(seen)))
            self._save_progress(out / PROGRESS_FILE, identity, matrix, adapted, learner)
            if on_task_end is not None:
                on_task_end(task, matrix, model)
        tasks = [t.class_names for t in scenario.tasks]
        sizes = [len(t.test) for t in scenario.tasks]
        result = ContinualResult(matrix, ContinualMetrics.from_matrix(matrix, sizes), tasks, checkpoints, identity, sizes)
        result.save(out)
        return result

    def _identity(self, scenario: Scenario, learner: Learner) -> dict[str, Any]:
        """The run's setup (continual.json keeps it): what a resumed run must share with the one it continues."""
        return {"data": scenario.name, "backbone": scenario.backbone, "image_size": scenario.image_size,
                "task_incremental": scenario.task_incremental, "class_order": scenario.class_names,
                **{k: v for k, v in dataclasses.asdict(self).items() if k not in ("out_dir", "overwrite", "resume")},
                "learner_options": learner.options()}  # fmt: skip

    @staticmethod
    def _save_progress(path: Path, identity: dict[str, Any], matrix: Matrix, adapted: AdaptedModel, learner: Learner) -> None:
        """After a task: the model, the learner's state, the RNG and the matrix so far (one file, atomic)."""
        learner_tensors, learner_values = learner.state()
        tensors = {**{f"model.{k}": v for k, v in adapted.state().items()},
                   **{f"learner.{k}": v for k, v in learner_tensors.items()}, "rng.torch": torch.get_rng_state()}  # fmt: skip
        metadata = {"run": json.dumps(identity, default=str), "matrix": json.dumps(matrix), "learner": json.dumps(learner_values)}
        save_tensors_atomic(path, tensors, metadata)

    @staticmethod
    def _restore(path: Path, identity: dict[str, Any], scenario: Scenario, model: ContinualModel, adapted: AdaptedModel,
                 learner: Learner) -> Matrix:  # fmt: skip
        """Bring the run to where its progress file left it; returns the matrix so far."""
        tensors, metadata = read_tensors(path)
        def fixed(run: dict[str, Any]) -> dict[str, Any]:  # workers and trackers change no result
            return {**run, "train": {k: v for k, v in run.get("train", {}).items() if k not in RESULT_FREE}}

        saved, now = fixed(json.loads(metadata["run"])), fixed(json.loads(json.dumps(identity, default=str)))
        changed = changed_settings(saved, now)
        if changed:
            raise AdaptError(f"cannot resume the continual run in {path.parent}: " + "; ".join(changed))
        matrix = json.loads(metadata["matrix"])
        for task in scenario.tasks[: len(matrix)]:
            model.head.add_classes(task.class_names)
        adapted.class_names = list(model.head.class_names)
        adapted.load_state({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}, source=str(path))
        learner.load_state({k[len("learner.") :]: v for k, v in tensors.items() if k.startswith("learner.")},
                           json.loads(metadata["learner"]), scenario.tasks)  # fmt: skip
        torch.set_rng_state(tensors["rng.torch"])
        return matrix

    @staticmethod
    def _test(model: torch.nn.Module, task: Task, task_incremental: bool) -> float:
        return accuracy(model, task.test, make_accelerator(), columns=task.classes if task_incremental else None)
