"""Where a run computes: accelerate's Accelerator, made fresh per run, and which process writes.

Below both training (adapt.train) and evaluation (adapt.evaluation), so neither imports the other for it.
"""

from __future__ import annotations

from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState, GradientState

from adapt.errors import AdaptError, term
from adapt.train_config import PRECISIONS, TrainConfig


def make_accelerator(**settings: Any) -> Accelerator:
    """A fresh Accelerator. Its settings live in process-wide singletons, which a library that
    trains several models in one process (sweeps, tests) must reset; the distributed setup
    stays. Without a GPU it runs on CPUs, which lets torchrun/launch use gloo."""
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    return Accelerator(cpu=not torch.accelerator.is_available(), **settings)


def precision_accelerator(config: TrainConfig, log_with: list[Any] | None = None) -> Accelerator:
    """An Accelerator with the asked precision, or, with none asked, accelerate's own choice
    (`accelerate config`, `accelerate launch --mixed_precision`, ACCELERATE_MIXED_PRECISION).
    fp16 needs a GPU: on CPU it would silently train in fp32, so it is refused."""
    settings: dict[str, Any] = {"gradient_accumulation_steps": config.grad_accum, "log_with": log_with or None}
    if config.precision is not None:
        settings["mixed_precision"] = PRECISIONS[config.precision]
    try:
        accelerator = make_accelerator(**settings)
    except (ValueError, KeyError) as error:
        raise AdaptError(f"precision {config.precision or 'from accelerate'} is not available here: {error}") from None
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise AdaptError(f"fp16 needs a GPU; on the CPU use {term('precision')} bf16 or fp32")
    return accelerator


def is_main_process() -> bool:
    """Whether this is the process that writes files (rank 0 under torchrun / accelerate launch)."""
    return PartialState(cpu=not torch.accelerator.is_available()).is_main_process


def peak_memory(device: torch.device) -> dict[str, Any]:
    """A run's peak memory and what was measured: on a GPU its peak allocated bytes (what training held);
    elsewhere the process's peak resident size (everything the process loaded, since it started)."""
    if device.type == "cuda":
        return {"bytes": int(torch.cuda.max_memory_allocated(device)), "measure": "cuda peak allocated"}
    import resource

    return {"bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "measure": "process peak RSS"}
