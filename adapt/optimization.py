"""The optimizer and learning-rate schedule every training loop uses: AdamW, warmup then cosine.

Weight decay goes to weight matrices only (ndim >= 2: the head's and fully tuned layers');
vectors (biases, norms, SSF scales and shifts) get none, as the PEFT papers' optimizers filter it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch


def warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR multiplier: linear from 0 to 1 over `warmup_steps`, then cosine down to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay weight matrices only; vectors (biases, norms, SSF scales and shifts) get none."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]


def optimizer_and_schedule(
    model: torch.nn.Module, lr: float, weight_decay: float, warmup: float, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the trainable parameters, stepped per optimizer step: `warmup` (a share of
    `total_steps`) of linear warmup, then cosine decay to 0."""
    optimizer = torch.optim.AdamW(parameter_groups(model, weight_decay), lr=lr)
    schedule = warmup_cosine(round(warmup * total_steps), total_steps)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
