"""The `adapt tune` job as a function: build the adapted model and the data, then train."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapt.adapted import AdaptedModel
from adapt.backbones import EMBEDDED_BACKBONE, preprocessing
from adapt.data import DataSplits, image_size_for, load_data
from adapt.devices import is_main_process
from adapt.errors import AdaptError, term
from adapt.outputs import check_run_folder, exclusive_lock, remove_owned, remove_stale_temps
from adapt.train import RUN_FILES, SUMMARY_FILE, EpochResult, FitResult, TrainConfig, Trainer, write_run_config
from adapt.train_config import CONFIG_FILE, HEAD_INITS
from adapt.train_state import STATE_FILE, saved_epochs
from adapt.warm_start import read_start, start_options, warm_start


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
    init_from: str | None = None  # a checkpoint whose head (and adapter, same method) the run starts from
    drop_path: float = 0.0  # stochastic depth on the frozen backbone's blocks while training (timm drop_path_rate)
    normalize: str = "backbone"  # input mean/std: the backbone cfg's, or adapt.train_config.NORMALIZATIONS by name
    interpolation: str = "bicubic"  # of the resize to image_size (adapt.train_config.INTERPOLATIONS)
    train_crop: str = "random-resized"  # how an augmented training image is sized (adapt.train_config.TRAIN_CROPS)
    head_init: str = HEAD_INITS[0]  # how a fresh head starts (adapt.train_config.HEAD_INITS)


def prepare(job: TuneJob, spec: str, config: TrainConfig,
            on_note: Callable[[str], None] | None = None) -> tuple[AdaptedModel, DataSplits]:  # fmt: skip
    """The adapted model and the data of one task (the method sets itself up from the data first), started
    from `job.init_from` when given (adapt.warm_start; `on_note` hears what was taken)."""
    defaults = preprocessing(job.backbone, job.normalize, job.interpolation)
    size = image_size_for(spec, job.image_size, defaults.image_size)
    data = load_data(spec, size, defaults.mean, defaults.std, job.split_protocol, job.limit, config.seed, job.augment,
                     defaults.interpolation, job.train_crop)  # fmt: skip
    start = read_start(job.init_from) if job.init_from is not None else None
    options = start_options(start[1], job.method, job.options) if start is not None else job.options
    adapted = AdaptedModel.create(job.method, data.class_names, size, job.backbone, job.weights, options,
                                  config.seed, setup=(data, config), head_init=job.head_init, drop_path=job.drop_path)  # fmt: skip
    adapted.preprocess_as(defaults.mean, defaults.std, defaults.interpolation)
    if start is not None:
        taken = warm_start(adapted, job.init_from, *start)
        if on_note is not None:
            on_note(taken.describe())
    return adapted, data


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
    on_note: Callable[[str], None] | None = None,
) -> FitResult:
    """Train `job.method` on one task (`spec`, default `job.data`) and write its run folder.

    A folder that holds an earlier run is refused unless `resume` (continue it) or
    `overwrite` (replace its files; nothing else in the folder is touched). `record`, the options
    as the user gave them, is kept in OUT/config.yaml (what `adapt tune --resume` reads back);
    without one (a run started from Python), the job's own options are (job_record). A `resume` of a
    run that stopped before saving its first epoch starts it from the beginning, saying so to `on_note`."""
    out_dir = Path(out_dir)
    main = is_main_process()
    if job.init_from is not None:  # checked before anything in out_dir is replaced
        read_start(job.init_from)
        if overwrite and Path(job.init_from).resolve().parent == out_dir.resolve():
            raise AdaptError(f"{term('init_from')} {job.init_from} is a file of the run in {out_dir}, which "
                             f"{term('overwrite')} would replace: start from a copy, or write elsewhere")  # fmt: skip
    with exclusive_lock(out_dir) if main else contextlib.nullcontext():
        check_run_folder(out_dir, RUN_FILES, resume, overwrite, remove=main)
        started = (out_dir / CONFIG_FILE).is_file()  # written when a run starts, before any epoch
        note = on_note or (lambda text: None)
        if resume and started and not (out_dir / STATE_FILE).is_file():  # stopped before its first save
            resume = False
            note(f"{out_dir} holds no finished epoch yet (the run stopped before its first save): starting it from the beginning")
        if resume and main:
            remove_stale_temps(out_dir, RUN_FILES)  # what a killed run's atomic writes left
        finished, planned = saved_epochs(out_dir / STATE_FILE) if resume else (0, None)
        if resume and finished >= config.total_epochs and (out_dir / SUMMARY_FILE).is_file():
            note(f"{out_dir} has finished its {finished} epochs: nothing to do ({term('resume')} {term('epochs')} MORE "
                 "extends it)")  # fmt: skip
            return FitResult.load(out_dir)
        before = set(out_dir.iterdir()) if out_dir.is_dir() else set()  # what a refused fresh run must leave
        adapted, data = prepare(job, spec or job.data, config, None if resume else on_note)
        trainer = Trainer(adapted, data, config, out_dir)  # refuses what it cannot run (e.g. fp16 on a CPU)
        given = record if record is not None else job_record(job, config, out_dir)
        extended = resume and planned is not None and config.epochs != planned
        if main and (not resume or extended):  # written once the run can start, so a refusal leaves nothing
            write_run_config(out_dir, {**given, **resolved_values(adapted, data, trainer, job.drop_path)})
        if main and not resume:
            adapted.method.write_run_files(out_dir)
        if resume:
            change = (f", extended from {planned}: the learning-rate schedule is re-planned for {config.epochs} epochs "
                      f"and continues from the saved step" if extended else "")  # fmt: skip
            if finished >= config.total_epochs:
                note(f"all {config.total_epochs} epochs are trained: only the final test is left")
            else:
                note(f"resuming at epoch {finished + 1} of {config.total_epochs}{change}")
        if on_start is not None:
            on_start(adapted, data)
        written = set(out_dir.iterdir()) - before if main and not resume else set()
        try:
            return trainer.fit(resume=resume, on_epoch_end=on_epoch_end)
        except AdaptError:  # refused before its first save (NaN weights): no run is left to block a corrected one
            if written and not (out_dir / STATE_FILE).is_file():
                for path in written:
                    remove_owned(path)
            raise


SWEEP_FILE = "sweep.json"


def keep_best(out: str | Path, option: str, test_acc: dict[str, float], best: dict[str, float] | None = None) -> str:
    """The value of a swept option whose run tested best, recorded with every value's accuracies in
    OUT/sweep.json. With `best` (each run's best over its periodic evaluations) the choice is on it, as the
    papers' sweeps keep each value's max accuracy; else on the final test accuracy. Chosen on test, as the
    papers' own sweeps choose."""
    from adapt.checkpoint import write_json_atomic

    scores, rule = (best, "best_over_evaluations") if best and best.keys() == test_acc.keys() else (test_acc, "final_epoch")
    chosen = max(scores, key=lambda value: scores[value])
    write_json_atomic(Path(out) / SWEEP_FILE, {"option": option, "final_epoch": test_acc, "best_over_evaluations": best,
                                               "chosen": chosen, "chosen_by": rule,
                                               "chosen_on": "test (as the papers' own sweeps choose)"})  # fmt: skip
    return chosen


def resolved_values(adapted: AdaptedModel, data: DataSplits, trainer: Trainer, drop_path: float) -> dict[str, Any]:
    """The values a run used where its options said "the default" (or a method chose): config.yaml holds what
    was used."""
    return {"weights": adapted.backbone.weights, "image_size": adapted.image_size, "augment": data.augment,
            "lr": trainer.lr, "weight_decay": trainer.weight_decay, "precision": trainer.precision,
            "drop_path": adapted.method.backbone_drop_path(adapted.model, drop_path)}  # fmt: skip


def job_record(job: TuneJob, config: TrainConfig, out_dir: str | Path) -> dict[str, Any]:
    """A job and its training config as `adapt tune`'s options (what config.yaml holds), so that a run
    started from Python resumes from the command line with nothing retyped."""
    options = [f"{key}={json.dumps(value)}" for key, value in (job.options or {}).items()]
    fields = {k: v for k, v in dataclasses.asdict(job).items() if k != "options"}
    return {**fields, "method_options": options, **dataclasses.asdict(config), "out": str(out_dir)}
