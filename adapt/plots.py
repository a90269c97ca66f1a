"""Percentages as an annotated heatmap PNG: the continual accuracy matrix, the confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def percent_heatmap(
    values: Sequence[Sequence[float | None]],
    path: str | Path,
    title: str,
    labels: tuple[Sequence[str], Sequence[str]],
    axis_names: tuple[str, str],
    size: float,
    annotate: bool = True,
) -> None:
    """Rows x columns of percentages (0-100; None: an empty cell), each cell's value written in it when
    `annotate`; `labels` are the (column, row) tick labels, `axis_names` the (x, y) axis names. Atomic."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from adapt.checkpoint import atomic_path

    grid = np.array([[np.nan if v is None else float(v) for v in row] for row in values], dtype=float)
    figure, axes = plt.subplots(figsize=(size + 1.2, size))
    image = axes.imshow(grid, cmap="viridis", vmin=0, vmax=100)
    if annotate:
        small = 7 if len(grid) > 10 else None
        for i, row in enumerate(grid):
            for j, value in enumerate(row):
                if not np.isnan(value):
                    axes.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=small,
                              color="white" if value < 60 else "black")  # fmt: skip
        axes.set_xticks(range(len(labels[0])), labels[0], rotation=90 if len(labels[0]) > 10 else 0)
        axes.set_yticks(range(len(labels[1])), labels[1])
    axes.set_xlabel(axis_names[0])
    if axis_names[1]:
        axes.set_ylabel(axis_names[1])
    axes.set_title(title)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=120)
    plt.close(figure)
