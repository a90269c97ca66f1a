"""One training loop for every method, on accelerate.

AdamW and timm's warmup + cosine schedule, stepped per update or per epoch as the config says
(adapt.optimization), gradient accumulation, mixed precision (adapt.devices), evaluation each epoch,
a JSONL metrics log, and a checkpoint each epoch that `resume=True` continues from (adapt.train_state).
`batch_size` is the global batch: each process takes its piece of one seeded order
(adapt.data.global_batches), so the data order of epoch e depends only on (seed, e, batch size): a
resumed run, or a run on other processes, reaches the same weights as an uninterrupted single one.

Files in `out_dir`: adapter.safetensors (the checkpoint users keep), train_state.safetensors
(what resuming needs, self-contained), metrics.jsonl, summary.json, and with `log_with` the
trackers' logs (per-step loss and lr, per-epoch metrics; adapt.tracking): log.csv, tensorboard/.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.data_loader import DataLoaderShard

from adapt.adapted import AdaptedModel
from adapt.checkpoint import all_finite, write_json_atomic, write_text_atomic
from adapt.data import DataSplits
from adapt.data.global_batches import GlobalBatchSampler, per_process_batch
from adapt.devices import peak_memory, precision_accelerator
from adapt.errors import AdaptError, term
from adapt.evaluation import NonFiniteOutput, accuracy
from adapt.methods.norms import statistics_kept
from adapt.optimization import optimizer_and_schedule
from adapt.progress import Steps
from adapt.tracking import CSV_FILE, TENSORBOARD_DIR, CSVTracker, create_trackers, flat_config
from adapt.train_config import CONFIG_FILE, PRECISIONS, RESULT_FREE, TrainConfig
from adapt.train_state import STATE_FILE, restore_train_state, save_train_state

Objective = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, images, labels) -> loss
ADAPTER_FILE = "adapter.safetensors"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
# everything a tune run may write into its folder (SPT adds its allocation; trackers their logs)
RUN_FILES = (ADAPTER_FILE, STATE_FILE, METRICS_FILE, SUMMARY_FILE, "allocation.json", "allocation.png", CONFIG_FILE,
             CSV_FILE, TENSORBOARD_DIR)  # fmt: skip


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    train_acc: float
    eval_acc: float
    eval_split: str
    lr: float
    images_per_s: float
    seconds: float
    steps: int  # batches seen (per process)
    periodic_test_acc: float | None = None  # the test accuracy at this epoch, when config.eval_every tests it


@dataclass
class FitResult:
    history: list[EpochResult]
    test_acc: float
    test_split: str
    trainable_params: int
    total_params: int
    out_dir: Path

    def best_periodic(self) -> tuple[float, int] | None:
        """(the best test accuracy over the periodic evaluations, its epoch), as SPT and NOAH report; None if
        the run made none. Test-selected: the final epoch's accuracy stays the headline."""
        tested = [(h.periodic_test_acc, h.epoch) for h in self.history if h.periodic_test_acc is not None]
        return max(tested, key=lambda pair: (pair[0], -pair[1])) if tested else None

    @classmethod
    def load(cls, out_dir: str | Path) -> FitResult:
        """The result of a finished run, from its summary.json."""
        from adapt.config import read_text_file

        summary = json.loads(read_text_file(Path(out_dir) / SUMMARY_FILE))
        return cls([EpochResult(**h) for h in summary["history"]], summary["test_acc"], summary["test_split"],
                   summary["trainable_params"], summary["total_params"], Path(out_dir))  # fmt: skip


def classification_loss(logits: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
                        smoothing: float = 0.0) -> torch.Tensor:  # fmt: skip
    """The default objective: cross-entropy (with label smoothing, when the config asks)."""
    return torch.nn.functional.cross_entropy(logits, labels, label_smoothing=smoothing)


def write_run_config(out_dir: str | Path, record: dict[str, Any]) -> None:
    """The command's resolved options (CLI values as YAML holds them) as OUT/config.yaml."""
    import yaml

    write_text_atomic(Path(out_dir) / CONFIG_FILE, yaml.safe_dump(record, sort_keys=False))


def first_non_finite(model: torch.nn.Module) -> str | None:
    """The name of the first trainable parameter holding NaN or Inf, if any."""
    for name, parameter in model.named_parameters():
        if parameter.requires_grad and not all_finite(parameter):
            return name
    return None


def broken_tensor(model: torch.nn.Module) -> str | None:
    """What makes a model compute NaN/Inf before any training: the first parameter or buffer holding
    NaN/Inf, or a BatchNorm running_var with a negative entry (e.g. a task-arithmetic soup's)."""
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if not all_finite(tensor):
            return f"{name} holds NaN/Inf"
        if name.endswith("running_var") and bool((tensor < 0).any()):
            return f"{name} has negative entries (a variance cannot be)"
    return None


class Trainer:
    """Trains an adapted model on a task and writes its checkpoints to `out_dir`."""

    def __init__(self, adapted: AdaptedModel, data: DataSplits, config: TrainConfig, out_dir: str | Path,
                 loss: Objective | None = None):  # fmt: skip
        """`loss(logits, images, labels)` is the objective (default: cross-entropy); continual
        learners bring their own (adapt.continual_learning.learners)."""
        self.adapted = adapted
        self.loss = loss or functools.partial(classification_loss, smoothing=config.label_smoothing)
        self.data = data
        self.config = config
        self.out_dir = Path(out_dir)
        if config.grad_checkpointing:  # before anything is written: a method or backbone may refuse it
            adapted.set_grad_checkpointing(True)
        self.trackers = create_trackers(config.trackers(), self.out_dir)
        self.accelerator = precision_accelerator(config, self.trackers)
        self.batch_per_process = per_process_batch(config.batch_size, self.accelerator.num_processes)
        self.batches = GlobalBatchSampler(len(data.train), config.batch_size, torch.Generator(),
                                          self.accelerator.process_index, self.accelerator.num_processes,
                                          config.drop_last)  # fmt: skip
        if len(self.batches) == 0:  # before anything is written
            raise AdaptError(f"the training split has {len(data.train)} images, not one full batch of "
                             f"{config.batch_size} ({term('drop_last')} drops the partial one)")  # fmt: skip
        self.lr = config.lr if config.lr is not None else adapted.method.default_lr
        self.weight_decay = config.weight_decay if config.weight_decay is not None else adapted.method.default_weight_decay
        if max(config.warmup_lr, config.min_lr) > self.lr:
            raise AdaptError(f"{term('warmup_lr')} {config.warmup_lr:g} and {term('min_lr')} {config.min_lr:g} must not "
                             f"exceed {term('lr')} {self.lr:g}")  # fmt: skip

    @property
    def precision(self) -> str:
        """The precision actually used (ours: fp32, bf16 or fp16), whoever chose it."""
        return {value: key for key, value in PRECISIONS.items()}.get(self.accelerator.mixed_precision, "fp32")

    def run_identity(self) -> dict[str, Any]:
        """What must not change between an interrupted run and its resumption."""
        return {
            "method": self.adapted.method.name,
            "method_options": self.adapted.method.options(),
            "backbone": self.adapted.backbone.name,
            "backbone_sha256": self.adapted.backbone.sha256,
            "data": self.data.spec,
            "image_size": self.adapted.image_size,
            "train": {**{k: v for k, v in asdict(self.config).items() if k not in RESULT_FREE},
                      "lr": self.lr, "weight_decay": self.weight_decay, "precision": self.precision},  # fmt: skip
            "processes": self.accelerator.num_processes,
        }

    # -- checkpoints -------------------------------------------------------------------

    def _save(self, epoch: int, history: list[EpochResult], optimizer, scheduler) -> None:
        adapted = self.adapted
        save_train_state(self.out_dir / STATE_FILE, adapted.method.trainable_state(adapted.model), optimizer, scheduler,
                         self.run_identity(), epoch, [asdict(h) for h in history])  # fmt: skip
        training = {"data": self.data.spec, "epoch": epoch, "epochs": self.config.total_epochs, "seed": self.config.seed,
                    "eval_acc": history[-1].eval_acc, "eval_split": history[-1].eval_split,
                    **({"limit": self.data.limit} if self.data.limit is not None else {})}  # fmt: skip
        adapted.save(self.out_dir / ADAPTER_FILE, training)
        write_text_atomic(self.out_dir / METRICS_FILE, "".join(json.dumps(asdict(h)) + "\n" for h in history))

    def _restore(self, optimizer, scheduler) -> tuple[int, list[EpochResult]]:
        path = self.out_dir / STATE_FILE
        trained, epoch, history = restore_train_state(path, optimizer, scheduler, self.run_identity())
        self.adapted.method.load_trainable_state(self.adapted.model, trained, source=str(path))
        return epoch, [EpochResult(**h) for h in history]

    # -- training ----------------------------------------------------------------------

    def fit(self, resume: bool = False, on_epoch_end: Callable[[EpochResult], None] | None = None) -> FitResult:
        """Train for `config.total_epochs` (or what is left of them when resuming)."""
        config, accelerator, model = self.config, self.accelerator, self.adapted.model
        torch.manual_seed(config.seed)
        order = self.batches.generator
        loader = DataLoaderShard(self.data.train, device=accelerator.device, batch_sampler=self.batches,
                                 num_workers=config.workers)  # fmt: skip
        updates_per_epoch = math.ceil(len(loader) / config.grad_accum)
        optimizer, scheduler = optimizer_and_schedule(model, self.lr, self.weight_decay, config.lr_stepping, config.epochs,
                                                      updates_per_epoch, config.warmup, config.warmup_lr, config.min_lr)  # fmt: skip
        start_epoch, history = self._restore(optimizer, scheduler) if resume else (0, [])
        self._first_epoch = start_epoch + 1  # before its first step, a NaN loss is the weights' (_refuse_non_finite)
        model, optimizer = accelerator.prepare(model, optimizer)
        self._start_trackers(start_epoch * len(loader) if resume else None)

        held_out = self.data.held_out_val
        eval_set, eval_split = (held_out, "val") if held_out is not None else (self.data.test, self.data.test_name)
        with self._tracking():
            with Steps("train", len(loader) * (config.total_epochs - start_epoch), accelerator.is_main_process) as progress:
                for epoch in range(start_epoch + 1, config.total_epochs + 1):
                    order.manual_seed(config.seed * 100_003 + epoch)
                    result = self._epoch(epoch, model, loader, optimizer, scheduler, progress)
                    scheduler.after_epoch()
                    try:
                        result.eval_acc = accuracy(model, eval_set, accelerator)
                    except NonFiniteOutput:
                        raise self._non_finite_outputs(epoch) from None
                    result.eval_split = eval_split
                    if config.tests_at(epoch):
                        result.periodic_test_acc = (result.eval_acc if eval_split == self.data.test_name
                                                    else accuracy(model, self.data.test, accelerator))  # fmt: skip
                    history.append(result)
                    accelerator.log({f"epoch/{k}": v for k, v in asdict(result).items()
                                     if k not in ("epoch", "eval_split") and v is not None}, step=epoch * len(loader))  # fmt: skip
                    if accelerator.is_main_process:
                        self._save(epoch, history, optimizer, scheduler)
                    accelerator.wait_for_everyone()
                    if on_epoch_end is not None and accelerator.is_main_process:
                        on_epoch_end(result)
            if eval_split == self.data.test_name and history:
                test_acc = history[-1].eval_acc
            elif history and history[-1].periodic_test_acc is not None:  # --eval-every tested the last epoch already
                test_acc = history[-1].periodic_test_acc
            else:
                test_acc = accuracy(model, self.data.test, accelerator)
            accelerator.log({f"final/{self.data.test_name}_acc": test_acc}, step=config.total_epochs * len(loader))
        trainable, total = self.adapted.parameter_counts()
        result = FitResult(history, test_acc, self.data.test_name, trainable, total, self.out_dir)
        if accelerator.is_main_process:
            best = result.best_periodic()
            summary = {"test_acc": test_acc, "test_split": self.data.test_name, "trainable_params": trainable,
                       "total_params": total, "run": self.run_identity(), "history": [asdict(h) for h in history],
                       "batch": {"global": config.batch_size, "per_process": self.batch_per_process,
                                 "processes": accelerator.num_processes},
                       "peak_memory": peak_memory(accelerator.device),
                       **({"best_periodic_test_acc": best[0], "best_periodic_epoch": best[1]} if best else {})}  # fmt: skip
            write_json_atomic(self.out_dir / SUMMARY_FILE, summary)
        return result

    def _start_trackers(self, resume_step: int | None) -> None:
        """Start the trackers (main process); a resumed run's CSV drops what the interrupted epoch logged."""
        for tracker in self.trackers:
            if isinstance(tracker, CSVTracker):
                tracker.resume_step = resume_step
        identity = self.run_identity()
        hyperparameters = flat_config({**{k: v for k, v in identity.items() if k != "train"}, **identity["train"]})
        self.accelerator.init_trackers("adapt", hyperparameters, {"wandb": {"name": self.out_dir.name}})

    @contextmanager
    def _tracking(self) -> Iterator[None]:
        """Close the trackers' files however training ends (not accelerator.end_training(), which
        would also leave the process group that evaluation still needs)."""
        try:
            yield
        finally:
            for tracker in self.accelerator.trackers:
                tracker.finish()

    def _refuse_non_finite(self, loss: torch.Tensor, epoch: int, steps: int) -> None:
        """The error for a non-finite loss: broken starting weights, or training that diverged."""
        broken = broken_tensor(self.adapted.model) if epoch == self._first_epoch and steps == 0 else None
        if broken is not None:
            raise AdaptError(f"the model computes NaN/Inf before training changes it: {broken}; the backbone weights "
                             f"({self.adapted.backbone.weights}) are broken, so fix or re-make them")  # fmt: skip
        raise AdaptError(f"training diverged in epoch {epoch}, step {steps + 1}: the loss is {float(loss)}; "
                         f"nothing non-finite was saved (try a lower {term('lr')})")  # fmt: skip

    def _non_finite_outputs(self, epoch: int) -> AdaptError:
        """The error for evaluation outputs that are NaN/Inf after a finite training loss (a BatchNorm
        whose running variance is negative computes finite batch statistics in training, NaN in eval)."""
        broken = broken_tensor(self.adapted.model) or "a tensor became NaN/Inf"
        return AdaptError(f"after epoch {epoch} the model computes NaN/Inf outputs in evaluation: {broken}; nothing "
                          f"non-finite was saved (check the backbone weights {self.adapted.backbone.weights})")  # fmt: skip

    def _epoch(self, epoch, model, loader, optimizer, scheduler, progress: Steps) -> EpochResult:
        accelerator = self.accelerator
        model.train()  # methods that keep BatchNorm statistics froze them inside the model
        loss_sum = correct = seen = steps = 0
        start = time.perf_counter()
        progress.describe(f"epoch {epoch}/{self.config.total_epochs}")
        for images, labels in loader:
            step_lr = scheduler.lr
            with accelerator.accumulate(model):
                logits = model(images)
                loss = self.loss(logits, images, labels)
                if not torch.isfinite(loss):
                    self._refuse_non_finite(loss, epoch, steps)
                share = self.batches.share(steps)  # this process's piece of the global batch's mean
                with statistics_kept(model) if self.config.grad_checkpointing else nullcontext():  # one count a batch
                    accelerator.backward(loss * share if share != 1.0 else loss)
                optimizer.step()
                if accelerator.sync_gradients:
                    scheduler.after_update()
                optimizer.zero_grad()
                bad = first_non_finite(model)
                if bad is not None:
                    raise AdaptError(f"training diverged in epoch {epoch}, step {steps + 1}: parameter {bad} became "
                                     f"NaN/Inf; nothing non-finite was saved (try a lower {term('lr')})")  # fmt: skip
            step_loss = float(loss.detach())
            loss_sum += step_loss * labels.numel()
            correct += int((logits.argmax(-1) == labels).sum())
            seen += labels.numel()
            steps += 1
            accelerator.log({"train/loss": step_loss, "train/lr": step_lr}, step=(epoch - 1) * len(loader) + steps)
            ips = seen * accelerator.num_processes / (time.perf_counter() - start)
            progress.advance(status=f"loss {loss_sum / seen:.3f}  train acc {correct / seen:.2%}  {ips:.0f} img/s")
        seconds = time.perf_counter() - start
        return EpochResult(
            epoch=epoch,
            train_loss=loss_sum / max(seen, 1),
            train_acc=correct / max(seen, 1),
            eval_acc=float("nan"),
            eval_split="",
            lr=step_lr,  # the rate of the epoch's last step
            images_per_s=seen * accelerator.num_processes / seconds,
            seconds=seconds,
            steps=steps,
        )
