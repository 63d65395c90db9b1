"""A progress bar per stage on stderr (rich): done / total, rate and ETA. Off when not wanted
(tests, `--quiet`), and never on stdout, which carries the results."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class RateColumn(ProgressColumn):
    """Rows per second over the recent window."""

    def render(self, task: Task) -> Text:
        speed = task.speed
        return Text("–/s" if speed is None else f"{speed:,.1f}/s", style="progress.data.speed")


class _Bar:
    def __init__(self, progress: Progress | None, task: Any):
        self.progress, self.task = progress, task

    def advance(self, n: int) -> None:
        if self.progress is not None and n:
            self.progress.advance(self.task, n)


class StageProgress:
    """`with progress.stage("answers", total=N) as bar: bar.advance(k)`."""

    def __init__(self, enabled: bool = True, console: Console | None = None):
        self.enabled = enabled
        self.console = console or Console(stderr=True)

    @contextmanager
    def stage(self, name: str, total: int, completed: int = 0) -> Iterator[_Bar]:
        if not self.enabled:
            yield _Bar(None, None)
            return
        columns = (TextColumn("[bold]{task.description:<12}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
                   TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
        with Progress(*columns, console=self.console, transient=False) as progress:
            task = progress.add_task(name, total=total, completed=completed)
            yield _Bar(progress, task)
