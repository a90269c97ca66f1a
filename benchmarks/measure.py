"""Measurements the benchmarks share: inference latency, training cost, step time, mean ± std."""

from __future__ import annotations

import statistics
import time
from contextlib import nullcontext

import torch

from adapt.adapted import AdaptedModel
from adapt.merging.reparam import peak_extra_bytes
from adapt.methods.norms import statistics_kept
from adapt.train import FitResult


@torch.no_grad()
def interleaved_latency(models: dict[str, torch.nn.Module], x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median forward time of each model; the models take turns in every repeat, so that a
    machine that speeds up or slows down during the run does not favour one of them."""
    for model in models.values():
        model.eval()(x)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            start = time.perf_counter()
            model(x)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def mean_step_seconds(result: FitResult) -> float:
    """Mean wall time of a training step over a whole run (data loading included)."""
    return sum(h.seconds for h in result.history) / sum(h.steps for h in result.history)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def training_cost(adapted: AdaptedModel, images: torch.Tensor, labels: torch.Tensor, steps: int) -> tuple[float, int]:
    """(median seconds per training step, peak bytes the steps kept alive beyond the model and
    data: activations saved for backward, gradients, optimizer state), AdamW as in training."""
    return interleaved_training_cost({"model": adapted}, images, labels, steps)["model"]


def interleaved_training_cost(models: dict[str, AdaptedModel], images: torch.Tensor, labels: torch.Tensor,
                              steps: int) -> dict[str, tuple[float, int]]:  # fmt: skip
    """training_cost of each model, their steps taking turns so that a machine that speeds up or slows
    down during the run favours none of them. The peak is that of each model's first two steps,
    which are not timed: the first creates the optimizer state, the second runs on top of it."""
    runs = {}
    for name, adapted in models.items():
        model = adapted.model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        runs[name] = (model, optimizer, [])

    def step(name: str) -> None:
        model, optimizer, seconds = runs[name]
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        with statistics_kept(model) if getattr(model, "grad_checkpointing", False) else nullcontext():  # as adapt.train
            loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        seconds.append(time.perf_counter() - start)

    peaks = {}
    for name in runs:
        peaks[name] = peak_extra_bytes(lambda: (step(name), step(name)))
        runs[name][2].clear()
    for _ in range(steps):
        for name in runs:
            step(name)
    return {name: (statistics.median(seconds), peaks[name]) for name, (_, _, seconds) in runs.items()}
