"""The method contract: what every adaptation method provides.

A method freezes the backbone, adds or unfreezes its own parameters (`apply`), says
which tensors it trained (`trainable_state`) and loads them back
(`load_trainable_state`). The classifier head always trains and is part of the
trainable state. Methods that keep BatchNorm statistics frozen (the usual PEFT choice,
and what makes their merge exact) freeze them inside the model (adapt.methods.norms), so
any training loop's `model.train()` leaves them as they are.
"""

from __future__ import annotations

import contextlib

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from adapt.backbones import is_head_key
from adapt.config import NoOptions, build, validate
from adapt.errors import AdaptError, compare_tensors, describe_mismatch, term
from adapt.methods.lean import keep_frozen_layers_lean
from adapt.methods.mixins import restore_plain_classes
from adapt.methods.norms import freeze_norm_statistics

if TYPE_CHECKING:
    from adapt.data import DataSplits
    from adapt.train_config import TrainConfig


class Method:
    name: ClassVar[str]
    summary: ClassVar[str]
    config_class: ClassVar[type] = NoOptions
    mergeable: ClassVar[bool] = False
    trains_norm_statistics: ClassVar[bool] = False
    default_lr: ClassVar[float] = 1e-3
    # weight decay when the run does not set it; it applies to >= 2-D tensors only (adapt.optimization)
    default_weight_decay: ClassVar[float] = 0.05
    budgeted: ClassVar[bool] = False  # its size is the user's --budget, not a property of the backbone
    # a weighted mean of its checkpoints' tensors is the weighted mean of the models it makes (SSF, BitFit,
    # full: the folded weights are linear in the tensors); False where it is not (LoRA's B·A is bilinear)
    averages_exactly: ClassVar[bool] = True
    merge_refusal: ClassVar[str] = "it adds computation that no weight can absorb"
    # why timm's gradient checkpointing cannot serve this method (AdaptedModel.set_grad_checkpointing); None: it can
    grad_checkpointing_refusal: ClassVar[str | None] = None

    def __init__(self, config: Any | None = None):
        self.config = config if config is not None else self.config_class()
        self.notes: list[str] = []  # what `prepare` found worth saying (a run's start line prints them)
        validate(self.config, f"method {self.name}")

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> Method:
        """The method with its options checked (adapt.config): types, ranges, regexes, unknown names."""
        return cls(build(cls.config_class, options, f"method {cls.name}"))

    @classmethod
    def check_sweep(cls, option: str, values: list[str], options: dict[str, Any]) -> None:
        """Refuse, before any run of a sweep, a value the method would refuse, or one value given twice
        (as `sweep_key` compares them)."""
        seen: dict[Any, str] = {}
        for value in values:
            cls.from_options({**options, option: value})
            key = cls.sweep_key(option, value)
            if key in seen:
                raise AdaptError(f"{term(option)} lists {seen[key]!r} and {value!r}, the same value twice; give each once")
            seen[key] = value

    @classmethod
    def sweeping(cls) -> contextlib.AbstractContextManager:
        """A context for the runs of one task's sweep: what they may share (SPT: the sensitivity scores)."""
        return contextlib.nullcontext()

    @classmethod
    def sweep_key(cls, option: str, value: str) -> Any:
        """What makes two swept values the same (their text, unless a method knows better)."""
        return value.strip()

    def options(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    def apply(self, model: nn.Module) -> nn.Module:
        """Freeze everything (frozen BatchNorms and convs keep no activation they do not need:
        adapt.methods.lean), let the method add/unfreeze its parameters, unfreeze the head.

        Returns the adapted model: `model` itself, or a wrapper around it (HST)."""
        model.requires_grad_(False)
        if not self.trains_norm_statistics:
            freeze_norm_statistics(model)
        keep_frozen_layers_lean(model)
        self.add_trainable(model)
        for key, parameter in model.named_parameters():
            if is_head_key(model, key):
                parameter.requires_grad_(True)
        return model

    def add_trainable(self, model: nn.Module) -> None:
        raise NotImplementedError

    def prepare(self, model: nn.Module, data: DataSplits | None, config: TrainConfig | None) -> None:
        """Set the method up from the task before `apply`: `model` is the built backbone with its
        fresh head, `data` the task's splits (None outside a training run). SPT scores and
        allocates its budget here; most methods need nothing."""

    def backbone_drop_path(self, model: nn.Module, requested: float) -> float:
        """The stochastic depth the frozen backbone's blocks train with, given the run's `drop_path`
        (what config.yaml records: a method that sets its own says so here)."""
        return requested

    def write_run_files(self, out_dir: Path) -> None:
        """Write what a fresh run's folder should keep besides the checkpoint (SPT: its allocation)."""

    def merge(self, model: nn.Module) -> nn.Module:
        """Fold what the method added into the backbone's own weights; the result has the
        original architecture (BatchNorms back to their plain class) and no extra modules."""
        if not self.mergeable:
            raise AdaptError(f"method {self.name} cannot be merged: {self.merge_refusal}")
        model = self.fold(model)
        restore_plain_classes(model)
        return model

    def fold(self, model: nn.Module) -> nn.Module:
        """Move what the method added into the weights, in place. Methods that train only
        existing tensors have nothing to fold."""
        return model

    def describe(self, model: nn.Module) -> str:
        """What the method trains on this (applied) model, for `adapt methods`."""
        return self.summary

    def report(self) -> str:
        """What `apply` did, in a line (e.g. which layers it wrapped)."""
        return ""

    def defaults_line(self) -> str:
        """The options users most often set, at their values here (a column of `adapt methods`)."""
        from adapt.methods import METHOD_FLAGS

        options = self.options()
        keys = [k for k, flag in METHOD_FLAGS.items() if self.name in flag.methods] + ["variant", "structured_module"]
        shown = [f"{k}={options[k]}" for k in keys if options.get(k) is not None and k not in ("targets", "alpha_threshold")]
        if self.budgeted and options.get("budget") is None and options.get("allocation") is None:
            shown.insert(0, "--budget needed")
        return ", ".join(shown) or "-"

    def options_line(self) -> str:
        """The method and its options in a line, for `adapt info`."""
        return f"{self.name} {json.dumps(self.options())}"

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {key: p.detach() for key, p in model.named_parameters() if p.requires_grad}

    def load_trainable_state(self, model: nn.Module, tensors: dict[str, torch.Tensor], source: str = "") -> None:
        """Copy `tensors` into the model; they must be exactly this method's trainable tensors."""
        own = self.trainable_state(model)
        mismatch = compare_tensors(
            {k: tuple(v.shape) for k, v in own.items()}, {k: tuple(v.shape) for k, v in tensors.items()}, "file", "model"
        )
        if any(mismatch):
            raise AdaptError(describe_mismatch(f"{source or 'tensors'} do not fit method {self.name}", *mismatch))
        for key, tensor in own.items():  # fp16 for fp32 is fine; an integer tensor for a float one is not
            if tensors[key].is_floating_point() != tensor.is_floating_point() or tensors[key].dtype == torch.bool:
                raise AdaptError(f"{source or 'tensors'}: {key} is {tensors[key].dtype}, the model's is {tensor.dtype}")
        with torch.no_grad():
            for key, tensor in own.items():
                tensor.copy_(tensors[key])


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
