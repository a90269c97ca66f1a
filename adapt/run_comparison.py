"""`adapt compare`: several runs side by side, from their own summary.json files, and the accuracy
against trained parameters plot that PEFT papers open with.

A run is a folder with summary.json (what `adapt tune` writes). A folder of runs (a VTAB-1k run: one
task per subfolder) is one row: the mean over its tasks of the accuracies and of the trained share,
the largest peak memory, the mean step time; `tasks` says how many it averaged.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapt.config import read_text_file
from adapt.errors import AdaptError

SUMMARY = "summary.json"


@dataclass
class RunRow:
    label: str  # the folder as given
    method: str
    trainable: float  # trained values (the mean over tasks for a folder of runs)
    share: float  # trainable / total, 0..1
    final_acc: float  # 0..1
    best_acc: float | None  # the best periodic test accuracy, where the run evaluated periodically
    peak_memory: int | None  # bytes
    memory_measure: str  # what peak_memory measured ("cuda peak allocated", "process peak RSS")
    step_seconds: float | None  # mean seconds per optimizer step
    tasks: int = 1


def _number(summary: dict[str, Any], key: str, where: Path) -> float:
    """A finite, non-negative number (accuracies, counts), or one line saying what the summary holds instead."""
    value = summary.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise AdaptError(f"{where} is not a run summary adapt wrote: {key} is {value!r}, not a number >= 0")
    return float(value)


def _read_summary(path: Path) -> dict[str, Any]:
    try:
        summary = json.loads(read_text_file(path))
    except (json.JSONDecodeError, RecursionError, UnicodeDecodeError):
        raise AdaptError(f"{path} is not JSON (adapt tune writes summary.json)") from None
    if not isinstance(summary, dict):
        raise AdaptError(f"{path} is not a run summary adapt wrote: it holds a {type(summary).__name__}")
    return summary


def _step_seconds(history: Any) -> float | None:
    epochs = [h for h in history if isinstance(h, dict)] if isinstance(history, list) else []
    seconds = sum(h.get("seconds") or 0 for h in epochs if isinstance(h.get("seconds"), (int, float)))
    steps = sum(h.get("steps") or 0 for h in epochs if isinstance(h.get("steps"), int))
    return seconds / steps if steps else None


def read_run(path: Path, label: str) -> RunRow:
    """One run folder's row, from its summary.json."""
    file = path / SUMMARY
    summary = _read_summary(file)
    run = summary.get("run") if isinstance(summary.get("run"), dict) else {}
    trainable, total = _number(summary, "trainable_params", file), _number(summary, "total_params", file)
    if trainable > total:
        raise AdaptError(f"{file} is not a run summary adapt wrote: trainable_params {trainable:,.0f} exceed "
                         f"total_params {total:,.0f}")  # fmt: skip
    best = summary.get("best_periodic_test_acc")
    memory = summary.get("peak_memory") if isinstance(summary.get("peak_memory"), dict) else {}
    peak = memory.get("bytes") if type(memory.get("bytes")) is int else None  # not a bool
    return RunRow(label, str(run.get("method", "?")), trainable, trainable / total if total else 0.0,
                  _number(summary, "test_acc", file), float(best) if isinstance(best, (int, float)) else None,
                  peak, str(memory.get("measure", "")), _step_seconds(summary.get("history")))  # fmt: skip


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def read_runs(folder: str | Path) -> RunRow:
    """A run folder's row, or the mean row of a folder of runs (a VTAB-1k run's tasks)."""
    path = Path(folder)
    if not path.is_dir():
        raise AdaptError(f"{folder} is not a folder (adapt compare takes the --out folders of adapt tune)")
    if (path / SUMMARY).is_file():
        return read_run(path, str(folder))
    tasks = sorted(child for child in path.iterdir() if (child / SUMMARY).is_file())
    if not tasks:
        raise AdaptError(f"{folder} holds no {SUMMARY}, nor subfolders with one: not a finished adapt tune run")
    rows = [read_run(task, f"{folder}/{task.name}") for task in tasks]
    methods = sorted({row.method for row in rows})
    bests = [row.best_acc for row in rows]
    memories = [row.peak_memory for row in rows if row.peak_memory is not None]
    steps = [row.step_seconds for row in rows if row.step_seconds is not None]
    return RunRow(str(folder), "+".join(methods), _mean([r.trainable for r in rows]), _mean([r.share for r in rows]),
                  _mean([r.final_acc for r in rows]), None if None in bests else _mean(bests),
                  max(memories) if memories else None, rows[0].memory_measure, _mean(steps) if steps else None,
                  tasks=len(rows))  # fmt: skip


def compare_runs(folders: list[str | Path]) -> list[RunRow]:
    if not folders:
        raise AdaptError("give at least one run folder (adapt tune's --out)")
    return [read_runs(folder) for folder in folders]


def plot_accuracy_vs_parameters(rows: list[RunRow], path: str | Path) -> None:
    """Final accuracy (and the best periodic one, hollow, where there is one) against the trained parameters,
    log-scaled, one labelled point per run. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from adapt.checkpoint import atomic_path

    figure, axes = plt.subplots(figsize=(6.4, 4.4))
    methods = [row.method for row in rows]
    for row in rows:
        x = max(row.trainable, 1.0)
        axes.scatter([x], [100 * row.final_acc], s=36, zorder=3)
        if row.best_acc is not None:
            axes.scatter([x], [100 * row.best_acc], s=36, facecolors="none", edgecolors="gray", zorder=2)
        name = row.method if methods.count(row.method) == 1 else Path(row.label).name  # two runs of one method
        axes.annotate(name, (x, 100 * row.final_acc), textcoords="offset points", xytext=(5, 4), fontsize=8)
    axes.set_xscale("log")
    axes.set_xlabel("trained parameters (log scale)")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title("accuracy vs trained parameters" + (" (hollow: best periodic test)" if any(
        r.best_acc is not None for r in rows) else ""), fontsize=10)  # fmt: skip
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=120)
    plt.close(figure)
