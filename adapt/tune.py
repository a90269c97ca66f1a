"""The `adapt tune` job as a function: build the adapted model and the data, then train."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapt.adapted import AdaptedModel
from adapt.backbones import EMBEDDED_BACKBONE, preprocessing
from adapt.data import DataSplits, default_image_size, load_data
from adapt.train import EpochResult, FitResult, TrainConfig, Trainer


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


def prepare(job: TuneJob, spec: str, config: TrainConfig) -> tuple[AdaptedModel, DataSplits]:
    """The adapted model and the data of one task."""
    defaults = preprocessing(job.backbone)
    size = job.image_size or default_image_size(spec, defaults.image_size)
    data = load_data(spec, size, defaults.mean, defaults.std, job.split_protocol, job.limit, config.seed)
    adapted = AdaptedModel.create(job.method, data.class_names, size, job.backbone, job.weights, job.options,
                                  config.seed)  # fmt: skip
    return adapted, data


def tune(
    job: TuneJob,
    config: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    spec: str | None = None,
    on_start: Callable[[AdaptedModel, DataSplits], None] | None = None,
    on_epoch_end: Callable[[EpochResult], None] | None = None,
) -> FitResult:
    """Train `job.method` on one task (`spec`, default `job.data`) and write its run folder."""
    adapted, data = prepare(job, spec or job.data, config)
    if on_start is not None:
        on_start(adapted, data)
    return Trainer(adapted, data, config, out_dir).fit(resume=resume, on_epoch_end=on_epoch_end)
