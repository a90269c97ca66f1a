"""The `adapt tune` job as a function: build the adapted model and the data, then train."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapt.adapted import AdaptedModel
from adapt.allocation import Allocation, plot_allocation
from adapt.backbones import EMBEDDED_BACKBONE, preprocessing
from adapt.checkpoint import write_text_atomic
from adapt.data import DataSplits, default_image_size, load_data
from adapt.errors import AdaptError
from adapt.methods import METHODS
from adapt.methods.spt import SPT
from adapt.outputs import check_run_folder, exclusive_lock
from adapt.train import RUN_FILES, EpochResult, FitResult, TrainConfig, Trainer, is_main_process


@dataclass
class TuneJob:
    """Everything `adapt tune` needs besides the training hyperparameters."""

    data: str = "digits"
    method: str = "ssf"
    options: dict[str, Any] | None = None
    backbone: str = EMBEDDED_BACKBONE
    weights: str | None = None
    image_size: int | None = None  # None: 96 for digits, else the backbone's default
    split_protocol: str = "final"
    limit: int | None = None
    augment: str | None = None  # "on", "off" or a timm auto-augment policy; None: on for folder:, else off
    # SPT only: a budget ("0.4M", "1%") allocated from fresh sensitivity scores, or a saved allocation
    budget: str | None = None
    allocation: str | None = None
    alpha_threshold: float = 10.0
    sensitivity_batches: int = 16
    sensitivity_batch_size: int = 32


def prepare(job: TuneJob, spec: str, config: TrainConfig) -> tuple[AdaptedModel, DataSplits]:
    """The adapted model and the data of one task."""
    method_class = METHODS.get(job.method)
    if (job.budget is not None or job.allocation is not None) and method_class and not method_class.budgeted:
        raise AdaptError(f"--budget and --allocation size budgeted methods (spt); {job.method} does not use them")
    defaults = preprocessing(job.backbone)
    size = job.image_size or default_image_size(spec, defaults.image_size)
    data = load_data(spec, size, defaults.mean, defaults.std, job.split_protocol, job.limit, config.seed, job.augment)
    allocation = spt_allocation(job, spec, config.seed) if job.method == "spt" else None
    alpha = float((job.options or {}).get("alpha", 8.0))
    options = {**(job.options or {}), **SPT.options_for(allocation, alpha)} if allocation else job.options
    adapted = AdaptedModel.create(job.method, data.class_names, size, job.backbone, job.weights, options, config.seed)
    if allocation:
        adapted.method.set_allocation(adapted.model, allocation)
    return adapted, data


def spt_allocation(job: TuneJob, spec: str, seed: int) -> Allocation:
    """The job's saved allocation, or one computed from sensitivity on the task's training data."""
    if job.allocation:
        return Allocation.load(job.allocation)
    if job.budget is None:
        raise AdaptError("--method spt needs --budget (e.g. 0.4M, 1%) or --allocation alloc.json")
    from adapt.sensitivity import allocate_from_scores, parameter_sensitivity

    options = job.options or {}
    rank, structured = int(options.get("rank", 8)), str(options.get("structured_module", "lora"))
    scores, metadata = parameter_sensitivity(dataclasses.replace(job, data=spec), job.sensitivity_batches,
                                             job.sensitivity_batch_size, seed)  # fmt: skip
    return allocate_from_scores(scores, metadata, job.budget, rank, job.alpha_threshold, structured)


def tune(
    job: TuneJob,
    config: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    spec: str | None = None,
    on_start: Callable[[AdaptedModel, DataSplits], None] | None = None,
    on_epoch_end: Callable[[EpochResult], None] | None = None,
    overwrite: bool = False,
    record: dict[str, Any] | None = None,
) -> FitResult:
    """Train `job.method` on one task (`spec`, default `job.data`) and write its run folder.

    A folder that holds an earlier run is refused unless `resume` (continue it) or
    `overwrite` (replace its files; nothing else in the folder is touched). `record`, the options
    as the user gave them, is kept in OUT/config.yaml (what `adapt tune --resume` reads back)."""
    out_dir = Path(out_dir)
    main = is_main_process()
    with exclusive_lock(out_dir) if main else contextlib.nullcontext():
        check_run_folder(out_dir, RUN_FILES, resume, overwrite, remove=main)
        adapted, data = prepare(job, spec or job.data, config)
        trainer = Trainer(adapted, data, config, out_dir)  # refuses what it cannot run (e.g. fp16 on a CPU)
        if record is not None and main and not resume:  # written once the run can start, so a refusal leaves nothing
            import yaml

            write_text_atomic(out_dir / "config.yaml", yaml.safe_dump(record, sort_keys=False))
        allocation = getattr(adapted.method, "allocation", None)
        if allocation is not None and main:
            allocation.save(out_dir / "allocation.json")
            plot_allocation(allocation, out_dir / "allocation.png")
        if on_start is not None:
            on_start(adapted, data)
        return trainer.fit(resume=resume, on_epoch_end=on_epoch_end)
