"""The optimizer and learning-rate schedule every training loop uses: AdamW, and timm's warmup + cosine.

Weight decay goes to weight matrices only (ndim >= 2: the head's and fully tuned layers'), and not to what
the backbone itself names in `no_weight_decay()` (a ViT's cls_token and pos_embed): vectors (biases, norms,
SSF scales and shifts) get none, as the PEFT papers' optimizers filter it (timm's optimizer factory, SPT's
`build_optimizer`).

The schedule is timm's `CosineLRScheduler` itself, stepped the way a trainer steps it (LR_STEPPING):
- "epoch": once per epoch, `step(epoch + 1)` after each epoch, as timm's train.py does (SSF, HST), adapt's
  default (on digits it beat per-update stepping: benchmarks/results/schedule_digits.md);
- "epoch-lagged": once per epoch, `step(epoch)` after each epoch (SPT, NOAH, V-PETL Bench), so the rate runs
  one epoch behind: epochs 0 and 1 both train at warmup_lr;
- "step": once per optimizer update (t counts updates).
The cosine runs over all of `epochs` and the first warmup steps are replaced by the linear warmup from
warmup_lr (timm's warmup_prefix=False); after `epochs` (the cooldown epochs) the rate stays at min_lr.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from timm.scheduler import CosineLRScheduler

from adapt.train_config import LR_STEPPING


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay weight matrices only; vectors (biases, norms, SSF scales and shifts) and what a module names in
    its `no_weight_decay()` (a ViT's cls_token, pos_embed) get none."""
    skipped = _no_weight_decay_names(model)
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for name, p in trainable if p.ndim >= 2 and name not in skipped], "weight_decay": weight_decay},
        {"params": [p for name, p in trainable if p.ndim < 2 or name in skipped], "weight_decay": 0.0},
    ]


def _no_weight_decay_names(model: torch.nn.Module) -> set[str]:
    """Full parameter names that a submodule lists in its `no_weight_decay()` (timm's convention)."""
    names = set()
    for prefix, module in model.named_modules():
        listed = getattr(module, "no_weight_decay", None)
        if callable(listed):
            names |= {f"{prefix}.{name}" if prefix else name for name in listed()}
    return names


class Schedule:
    """timm's CosineLRScheduler over an optimizer, stepped as `stepping` says (LR_STEPPING).

    `epochs` is the cosine's length (cooldown epochs after it stay at min_lr), `warmup` a share of it,
    `updates_per_epoch` the optimizer updates of one epoch (for "step"). The position (updates done, epochs
    done) is the whole state, so a resumed run, even one re-planned for more epochs, continues from it."""

    def __init__(self, optimizer: torch.optim.Optimizer, stepping: str, epochs: int, updates_per_epoch: int,
                 warmup: float, warmup_lr: float = 0.0, min_lr: float = 0.0):  # fmt: skip
        if stepping not in LR_STEPPING:
            raise ValueError(f"lr stepping {stepping!r} is not one of {', '.join(LR_STEPPING)}")
        self.stepping = stepping
        length = epochs * updates_per_epoch if stepping == "step" else epochs
        quiet = logging.getLogger(CosineLRScheduler.__module__)  # it warns that a 1-step cosine is flat: it is meant
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            self.timm = CosineLRScheduler(optimizer, t_initial=max(1, length), lr_min=min_lr, warmup_t=round(warmup * length),
                                          warmup_lr_init=warmup_lr, warmup_prefix=False, t_in_epochs=stepping != "step")  # fmt: skip
        finally:
            quiet.setLevel(level)
        self.updates = 0
        self.epochs = 0

    def after_update(self) -> None:
        """One optimizer update done."""
        self.updates += 1
        if self.stepping == "step":
            self.timm.step_update(self.updates)

    def after_epoch(self) -> None:
        """One epoch done: the per-epoch schedules set the next epoch's rate."""
        self.epochs += 1
        self._set_epoch_rate()

    def _set_epoch_rate(self) -> None:
        if self.stepping == "epoch":
            self.timm.step(self.epochs)
        elif self.stepping == "epoch-lagged" and self.epochs > 0:
            self.timm.step(self.epochs - 1)

    @property
    def lr(self) -> float:
        """The rate the next step uses (of the first parameter group)."""
        return self.timm.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        return {"stepping": self.stepping, "updates": self.updates, "epochs": self.epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position (a LambdaLR's state, from runs before timm's schedule, counts updates)."""
        self.updates = int(state.get("updates", state.get("last_epoch", 0)))
        self.epochs = int(state.get("epochs", 0))
        if self.stepping == "step":
            self.timm.step_update(self.updates)
        else:
            self._set_epoch_rate()


def optimizer_and_schedule(
    model: torch.nn.Module, lr: float, weight_decay: float, stepping: str, epochs: int, updates_per_epoch: int,
    warmup: float, warmup_lr: float = 0.0, min_lr: float = 0.0,
) -> tuple[torch.optim.Optimizer, Schedule]:  # fmt: skip
    """AdamW over the trainable parameters (parameter_groups) and its Schedule."""
    optimizer = torch.optim.AdamW(parameter_groups(model, weight_decay), lr=lr)
    return optimizer, Schedule(optimizer, stepping, epochs, updates_per_epoch, warmup, warmup_lr, min_lr)
