"""Accuracy on a dataset, and top-k predictions for image files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, Dataset

from adapt.adapted import AdaptedModel
from adapt.data.images import open_rgb
from adapt.data.transforms import eval_transform


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
        probabilities = adapted.model(transform(open_rgb(path)).unsqueeze(0)).softmax(dim=-1)[0]
        values, indices = probabilities.topk(k)
        top = [(adapted.class_names[i], float(v)) for v, i in zip(values.tolist(), indices.tolist())]
        results.append(Prediction(path, top))
    return results
