"""Continual-learning metrics from the accuracy matrix, and its picture.

matrix[t][j] is the accuracy on task j's test data after training on task t (j <= t; None
above the diagonal), and sizes[j] the number of task j's test samples. The accuracy on
what has been seen after task t, A_t, is top-1 over all seen test samples pooled,
sum_j<=t sizes[j] matrix[t][j] / sum_j<=t sizes[j], as PyCIL computes it (G-U-N/PyCIL
trainer.py: `cnn_accy["top1"]` over the test set of every class seen). Then:
- average incremental accuracy = mean over t of A_t (Rebuffi et al. 2017; PyCIL's "Average Accuracy");
- last accuracy = A_T;
- the same two from the plain mean of the per-task accuracies (`*_task_mean`): equal to the
  pooled ones when the tasks' test sets have one size, different otherwise;
- forgetting = mean over old tasks j < T of (best matrix[t][j] for t < T) - matrix[T][j]
  (Chaudhry et al. 2018; PyCIL's, over the per-task accuracies);
- backward transfer = mean over j < T of matrix[T][j] - matrix[j][j] (Lopez-Paz & Ranzato 2017).
With one task, forgetting and backward transfer are 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from adapt.checkpoint import atomic_path

Matrix = list[list[float | None]]


def task_row_line(index: int, matrix: Matrix, sizes: Sequence[int]) -> str:
    """'T1 98.0%  T2 95.5%  ·  seen 96.7%': the row after task `index` (0-based), as a run prints it."""
    accuracies = "  ".join(f"T{j + 1} {a:.1%}" for j, a in enumerate(matrix[index][: index + 1]))
    return f"{accuracies}  ·  seen {seen_accuracies(matrix[: index + 1], sizes)[-1]:.1%}"


def seen_accuracies(matrix: Matrix, sizes: Sequence[int] | None = None) -> list[float]:
    """A_t for every task t: pooled over the seen tasks' test samples (`sizes`), or without
    sizes the plain mean of the per-task accuracies."""
    weights = list(sizes) if sizes is not None else [1] * len(matrix)
    return [sum(w * a for w, a in zip(weights, row[: t + 1])) / sum(weights[: t + 1]) for t, row in enumerate(matrix)]


@dataclass(frozen=True)
class ContinualMetrics:
    average_incremental_accuracy: float  # over the seen test samples pooled (PyCIL): the headline
    last_accuracy: float
    forgetting: float
    backward_transfer: float
    average_incremental_accuracy_task_mean: float  # over the plain mean of the per-task accuracies
    last_accuracy_task_mean: float

    @classmethod
    def from_matrix(cls, matrix: Matrix, sizes: Sequence[int] | None = None) -> ContinualMetrics:
        """`sizes`: each task's number of test samples (None: the tasks count alike)."""
        last, old = len(matrix) - 1, range(len(matrix) - 1)
        pooled, task_mean = seen_accuracies(matrix, sizes), seen_accuracies(matrix)
        forgetting = [max(matrix[t][j] for t in range(j, last)) - matrix[last][j] for j in old]
        transfer = [matrix[last][j] - matrix[j][j] for j in old]
        return cls(
            average_incremental_accuracy=sum(pooled) / len(pooled),
            last_accuracy=pooled[-1],
            forgetting=sum(forgetting) / len(forgetting) if forgetting else 0.0,
            backward_transfer=sum(transfer) / len(transfer) if transfer else 0.0,
            average_incremental_accuracy_task_mean=sum(task_mean) / len(task_mean),
            last_accuracy_task_mean=task_mean[-1],
        )


def plot_matrix(matrix: Matrix, path: str | Path, title: str = "") -> None:
    """Heatmap of the accuracy matrix (rows: after task t; columns: tested on task j)."""
    from adapt.plots import percent_heatmap

    tasks = range(len(matrix))
    percent_heatmap([[None if v is None else 100 * v for v in row] for row in matrix], path, title or "accuracy (%)",
                    ([f"T{j + 1}" for j in tasks], [f"after T{t + 1}" for t in tasks]), ("tested on task", ""),
                    1.2 + 0.7 * len(matrix))  # fmt: skip
