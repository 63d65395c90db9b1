"""Progress on stderr — one module for every long-running verb (evaluate, synth's stages, answer
generation): done / total, the rate and the time left, never on stdout (which carries results).

`Progress` is the silent hook (`start(total, done)`, `advance(n)`, `stop()`) that library code
calls; `RichProgress` draws it as a rich bar; `stage(...)` wraps one in a `with` block for
pipelines made of stages. Every bar's rate and ETA come from `Throughput`, measured on this
session's work only (see its docstring for why).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


class Progress:
    """Progress reporting hook: `start(total, done)`, `advance(n)`, `stop()`. Silent by default."""

    def start(self, total: int, done: int) -> None: ...

    def advance(self, n: int = 1) -> None: ...

    def stop(self) -> None: ...


class Throughput:
    """Judgements per second and time left, measured on THIS session's judgements only.

    A resumed run starts with judgements already done, and an engine reports a whole batch at
    once after a long silence; an estimator over all completed items, or over the last burst,
    then shows a rate far too high (`27/266 … ETA 0:00:01` while ~55 s remain). Here the rate is
    the judgements made since judging started divided by the time since then, so it only
    exists once the first verdict has arrived, and it falls while no verdict comes."""

    def __init__(self, total: int, done: int, clock: Callable[[], float] = time.monotonic,
                 unit: str = "judgements") -> None:
        self.total, self.done_before = total, done
        self.unit = unit
        self.session = 0
        self.clock = clock
        self.started = clock()

    def advance(self, n: int = 1) -> None:
        self.session += n

    def rate(self) -> float | None:
        """Judgements per second in this session; None before the first one."""
        elapsed = self.clock() - self.started
        return self.session / elapsed if self.session and elapsed > 0 else None

    def eta_s(self) -> float | None:
        rate = self.rate()
        if rate is None:
            return None
        return max(self.total - self.done_before - self.session, 0) / rate

    def text(self) -> str:
        rate, eta = self.rate(), self.eta_s()
        if self.session == 0 and self.done_before >= self.total:
            return "nothing left to judge" if self.unit == "judgements" else "nothing left to do"
        if rate is None or eta is None:
            return "first batch running, ETA ?"
        return f"{rate:.2f} {self.unit}/s, ETA {_clock_time(eta)}"


def _clock_time(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class RichProgress(Progress):
    """A rich progress bar on stderr: judgements done / total, then `Throughput.text()` — redrawn
    several times a second, so the ETA moves between batches instead of freezing."""

    def __init__(self, description: str = "judging", *, clock: Callable[[], float] = time.monotonic,
                 console: Any = None, unit: str = "judgements") -> None:
        self.description, self.unit = description, unit
        self.clock = clock
        self.console = console  # a rich Console; default: stderr
        self.meter: Throughput | None = None
        self._progress: Any = None
        self._task: Any = None

    def start(self, total: int, done: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as Bar
        from rich.text import Text

        meter = self.meter = Throughput(total, done, clock=self.clock, unit=self.unit)

        class ThroughputColumn(ProgressColumn):
            def render(self, task: Any) -> Text:
                return Text(meter.text())

        self._progress = Bar(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=20),  # the whole line fits 80 columns
            MofNCompleteColumn(),
            ThroughputColumn(),
            TimeElapsedColumn(),
            console=self.console or Console(file=sys.stderr),
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(self.description, total=total, completed=done)

    def advance(self, n: int = 1) -> None:
        if self._progress is None or self.meter is None:
            return
        self.meter.advance(n)
        self._progress.update(self._task, advance=n)

    def refresh(self) -> None:
        if self._progress is not None:
            self._progress.refresh()

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class StageProgress:
    """A pipeline's bars, one per stage: `with progress.stage("answers", total=N) as bar:
    bar.advance(k)`. Silent unless `enabled` (tests, `--quiet`)."""

    def __init__(self, enabled: bool = True, console: Any = None) -> None:
        self.enabled, self.console = enabled, console

    @contextmanager
    def stage(self, name: str, total: int, completed: int = 0) -> Iterator[Progress]:
        bar = RichProgress(name, console=self.console, unit="rows") if self.enabled else Progress()
        bar.start(total, completed)
        try:
            yield bar
        finally:
            bar.stop()
