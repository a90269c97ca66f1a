"""Experiment trackers for a training run, through accelerate's tracking API.

`--log-with` takes tensorboard, csv, wandb, or all (comma-separated for several). TensorBoard
and Weights & Biases are accelerate's own trackers (TensorBoard writes OUT/tensorboard/,
offline; W&B follows its own settings, e.g. WANDB_MODE=offline). CSV is ours, a GeneralTracker
that writes OUT/log.csv as `step,name,value` rows, so it needs nothing installed. `all` is
csv, tensorboard, and wandb when installed. What a run logs: per step `train/loss` and
`train/lr` (the rate that step used), per epoch `epoch/*` (the metrics.jsonl line).
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path
from typing import Any

from accelerate.tracking import GeneralTracker, TensorBoardTracker

from adapt.checkpoint import atomic_path
from adapt.errors import AdaptError, term
from adapt.train_config import TRACKERS

CSV_FILE = "log.csv"
TENSORBOARD_DIR = "tensorboard"
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


class CSVTracker(GeneralTracker):
    """Appends `step,name,value` rows to a CSV file; on resume, drops the rows after the resumed step."""

    name = "csv"
    requires_logging_directory = True

    def __init__(self, path: str | Path):
        super().__init__()
        self.path = Path(path)
        self.resume_step: int | None = None  # set before start() when a run resumes
        self._file = self._writer = None

    def start(self) -> None:
        if self.resume_step is not None and self.path.is_file():
            self._keep_until(self.resume_step)
        new = not self.path.is_file()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file)
        if new:
            self._writer.writerow(["step", "name", "value"])

    def _keep_until(self, step: int) -> None:
        """Rewrite the file (atomically) without the rows an interrupted epoch logged after `step`."""
        with open(self.path, newline="", encoding="utf-8") as source:
            rows = [r for r in csv.reader(source) if len(r) == 3]
        kept = rows[:1] + [r for r in rows[1:] if r[0].isdigit() and int(r[0]) <= step]
        with atomic_path(self.path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as target:
            csv.writer(target).writerows(kept)

    @property
    def tracker(self):
        return self._writer

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        self._writer.writerows([step, name, value] for name, value in values.items())
        self._file.flush()

    def finish(self) -> None:
        if self._file is not None:
            self._file.close()


def create_trackers(names: list[str], out_dir: Path) -> list[Any]:
    """The trackers for Accelerator(log_with=...), each checked to be installed; "all" is every installed one."""
    if "all" in names:
        names = [n for n in TRACKERS if n not in PACKAGES or importlib.util.find_spec(PACKAGES[n]) is not None]
    trackers: list[Any] = []
    for name in names:
        if name in PACKAGES and importlib.util.find_spec(PACKAGES[name]) is None:
            raise AdaptError(f"{term('log_with')} {name} needs the {PACKAGES[name]} package: "
                             f"pip install 'adapt-vision[{name}]'")  # fmt: skip
        if name == "csv":
            trackers.append(CSVTracker(out_dir / CSV_FILE))
        elif name == "tensorboard":
            trackers.append(TensorBoardTracker(TENSORBOARD_DIR, out_dir))
        else:
            trackers.append(name)  # accelerate builds it in init_trackers (W&B: project "adapt", run named after OUT)
    return trackers


def flat_config(values: dict[str, Any]) -> dict[str, Any]:
    """Hyperparameters as trackers accept them (bool, str, float, int or None)."""
    return {k: v if v is None or isinstance(v, (bool, str, int, float)) else str(v) for k, v in values.items()}
