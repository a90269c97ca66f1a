"""The Python API: each command as one call that returns its result (and prints nothing but progress).

    import adapt

    run = adapt.tune("runs/ssf", method="ssf", data="digits", epochs=5)      # a FitResult
    model = adapt.load("runs/ssf")        # a torch.nn.Module carrying timm's pretrained_cfg
    scores = adapt.evaluate("runs/ssf", split="test")                        # an EvalResult
    guesses = adapt.predict("runs/ssf", ["cat.jpg"])                         # a PredictionRun
    merged = adapt.merge("runs/ssf", "merged/")                              # a MergeResult
    soup = adapt.soup(["a", "b"], "soup.safetensors", recipe="ties", base="embedded")   # a SoupSummary
    study = adapt.continual("runs/cl", learner="lwf", seed=1)                # a ContinualResult

`adapt/__init__.py` imports these lazily, so `import adapt` (and `adapt --help`) loads no torch. The keyword
arguments are the command's options by their Python names (`batch_size` for --batch-size); a method's own
options go in `options` (tune) or `method_options` (continual), as --option does on the command line.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapt.config import build, refuse_unknown

if TYPE_CHECKING:
    from torch import nn

    from adapt.continual_learning import ContinualResult
    from adapt.evaluation import EvalResult, PredictionRun
    from adapt.merging.reparam import MergeResult
    from adapt.merging.soup import GreedyStep, SoupSummary
    from adapt.run_comparison import RunRow
    from adapt.train import EpochResult, FitResult


def load(path: str | Path, weights: str | None = None) -> nn.Module:
    """The model of any checkpoint adapt writes (an adapter, a run or hub folder, a merged model, a soup, a
    continual task), in eval mode, with timm's `pretrained_cfg`: `timm.data.resolve_data_config(model=m)` and
    `create_transform(**config)` preprocess an image exactly as `adapt predict` does, and `m(x).softmax(-1)` on
    the result is predict's probabilities. Its class names are `m.pretrained_cfg["label_names"]`."""
    from adapt.adapted import AdaptedModel
    from adapt.data.transforms import data_config

    adapted, meta = AdaptedModel.from_checkpoint(path, weights)
    model = adapted.model.eval()
    config = {**dict(getattr(model, "pretrained_cfg", None) or {}),
              **data_config(adapted.image_size, adapted.mean, adapted.std, adapted.interpolation),
              "num_classes": len(adapted.class_names), "label_names": tuple(adapted.class_names),
              "architecture": meta.backbone, "adapt_method": meta.method}  # fmt: skip
    model.pretrained_cfg = config
    model.default_cfg = config  # timm's older name for the same dict
    return model


def tune(out: str | Path, *, resume: bool = False, overwrite: bool = False,
         on_epoch_end: Callable[[EpochResult], None] | None = None, **options: Any) -> FitResult:  # fmt: skip
    """`adapt tune` for one task into the run folder `out`. `options`: the run's (method, data, backbone,
    weights, image_size, limit, options={...method options...}, ...) and its training options (epochs, lr,
    batch_size, seed, ...), checked as the command line's are."""
    from adapt.train_config import TrainConfig
    from adapt.tuning import TuneJob
    from adapt.tuning import tune as run_tune

    job_names = [f.name for f in dataclasses.fields(TuneJob)]
    train_names = [f.name for f in dataclasses.fields(TrainConfig)]
    refuse_unknown(options, job_names + train_names, "adapt.tune")
    job = build(TuneJob, {k: v for k, v in options.items() if k in job_names}, "adapt.tune")
    config = build(TrainConfig, {k: v for k, v in options.items() if k in train_names}, "adapt.tune")
    return run_tune(job, config, out, resume, overwrite=overwrite, on_epoch_end=on_epoch_end)


def evaluate(checkpoint: str | Path, data: str | None = None, split: str = "test", **options: Any) -> EvalResult:
    """`adapt eval`: top-1, top-5, loss and per-class accuracy on a split (by default the data the checkpoint
    records); options: split_protocol, weights, batch_size, limit, plot, overwrite."""
    from adapt.evaluation import evaluate_checkpoint

    return evaluate_checkpoint(checkpoint, data, split, **options)


def predict(checkpoint: str | Path, images: Sequence[str | Path], top_k: int = 5, **options: Any) -> PredictionRun:
    """`adapt predict`: the top-k classes of image files, folders and globs; options: weights, batch_size, and
    out (with format csv or json, overwrite) to write them too."""
    from adapt.evaluation import predict_checkpoint

    return predict_checkpoint(checkpoint, [Path(p) for p in images], top_k, **options)


def merge(checkpoint: str | Path, out: str | Path, layout: str = "auto", fold_bn: bool = False,
          overwrite: bool = False, weights: str | None = None) -> MergeResult:  # fmt: skip
    """`adapt merge`: what was learned folded into the backbone's own weights, as one file or a hub folder
    (layout "auto": a folder when `out` ends with a separator or is one)."""
    from adapt.merging.reparam import merge_checkpoint

    return merge_checkpoint(checkpoint, out, layout, fold_bn, overwrite, weights, command=None)


def soup(ingredients: Sequence[str | Path], out: str | Path, recipe: str | None = None, *,
         on_step: Callable[[GreedyStep], None] | None = None, **options: Any) -> SoupSummary:  # fmt: skip
    """`adapt soup`: the ingredients merged by `recipe` (uniform; weighted when `coeffs` are given) into `out`;
    options: the soup's (base, data, split,
    dtype, max_shard_size, backbone, rank, overwrite) and the recipe's (scale, density, coeffs, examples, ...),
    by their Python names."""
    from adapt.merging.adapter_soup import run_soup
    from adapt.merging.options import soup_options

    given = {"ingredients": [str(p) for p in ingredients], "out": str(out), **({"recipe": recipe} if recipe else {}),
             **options}
    soup_options_, chosen = soup_options(given, None)
    return run_soup(soup_options_, chosen, on_step)


def compare(runs: Sequence[str | Path], plot: str | Path | None = None, overwrite: bool = False) -> list[RunRow]:
    """`adapt compare`: one row per run folder (a folder of runs: their mean), and the accuracy vs trained
    parameters plot into `plot` when given."""
    from adapt.outputs import writing_file
    from adapt.run_comparison import compare_runs, plot_accuracy_vs_parameters

    rows = compare_runs(list(runs))
    if plot is not None:
        with writing_file(plot, overwrite, [Path(run) / "summary.json" for run in runs], option="plot"):
            plot_accuracy_vs_parameters(rows, plot)
    return rows


def continual(out: str | Path, *, data: str = "digits", initial: int = 2, increment: int = 2, seed: int = 0,
              method: str = "ssf", head: str = "language", learner: str = "naive",
              learner_options: dict[str, Any] | None = None, method_options: dict[str, Any] | None = None,
              head_options: dict[str, Any] | None = None, backbone: str | None = None, weights: str | None = None,
              image_size: int | None = None, task_incremental: bool = False, limit: int | None = None,
              resume: bool = False, overwrite: bool = False, quiet: bool = False,
              on_task_end: Callable[..., None] | None = None, **train: Any) -> ContinualResult:  # fmt: skip
    """`adapt continual` into the run folder `out`: `seed` sets the class order and the training seed, as
    --seed does; `train` holds the per-task training options (epochs, batch_size, lr, precision, ...).

    Unless `quiet`, one line per task goes to stderr, as the command prints it; `on_task_end(task, matrix,
    model)` runs after each task's row of the accuracy matrix is measured."""
    from adapt.backbones import EMBEDDED_BACKBONE
    from adapt.continual_learning import ContinualRun, class_incremental
    from adapt.continual_learning.metrics import task_row_line
    from adapt.train_config import TrainConfig

    config = build(TrainConfig, {"epochs": 5, **train, "seed": seed}, "adapt.continual")
    run = ContinualRun(method, head, learner, learner_options, method_options, head_options, weights, config, out,
                       overwrite, resume)  # fmt: skip
    scenario = class_incremental(data, initial, increment, seed, backbone or EMBEDDED_BACKBONE, image_size,
                                 task_incremental, limit)  # fmt: skip
    test_sizes = [len(t.test) for t in scenario.tasks]

    def after_task(task, matrix, model) -> None:
        if not quiet:
            print(f"{out}: after task {task.index + 1} of {len(scenario.tasks)}: "
                  f"{task_row_line(task.index, matrix, test_sizes)}", file=sys.stderr, flush=True)  # fmt: skip
        if on_task_end is not None:
            on_task_end(task, matrix, model)

    notes = (lambda text: None) if quiet else (lambda text: print(f"{out}: note: {text}", file=sys.stderr, flush=True))
    return run.fit(scenario, on_task_end=after_task, on_note=notes)
