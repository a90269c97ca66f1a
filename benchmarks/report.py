"""Writes a benchmark's rows as benchmarks/results/NAME.json and a Markdown table NAME.md."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from adapt.checkpoint import write_json_atomic, write_text_atomic

RESULTS = Path(__file__).parent / "results"
Column = tuple[str, Callable[[dict[str, Any]], str]]  # header, cell text from a row


def write_report(name: str, title: str, setup: dict[str, Any], rows: list[dict[str, Any]], columns: list[Column],
                 footer: str = "", folder: Path | None = None) -> None:  # fmt: skip
    """`folder`: where to write, instead of benchmarks/results/ (a device run's $OUT)."""
    folder = folder or RESULTS
    folder.mkdir(exist_ok=True)
    write_json_atomic(folder / f"{name}.json", {"setup": setup, "rows": rows})
    lines = [f"# {title}", "", "| " + " | ".join(h for h, _ in columns) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|"]  # fmt: skip
    lines += ["| " + " | ".join(cell(r) for _, cell in columns) + " |" for r in rows]
    if footer:
        lines += ["", footer]
    write_text_atomic(folder / f"{name}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def percent_mean_std(mean_key: str, std_key: str) -> Callable[[dict[str, Any]], str]:
    """A cell 'mean ± std' in percent from two fractions of a row."""
    return lambda r: f"{100 * r[mean_key]:.2f} ± {100 * r[std_key]:.2f}"
