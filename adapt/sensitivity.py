"""Parameter sensitivity for SPT: how much the task loss cares about each backbone weight.

The score of a weight is the sum over a few batches of its squared gradient of the task
loss, with a freshly initialised head (as SPT's official code: 16 batches of 32 training
images). BatchNorm statistics stay frozen, as in every PEFT run. The result has one
score tensor per backbone parameter, with that parameter's name and shape.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

import torch
from rich.progress import Progress
from torch.utils.data import DataLoader, RandomSampler

from adapt.backbones import is_head_key
from adapt.allocation import Allocation, allocate, parse_budget
from adapt.checkpoint import read_tensors, save_tensors_atomic
from adapt.errors import AdaptError
from adapt.methods.lora import lora_eligible_weights
from adapt.outputs import writing_file
from adapt.train import TrainConfig
from adapt.tune import TuneJob, prepare


def parameter_sensitivity(
    job: TuneJob, batches: int = 16, batch_size: int = 32, seed: int = 0
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Scores per backbone parameter, and metadata naming the backbone and data they came from."""
    adapted, data = prepare(dataclasses.replace(job, method="linear", options=None, budget=None, allocation=None), job.data,
                            TrainConfig(seed=seed))  # fmt: skip
    model = adapted.model
    adapted.method.set_train_mode(model)  # train mode, BatchNorm statistics frozen
    model.requires_grad_(True)  # gradients for every backbone weight; nothing is stepped
    scores = {k: torch.zeros_like(p) for k, p in model.named_parameters() if not is_head_key(model, k)}
    generator = torch.Generator().manual_seed(seed)
    sampler = RandomSampler(data.train, replacement=True, num_samples=batches * batch_size, generator=generator)
    loader = DataLoader(data.train, batch_size=batch_size, sampler=sampler)
    with Progress(transient=True) as progress:
        task = progress.add_task("sensitivity", total=batches)
        for images, labels in loader:
            model.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(images), labels).backward()
            for key, parameter in model.named_parameters():
                if key in scores and parameter.grad is not None:
                    scores[key] += parameter.grad.detach() ** 2
            progress.advance(task)
    eligible = sorted(lora_eligible_weights(model))
    metadata = {"backbone": adapted.backbone.name, "lora_eligible": json.dumps(eligible), "backbone_sha256": adapted.backbone.sha256,
                "backbone_weights": adapted.backbone.weights, "data": job.data, "image_size": str(adapted.image_size),
                "batches": str(batches), "batch_size": str(batch_size), "seed": str(seed),
                "class_names": json.dumps(data.class_names)}  # fmt: skip
    return scores, metadata


def save_sensitivity(
    path: str | Path, scores: dict[str, torch.Tensor], metadata: dict[str, str], overwrite: bool = False
) -> None:
    with writing_file(path, overwrite):
        save_tensors_atomic(path, scores, {"adapt_sensitivity": "1", **metadata})


def allocate_file(
    scores_path: str | Path,
    budget: str | int,
    out: str | Path,
    rank: int = 8,
    alpha_threshold: float = 10.0,
    structured_module: str = "lora",
    plot: str | Path | None = None,
    overwrite: bool = False,
) -> Allocation:
    """`adapt allocate`: read scores, allocate the budget, write the allocation (and its heatmap)."""
    from adapt.allocation import plot_allocation

    plot_guard = writing_file(plot, overwrite, [scores_path, out]) if plot else contextlib.nullcontext()
    with writing_file(out, overwrite, [scores_path, plot]), plot_guard:
        tensors, metadata = read_sensitivity(scores_path)
        allocation = allocate_from_scores(tensors, metadata, budget, rank, alpha_threshold, structured_module)
        allocation.save(out)
        if plot is not None:
            plot_allocation(allocation, plot)
    return allocation


def read_sensitivity(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    scores, metadata = read_tensors(path)
    if metadata.get("adapt_sensitivity") != "1":
        raise AdaptError(f"{path} is not a sensitivity file (write one with adapt sensitivity)")
    return scores, metadata


def allocate_from_scores(
    scores: dict[str, torch.Tensor],
    metadata: dict[str, str],
    budget: str | int,
    rank: int = 8,
    alpha_threshold: float = 10.0,
    structured_module: str = "lora",
) -> Allocation:
    """Parse the budget against the backbone's size and allocate it."""
    total = sum(t.numel() for t in scores.values())
    eligible = set(json.loads(metadata.get("lora_eligible", "[]")))  # adapters fit the same layers
    return allocate(scores, parse_budget(budget, total), eligible, rank, alpha_threshold, structured_module)
