"""Progress on long work: a bar on a terminal, a line now and then in a log.

One console for the library and the CLI, so that a line printed while a bar is live (an epoch's
summary) starts on its own line above the bar. Under torchrun / accelerate launch only rank 0
prints. Markup is off: paths, class names and messages are printed as the text they are.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

console = Console(quiet=int(os.environ.get("RANK", "0")) != 0, soft_wrap=True, markup=False, highlight=False)

T = TypeVar("T")
LOG_EVERY_SECONDS = 30.0  # in a log (not a terminal), a progress line this often


class Steps:
    """`with Steps("sensitivity", total=16) as steps: ... steps.advance(status="loss 0.31")`.

    On a terminal: a transient bar with the status after it (nothing before the first step, no
    placeholder zeros). In a log: "description: done/total (share) status" every LOG_EVERY_SECONDS."""

    def __init__(self, description: str, total: int, enabled: bool = True):
        self.description, self.total, self.done, self.status = description, max(int(total), 1), 0, ""
        self.enabled = enabled and not console.quiet
        self.live = self.enabled and console.is_terminal
        self._bar: Progress | None = None
        self._logged_at = time.monotonic()

    def __enter__(self) -> Steps:
        if self.live:
            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[status]}"), TimeRemainingColumn(), console=console,
                                 transient=True)  # fmt: skip
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=self.total, status="")
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.__exit__(kind, error, trace)

    def over(self, items: Iterable[T]) -> Iterator[T]:
        """The items, one step each, inside this bar."""
        with self:
            for item in items:
                yield item
                self.advance()

    def describe(self, description: str) -> None:
        """A new description (e.g. the epoch), from the next refresh on."""
        self.description = description
        if self._bar is not None:
            self._bar.update(self._task, description=description)

    def advance(self, steps: int = 1, status: str | None = None) -> None:
        self.done += steps
        self.status = status if status is not None else self.status
        if self._bar is not None:
            self._bar.update(self._task, advance=steps, status=self.status)
        elif self.enabled:
            self._log()

    def _log(self) -> None:
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_SECONDS:
            self._logged_at = now
            status = f"  {self.status}" if self.status else ""
            console.print(f"{self.description}: {self.done}/{self.total} ({self.done / self.total:.0%}){status}")
