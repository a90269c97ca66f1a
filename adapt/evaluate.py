"""Accuracy on a dataset, and top-k predictions for image files."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, Dataset

from adapt.adapted import AdaptedModel
from adapt.checkpoint import all_finite
from adapt.data.images import open_rgb
from adapt.data.transforms import eval_transform
from adapt.errors import AdaptError, term


class NonFiniteOutput(AdaptError):
    """A model computed NaN/Inf: its weights are broken (a NaN soup, a negative BatchNorm variance)."""


@contextlib.contextmanager
def naming_broken(checkpoint: str | Path) -> Iterator[None]:
    """Turn NaN/Inf outputs met in the block into an error naming the checkpoint and where to look."""
    try:
        yield
    except NonFiniteOutput:
        raise AdaptError(f"the model of {checkpoint} computes NaN/Inf outputs, so its weights are broken (NaN values, "
                         f"or a negative BatchNorm running_var); inspect it with: adapt info {checkpoint}") from None


@torch.no_grad()
def accuracy(
    model: nn.Module, dataset: Dataset, accelerator: Accelerator, batch_size: int = 128, columns: range | None = None
) -> float:
    """Top-1 accuracy over the whole dataset (gathered across processes).

    columns: predict among these outputs only (task-incremental evaluation)."""
    loader = accelerator.prepare(DataLoader(dataset, batch_size=batch_size, shuffle=False))
    was_training = model.training
    model.eval()
    correct = total = 0
    for images, labels in loader:
        logits = model(images)
        if not all_finite(logits):
            raise NonFiniteOutput("the model's outputs (logits) hold NaN/Inf")
        if columns is not None:
            masked = torch.full_like(logits, float("-inf"))
            masked[:, columns.start : columns.stop] = logits[:, columns.start : columns.stop]
            logits = masked
        predictions = logits.argmax(dim=-1)
        predictions, labels = accelerator.gather_for_metrics((predictions, labels))
        correct += int((predictions == labels).sum())
        total += labels.numel()
    model.train(was_training)
    return correct / max(total, 1)


@dataclass
class Prediction:
    path: Path
    top: list[tuple[str, float]]  # (class name, probability), best first


@torch.no_grad()
def predict_files(adapted: AdaptedModel, paths: list[Path], top_k: int = 5) -> list[Prediction]:
    transform = eval_transform(adapted.image_size, adapted.mean, adapted.std)
    adapted.model.eval()
    k = min(top_k, len(adapted.class_names))
    results = []
    for path in paths:
        logits = adapted.model(transform(open_rgb(path)).unsqueeze(0))
        if not all_finite(logits):
            raise NonFiniteOutput(f"the model's outputs for {path} hold NaN/Inf")
        probabilities = logits.softmax(dim=-1)[0]
        values, indices = probabilities.topk(k)
        top = [(adapted.class_names[i], float(v)) for v, i in zip(values.tolist(), indices.tolist())]
        results.append(Prediction(path, top))
    return results


def predict_checkpoint(checkpoint: str | Path, paths: list[Path], top_k: int = 5, weights: str | None = None) -> list[Prediction]:
    """predict_files with the model of any checkpoint adapt writes (`adapt predict`)."""
    adapted, _ = AdaptedModel.from_checkpoint(checkpoint, weights)
    with naming_broken(checkpoint):
        return predict_files(adapted, paths, top_k)


@dataclass
class EvalResult:
    accuracy: float
    images: int
    data: str  # the data's name
    split: str
    classes: int  # the classes scored: all of the data's, or the checkpoint's subset of them
    spec: str = ""  # the data spec scored


EVAL_FILE = "eval.json"


def save_eval(result: EvalResult, checkpoint: str | Path, out: str | Path | None = None, overwrite: bool = False) -> Path | None:
    """The result as JSON: at `out`, or in eval.json beside the checkpoint (one entry per data and split,
    updated, when that folder is writable; None when it is not)."""
    import dataclasses
    import json
    import os

    from adapt.checkpoint import write_json_atomic
    from adapt.outputs import writing_file

    record = {**dataclasses.asdict(result), "checkpoint": str(checkpoint)}
    if out is not None:
        with writing_file(out, overwrite, [checkpoint]):
            write_json_atomic(out, record)
        return Path(out)
    path = Path(checkpoint).parent / EVAL_FILE
    if not os.access(path.parent, os.W_OK) or (path.exists() and not path.is_file()):
        return None
    try:
        entries = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        entries = {}
    entries = entries if isinstance(entries, dict) else {}
    entries[f"{result.spec}:{result.split}"] = record
    write_json_atomic(path, entries)
    return path


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | None = None,
    split: str = "test",
    split_protocol: str = "final",
    weights: str | None = None,
    batch_size: int = 128,
    limit: int | None = None,
) -> EvalResult:
    """Accuracy of any checkpoint adapt writes (adapter, continual task, merged, soup) on a split.

    data None means the data recorded in the checkpoint. A checkpoint that knows only some
    of the data's classes (a continual task's) is scored on the images of those classes; outputs and
    labels are matched by class name (adapt.data.subsets.align_classes)."""
    from adapt.data import load_data
    from adapt.data.subsets import align_classes
    from adapt.devices import make_accelerator

    adapted, meta = AdaptedModel.from_checkpoint(checkpoint, weights)
    spec = data or meta.training.get("data")
    if not spec:
        raise AdaptError(f"{checkpoint} does not record its data; pass {term('data')}")
    splits = load_data(spec, adapted.image_size, adapted.mean, adapted.std, split_protocol, limit, augment="off")
    dataset = getattr(splits, split)
    if dataset is None:
        raise AdaptError(f"{spec} has no {split} split")
    known = adapted.class_names
    dataset = align_classes(dataset, splits.class_names, known, str(checkpoint))
    with naming_broken(checkpoint):
        acc = accuracy(adapted.model, dataset, make_accelerator(), batch_size)
    return EvalResult(acc, len(dataset), splits.name, split, len(known), spec)
