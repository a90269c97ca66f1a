"""`adapt compare`: runs side by side, and the accuracy vs trained parameters plot."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from adapt.cli.common import cli, console


def _memory(row) -> str:
    return f"{row.peak_memory / 2**20:,.0f} MiB" if row.peak_memory is not None else "-"


@cli.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--plot", type=click.Path(path_type=Path), default=None,
              help="Also draw accuracy against trained parameters (PNG), one point per run.")
@click.option("--overwrite", is_flag=True, help="Replace --plot if it exists.")
def compare(runs, plot, overwrite) -> None:
    """Runs side by side: method, trained parameters and share, final and best test accuracy, peak memory and
    step time, read from each run's summary.json.

    A folder of runs (a VTAB-1k run, one task per subfolder) is one row: the mean over its tasks.
    Peak memory is what the run measured: CUDA's peak allocation on a GPU, the process's peak resident
    size on a CPU (everything it loaded), so compare it between runs of one kind of machine.

    \b
    Examples:
      adapt compare runs/ssf runs/lora runs/vpt-deep --plot methods.png
      adapt compare runs/vtab-ssf runs/vtab-repadapter      # each the mean over its tasks
    """
    from adapt.api import compare as compare_runs

    rows = compare_runs(list(runs), plot, overwrite)  # reads, checks and writes everything before anything is printed
    table = Table(title="runs")
    for column in ("run", "method", "trained", "share", "final acc", "best acc", "peak memory", "step"):
        table.add_column(column, justify="left" if column in ("run", "method") else "right")
    for row in rows:
        best = f"{100 * row.best_acc:.2f}%" if row.best_acc is not None else "-"
        step = f"{1000 * row.step_seconds:,.0f} ms" if row.step_seconds is not None else "-"
        label = row.label + (f" ({row.tasks} tasks)" if row.tasks > 1 else "")
        table.add_row(label, row.method, f"{row.trainable:,.0f}", f"{100 * row.share:.2f}%", f"{100 * row.final_acc:.2f}%",
                      best, _memory(row), step)  # fmt: skip
    console.print(table)
    measures = sorted({row.memory_measure for row in rows if row.memory_measure})
    if len(measures) > 1:
        console.print(f"note: peak memory was measured differently ({', '.join(measures)}): do not compare it across them")
    if plot is not None:
        console.print(f"wrote {plot}")
