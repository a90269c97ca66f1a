"""Continual-learning metrics from the accuracy matrix, and its picture.

matrix[t][j] is the accuracy on task j's test data after training on task t (j <= t; None
above the diagonal). With A_t = mean_j<=t matrix[t][j], the accuracy on what has been
seen after task t:
- average incremental accuracy = mean over t of A_t (Rebuffi et al. 2017);
- last accuracy = A_T;
- forgetting = mean over old tasks j < T of (best matrix[t][j] for t < T) - matrix[T][j]
  (Chaudhry et al. 2018);
- backward transfer = mean over j < T of matrix[T][j] - matrix[j][j] (Lopez-Paz & Ranzato 2017).
With one task, forgetting and backward transfer are 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adapt.checkpoint import atomic_path

Matrix = list[list[float | None]]


def seen_accuracies(matrix: Matrix) -> list[float]:
    """A_t for every task t."""
    return [sum(row[: t + 1]) / (t + 1) for t, row in enumerate(matrix)]


@dataclass(frozen=True)
class ContinualMetrics:
    average_incremental_accuracy: float
    last_accuracy: float
    forgetting: float
    backward_transfer: float

    @classmethod
    def from_matrix(cls, matrix: Matrix) -> ContinualMetrics:
        last, old = len(matrix) - 1, range(len(matrix) - 1)
        seen = seen_accuracies(matrix)
        forgetting = [max(matrix[t][j] for t in range(j, last)) - matrix[last][j] for j in old]
        transfer = [matrix[last][j] - matrix[j][j] for j in old]
        return cls(
            average_incremental_accuracy=sum(seen) / len(seen),
            last_accuracy=seen[-1],
            forgetting=sum(forgetting) / len(forgetting) if forgetting else 0.0,
            backward_transfer=sum(transfer) / len(transfer) if transfer else 0.0,
        )


def plot_matrix(matrix: Matrix, path: str | Path, title: str = "") -> None:
    """Heatmap of the accuracy matrix (rows: after task t; columns: tested on task j)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    values = np.array([[np.nan if v is None else 100 * v for v in row] for row in matrix])
    size = 1.2 + 0.7 * len(matrix)
    figure, axes = plt.subplots(figsize=(size + 1.2, size))
    image = axes.imshow(values, cmap="viridis", vmin=0, vmax=100)
    for t, row in enumerate(values):
        for j, value in enumerate(row):
            if not np.isnan(value):
                axes.text(j, t, f"{value:.0f}", ha="center", va="center", color="white" if value < 60 else "black")
    ticks = range(len(matrix))
    axes.set_xticks(ticks, [f"T{j + 1}" for j in ticks])
    axes.set_yticks(ticks, [f"after T{t + 1}" for t in ticks])
    axes.set_xlabel("tested on task")
    axes.set_title(title or "accuracy (%)")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=120)
    plt.close(figure)
