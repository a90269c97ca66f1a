"""Accuracy on a dataset, and top-k predictions for image files."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, Dataset

from adapt.adapted import AdaptedModel
from adapt.checkpoint import all_finite, checkpoint_file
from adapt.data.images import open_rgb
from adapt.data.transforms import eval_transform
from adapt.errors import AdaptError, term
from adapt.progress import Steps


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


@dataclass
class Scores:
    """What one pass over a labelled dataset measures: the confusion matrix (rows: true class, columns:
    predicted output), the mean cross-entropy, and top-5 hits where there are more than 5 outputs."""

    confusion: torch.Tensor
    loss: float
    top5: float | None

    @property
    def accuracy(self) -> float:
        return float(self.confusion.diagonal().sum()) / max(int(self.confusion.sum()), 1)

    def per_class(self) -> list[float | None]:
        """Top-1 accuracy of each true class (None for a class without images)."""
        counts = self.confusion.sum(dim=1)
        return [float(hit) / int(n) if n else None for hit, n in zip(self.confusion.diagonal().tolist(), counts.tolist())]


@torch.no_grad()
def scores(
    model: nn.Module,
    dataset: Dataset,
    accelerator: Accelerator,
    batch_size: int = 128,
    columns: range | None = None,
    progress: str | None = None,
) -> Scores:
    """Scores over the whole dataset (gathered across processes).

    columns: predict among these outputs only (task-incremental evaluation). progress: show a
    bar (or log lines) with this description."""
    loader = accelerator.prepare(DataLoader(dataset, batch_size=batch_size, shuffle=False))
    with Steps(progress or "", len(loader), progress is not None and accelerator.is_main_process) as steps:
        return _scores(model, loader, accelerator, columns, steps)


def _scores(model: nn.Module, loader: DataLoader, accelerator: Accelerator, columns: range | None, steps: Steps) -> Scores:
    was_training = model.training
    model.eval()
    confusion: torch.Tensor | None = None
    loss_sum, top5_hits = 0.0, 0
    for images, labels in loader:
        logits = model(images)
        if not all_finite(logits):
            raise NonFiniteOutput("the model's outputs (logits) hold NaN/Inf")
        if columns is not None:
            masked = torch.full_like(logits, float("-inf"))
            masked[:, columns.start : columns.stop] = logits[:, columns.start : columns.stop]
            logits = masked
        outputs = logits.shape[-1]
        losses = nn.functional.cross_entropy(logits.float(), labels, reduction="none")
        top5 = (logits.topk(min(5, outputs), dim=-1).indices == labels[:, None]).any(dim=-1)
        predictions, labels, losses, top5 = accelerator.gather_for_metrics((logits.argmax(dim=-1), labels, losses, top5))
        if confusion is None:
            confusion = torch.zeros(outputs, outputs, dtype=torch.int64)
        confusion += torch.bincount(labels.cpu() * outputs + predictions.cpu(), minlength=outputs * outputs).view(outputs, outputs)
        loss_sum += float(losses.sum())
        top5_hits += int(top5.sum())
        steps.advance()
    model.train(was_training)
    if confusion is None:
        return Scores(torch.zeros(0, 0, dtype=torch.int64), 0.0, None)
    total = max(int(confusion.sum()), 1)
    return Scores(confusion, loss_sum / total, top5_hits / total if confusion.shape[0] > 5 else None)


def accuracy(
    model: nn.Module, dataset: Dataset, accelerator: Accelerator, batch_size: int = 128, columns: range | None = None
) -> float:
    """Top-1 accuracy over the whole dataset (gathered across processes); see `scores`."""
    return scores(model, dataset, accelerator, batch_size, columns).accuracy


@dataclass
class Prediction:
    path: Path
    top: list[tuple[str, float]]  # (class name, probability), best first


@dataclass
class PredictionRun:
    """Predictions for the images that could be read, and why each other one was skipped."""

    predictions: list[Prediction]
    skipped: list[tuple[Path, str]]  # (path, the one-line reason)


def image_paths(inputs: list[Path]) -> list[Path]:
    """The image files that `adapt predict` inputs name: files as given, a folder's images (recursively,
    sorted), and glob patterns expanded. A name that matches nothing stays, to be reported as skipped."""
    import glob

    from adapt.data.folder import IMAGE_SUFFIXES

    paths: list[Path] = []
    for given in inputs:
        if Path(given).is_dir():
            paths += sorted(p for p in Path(given).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif not Path(given).exists() and glob.has_magic(str(given)):
            paths += [Path(p) for p in sorted(glob.glob(str(given), recursive=True)) if Path(p).is_file()]
        else:
            paths.append(Path(given))
    return paths


@torch.no_grad()
def predict_files(adapted: AdaptedModel, paths: list[Path], top_k: int = 5, batch_size: int = 32) -> PredictionRun:
    """Top-k classes of each image, `batch_size` images per forward pass; an unreadable image is skipped."""
    transform = eval_transform(adapted.image_size, adapted.mean, adapted.std, adapted.interpolation)
    adapted.model.eval()
    k = min(top_k, len(adapted.class_names))
    run = PredictionRun([], [])
    for start in range(0, len(paths), batch_size):
        batch, inputs = [], []
        for path in paths[start : start + batch_size]:
            try:
                inputs.append(transform(open_rgb(path)))
                batch.append(path)
            except AdaptError as error:
                run.skipped.append((path, str(error)))
        if not batch:
            continue
        logits = adapted.model(torch.stack(inputs))
        if not all_finite(logits):
            raise NonFiniteOutput(f"the model's outputs for {batch[0]}… hold NaN/Inf")
        values, indices = logits.softmax(dim=-1).topk(k)
        for path, row_values, row_indices in zip(batch, values.tolist(), indices.tolist()):
            run.predictions.append(Prediction(path, [(adapted.class_names[i], v) for v, i in zip(row_values, row_indices)]))
    return run


def predict_checkpoint(
    checkpoint: str | Path,
    inputs: list[Path],
    top_k: int = 5,
    weights: str | None = None,
    batch_size: int = 32,
    out: str | Path | None = None,
    format: str = "csv",
    overwrite: bool = False,
) -> PredictionRun:
    """predict_files with the model of any checkpoint adapt writes (`adapt predict`), over files, folders
    and globs; `out` also writes them there (predictions_text), checked before any work."""
    from adapt.checkpoint import write_text_atomic
    from adapt.outputs import writing_file

    from adapt.data.folder import IMAGE_SUFFIXES

    if out is not None and Path(out).suffix.lower() in IMAGE_SUFFIXES:  # an image-named text file breaks folder data
        raise AdaptError(f"{term('out')} {out} is named as an image; predictions are text: name it .csv or .json")
    paths = image_paths(inputs)
    if not paths:
        raise AdaptError(f"no images in {', '.join(map(str, inputs))}")
    with writing_file(out, overwrite, [checkpoint, *paths]) if out is not None else contextlib.nullcontext():
        adapted, _ = AdaptedModel.from_checkpoint(checkpoint, weights)
        with naming_broken(checkpoint):
            run = predict_files(adapted, paths, top_k, batch_size)
        if not run.predictions:
            first = run.skipped[0][1]
            raise AdaptError(first if len(paths) == 1 else f"none of the {len(paths)} images could be read; the first: {first}")
        if out is not None:
            write_text_atomic(out, predictions_text(run, format))
    return run


def predictions_text(run: PredictionRun, format: str) -> str:
    """CSV (path, then class and probability per rank, as timm's inference.py writes them) or JSON
    (a list of {path, top: [{class, probability}]})."""
    import csv
    import io
    import json

    if format == "json":
        rows = [{"path": str(p.path), "top": [{"class": c, "probability": v} for c, v in p.top]} for p in run.predictions]
        return json.dumps(rows, indent=2) + "\n"
    k = max((len(p.top) for p in run.predictions), default=0)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", *[f"{column}_{r}" for r in range(1, k + 1) for column in ("class", "probability")]])
    for p in run.predictions:
        writer.writerow([str(p.path), *[x for c, v in p.top for x in (c, f"{v:.6f}")]])
    return buffer.getvalue()


@dataclass
class EvalResult:
    accuracy: float
    images: int
    data: str  # the data's name
    split: str
    classes: int  # the classes scored: all of the data's, or the checkpoint's subset of them
    spec: str = ""  # the data spec scored
    top5: float | None = None  # where there are more than 5 classes
    loss: float = 0.0  # mean cross-entropy
    per_class: dict[str, float | None] = field(default_factory=dict)  # top-1 per class name (None: no images)
    limit: int | None = None  # at most this many images per split were scored
    note: str = ""  # how this figure relates to the run's own (a run trained with --limit)


def eval_file(checkpoint: str | Path) -> Path | None:
    """Where `adapt eval` keeps a checkpoint's results unasked: NAME.eval.json beside it (one file per
    checkpoint, so evaluating two in one folder keeps both). None in the working folder, where nothing
    is written unasked, and in a folder that cannot be written."""
    import os

    path = checkpoint_file(checkpoint)
    folder = path.parent
    if folder.resolve() == Path.cwd().resolve() or not os.access(folder, os.W_OK):
        return None
    target = folder / f"{path.stem}.eval.json"
    return None if target.exists() and not target.is_file() else target


def eval_key(result: EvalResult) -> str:
    """One entry per data, split and limit: a --limit run never replaces the whole split's result."""
    return f"{result.spec}:{result.split}" + (f":limit={result.limit}" if result.limit is not None else "")


def save_eval(result: EvalResult, checkpoint: str | Path, out: str | Path | None = None, overwrite: bool = False) -> Path | None:
    """The result as JSON: at `out`, or added to the checkpoint's eval_file (None when there is none)."""
    import dataclasses
    import json

    from adapt.checkpoint import write_json_atomic
    from adapt.outputs import writing_file

    record = {**dataclasses.asdict(result), "checkpoint": str(checkpoint)}
    if out is not None:
        with writing_file(out, overwrite, [checkpoint]):
            write_json_atomic(out, record)
        return Path(out)
    path = eval_file(checkpoint)
    if path is None:
        return None
    try:
        entries = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        entries = {}
    entries = entries if isinstance(entries, dict) else {}
    entries[eval_key(result)] = record
    write_json_atomic(path, entries)
    return path


def plot_confusion(confusion: torch.Tensor, class_names: list[str], path: str | Path, title: str = "") -> None:
    """The confusion matrix as a PNG, each row as shares (%) of the true class's images; names and values
    are written in up to 30 classes (beyond, they would not be readable)."""
    from adapt.plots import percent_heatmap

    counts = confusion.double()
    shares = 100 * counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    values = [[float(v) if n else None for v, n in zip(row, count_row)] for row, count_row in zip(shares, counts)]
    percent_heatmap(values, path, title or "confusion matrix (% of each true class)", (class_names, class_names),
                    ("predicted class", "true class"), min(4 + 0.35 * len(class_names), 30), len(class_names) <= 30)  # fmt: skip


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | None = None,
    split: str = "test",
    split_protocol: str = "final",
    weights: str | None = None,
    batch_size: int = 128,
    limit: int | None = None,
    plot: str | Path | None = None,
    overwrite: bool = False,
) -> EvalResult:
    """Top-1, top-5, loss and per-class accuracy of any checkpoint adapt writes (adapter, continual task,
    merged, soup; a file or a hub/run folder) on a split; `plot` draws the confusion matrix there.

    data None means the data recorded in the checkpoint. A checkpoint that knows only some
    of the data's classes (a continual task's) is scored on the images of those classes; outputs and
    labels are matched by class name (adapt.data.subsets.align_classes)."""
    from adapt.data import load_data
    from adapt.data.subsets import align_classes
    from adapt.devices import make_accelerator
    from adapt.outputs import check_output_file

    if plot is not None:
        check_output_file(plot, overwrite, [checkpoint], "plot")
    adapted, meta = AdaptedModel.from_checkpoint(checkpoint, weights)
    spec = data or meta.training.get("data")
    if not spec:
        raise AdaptError(f"{checkpoint} does not record its data; pass {term('data')}")
    seed = meta.training.get("seed", 0)
    seed = seed if isinstance(seed, int) else 0
    splits = load_data(spec, adapted.image_size, adapted.mean, adapted.std, split_protocol, limit, seed, augment="off",
                       interpolation=adapted.interpolation)  # the run's own seeded choice under --limit  # fmt: skip
    dataset = getattr(splits, split)
    if dataset is None:
        raise AdaptError(f"{spec} has no {split} split")
    known = adapted.class_names
    dataset = align_classes(dataset, splits.class_names, known, str(checkpoint))
    with naming_broken(checkpoint):
        result = scores(adapted.model, dataset, make_accelerator(), batch_size, progress=f"evaluating on {split}")
    if plot is not None:
        plot_confusion(result.confusion, known, plot, f"{Path(checkpoint).name} on {splits.name} {split}")
    per_class = dict(zip(known, result.per_class()))
    trained_limit = meta.training.get("limit")
    note = (f"the run used --limit {trained_limit} (a seeded choice of at most {trained_limit} images per split); this "
            f"scores all {len(dataset)} images of {split}: --limit {trained_limit} gives the run's own figure"
            if trained_limit and limit is None and spec == meta.training.get("data") else "")  # fmt: skip
    return EvalResult(result.accuracy, len(dataset), splits.name, split, len(known), spec, result.top5, result.loss,
                      per_class, limit, note)  # fmt: skip
