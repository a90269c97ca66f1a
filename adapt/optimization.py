"""The optimizer and learning-rate schedule every training loop uses: AdamW, warmup then cosine.

Weight decay goes to weight matrices only (ndim >= 2: the head's and fully tuned layers');
vectors (biases, norms, SSF scales and shifts) get none, as the PEFT papers' optimizers filter it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch


def warmup_cosine(warmup_steps: int, total_steps: int, start: float = 0.0, floor: float = 0.0) -> Callable[[int], float]:
    """LR multiplier: linear from `start` to 1 over `warmup_steps`, then cosine down to `floor` at `total_steps`,
    and `floor` after it (timm's cooldown epochs at min-lr). start and floor are warmup-lr / lr and min-lr / lr."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return start + (1.0 - start) * (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay weight matrices only; vectors (biases, norms, SSF scales and shifts) get none."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]


def optimizer_and_schedule(
    model: torch.nn.Module, lr: float, weight_decay: float, warmup: float, total_steps: int,
    warmup_lr: float = 0.0, min_lr: float = 0.0,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:  # fmt: skip
    """AdamW over the trainable parameters, stepped per optimizer step: `warmup` (a share of
    `total_steps`) of linear warmup from `warmup_lr`, then cosine decay to `min_lr` at `total_steps`,
    and `min_lr` for any step after (cooldown)."""
    optimizer = torch.optim.AdamW(parameter_groups(model, weight_decay), lr=lr)
    schedule = warmup_cosine(round(warmup * total_steps), total_steps, warmup_lr / lr, min_lr / lr)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
