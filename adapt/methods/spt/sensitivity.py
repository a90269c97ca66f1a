"""Parameter sensitivity for SPT: how much the task loss cares about each backbone weight.

The score of a weight is the sum over a few batches of its squared gradient of the task
loss, with a freshly initialised head, in training mode (as SPT's official code: the first
16 batches of 32 training images in order, unaugmented: SequentialSampler with --no_aug;
`sample="random"` draws them with replacement instead). BatchNorm statistics stay frozen,
as in every PEFT run. The result has one score tensor per backbone parameter, with that
parameter's name and shape.

Inside `remembered()` (a budget sweep), the scores of the last model and images are kept, so that each budget
of a task is allocated from one sensitivity pass, as the official code does (one pass, one allocation per
budget); outside it nothing is kept.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset

from adapt.backbones import create_backbone, is_head_key, preprocessing
from adapt.checkpoint import read_tensors, save_tensors_atomic
from adapt.progress import Steps
from adapt.data import image_size_for, load_data
from adapt.errors import AdaptError
from adapt.methods.lora import lora_eligible_weights
from adapt.methods.norms import freeze_norm_statistics
from adapt.methods.spt.allocation import Allocation, allocate
from adapt.methods.spt.ranking import ranked
from adapt.outputs import writing_file


_REMEMBERED: dict[str, tuple[tuple, dict[str, torch.Tensor]] | None] = {}  # "last": (key, scores) in remembered()


@contextlib.contextmanager
def remembered():
    """Keep the last scores while inside (one task's budget sweep); forget them after."""
    _REMEMBERED["last"] = None
    try:
        yield
    finally:
        _REMEMBERED.clear()


def sensitivity_once(model: nn.Module, images: Dataset, batches: int, batch_size: int, seed: int, sample: str,
                     context: tuple = ()) -> tuple[dict[str, torch.Tensor], bool]:  # fmt: skip
    """parameter_sensitivity, or inside `remembered()` the scores of the same model (its weights), images (their
    count and first image) and settings (`context`: what else shapes the pass) when the last pass had them.
    Returns (scores, whether they were remembered)."""
    if "last" not in _REMEMBERED:
        return parameter_sensitivity(model, images, batches, batch_size, seed, sample), False
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    first = images[0][0] if len(images) else torch.zeros(0)
    key = (digest.hexdigest(), len(images), hashlib.sha256(first.numpy().tobytes()).hexdigest(), batches, batch_size,
           seed, sample, context)  # fmt: skip
    last = _REMEMBERED["last"]
    if last is not None and last[0] == key:
        return last[1], True
    scores = parameter_sensitivity(model, images, batches, batch_size, seed, sample)
    _REMEMBERED["last"] = (key, scores)
    return scores, False


def parameter_sensitivity(model: nn.Module, images: Dataset, batches: int = 16, batch_size: int = 32,
                          seed: int = 0, sample: str = "first") -> dict[str, torch.Tensor]:  # fmt: skip
    """Scores per backbone parameter of `model` (a backbone with its head), from `images` (give them
    unaugmented). The model itself is left as it was: the pass runs on a copy; its random layers
    (drop-path, dropout) draw from `seed`."""
    model = copy.deepcopy(model)
    freeze_norm_statistics(model)
    model.train()
    model.requires_grad_(True)  # gradients for every backbone weight; nothing is stepped
    scores = {k: torch.zeros_like(p) for k, p in model.named_parameters() if not is_head_key(model, k)}
    if sample == "first":
        loader = DataLoader(Subset(images, range(min(len(images), batches * batch_size))), batch_size=batch_size)
    else:
        sampler = RandomSampler(images, replacement=True, num_samples=batches * batch_size,
                                generator=torch.Generator().manual_seed(seed))  # fmt: skip
        loader = DataLoader(images, batch_size=batch_size, sampler=sampler)
    with Steps("sensitivity (squared gradients)", len(loader)) as progress, torch.random.fork_rng():
        torch.manual_seed(seed)
        for batch, labels in loader:
            model.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(batch), labels).backward()
            for key, parameter in model.named_parameters():
                if key in scores and parameter.grad is not None:
                    scores[key] += parameter.grad.detach() ** 2
            progress.advance()
    return scores


def task_sensitivity(data: str, backbone: str, weights: str | None = None, image_size: int | None = None,
                     batches: int = 16, batch_size: int = 32, seed: int = 0, sample: str = "first",
                     drop_path: float = 0.1, limit: int | None = None,
                     ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:  # fmt: skip
    """`adapt sensitivity`: scores on a task's training images (unaugmented; a ViT with SPT's drop-path),
    and metadata naming the backbone and data."""
    from adapt.methods.spt.method import set_vit_drop_path

    defaults = preprocessing(backbone)
    size = image_size_for(data, image_size, defaults.image_size)
    splits = load_data(data, size, defaults.mean, defaults.std, limit=limit, seed=seed)
    model, info = create_backbone(backbone, weights, splits.num_classes, size, seed)
    set_vit_drop_path(model, drop_path)
    images = splits.tuning_images  # VTAB-1k: train800, as the official sensitivity configs
    scores = parameter_sensitivity(model, images, batches, batch_size, seed, sample)
    scores, eligible, always = ranked(model, scores, lora_eligible_weights(model))
    scores = {name: score.contiguous() for name, score in scores.items()}  # row blocks of a fused qkv are views
    metadata = {"backbone": info.name, "lora_eligible": json.dumps(sorted(eligible)), "always": json.dumps(always),
                "backbone_sha256": info.sha256, "backbone_weights": info.weights, "data": data, "image_size": str(size),
                "batches": str(batches), "batch_size": str(batch_size), "seed": str(seed), "sample": sample,
                "drop_path": str(drop_path),
                "class_names": json.dumps(splits.class_names)}  # fmt: skip
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
    rule: str = "exact",
    adapter_form: str = "sequential",
) -> Allocation:
    """`adapt allocate`: read scores, allocate the budget, write the allocation (and its heatmap)."""
    from adapt.methods.spt.allocation import plot_allocation

    plot_guard = writing_file(plot, overwrite, [scores_path, out], "plot") if plot else contextlib.nullcontext()
    with writing_file(out, overwrite, [scores_path, plot]), plot_guard:
        tensors, metadata = read_sensitivity(scores_path)
        eligible = set(json.loads(metadata.get("lora_eligible", "[]")))  # adapters fit the same layers
        always = json.loads(metadata.get("always", "{}"))
        allocation = allocate(tensors, budget, eligible, rank, alpha_threshold, structured_module, rule, always,
                              adapter_form)  # fmt: skip
        size = metadata.get("image_size", "")
        allocation.image_size = int(size) if size.isdigit() else None
        allocation.source = f"{scores_path} ({metadata.get('data', 'data not recorded')}, {metadata.get('backbone', '?')})"
        allocation.save(out)
        if plot is not None:
            plot_allocation(allocation, plot)
    return allocation


def read_sensitivity(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    scores, metadata = read_tensors(path)
    if metadata.get("adapt_sensitivity") != "1":
        raise AdaptError(f"{path} is not a sensitivity file (write one with adapt sensitivity)")
    return scores, metadata
