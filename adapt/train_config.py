"""The training hyperparameters of every command that trains, checked when built (adapt.config).

Kept apart from the training loop so that the CLI can show their defaults without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from adapt.config import MAX_SEED, option, validate

PRECISIONS = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}  # ours -> accelerate's mixed_precision


@dataclass
class TrainConfig:
    epochs: int = option(10, low=1, high=100_000)
    batch_size: int = option(32, low=1, high=65_536)
    lr: float | None = option(None, low=0, low_open=True, high=10)  # None: the method's default
    weight_decay: float = option(0.05, low=0, high=10)
    warmup: float = option(0.1, low=0, high=1)  # fraction of all optimizer steps
    grad_accum: int = option(1, low=1, high=65_536)
    precision: str | None = option(None, choices=(None, *PRECISIONS))  # None: accelerate's config and environment
    seed: int = option(0, low=0, high=MAX_SEED)
    workers: int = option(0, low=0, high=256)

    def __post_init__(self) -> None:
        validate(self, "training options")
