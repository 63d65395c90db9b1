"""One evaluate path (issue 24 #5): a judge loaded in this process is the one worker of the
executor's thread backend, the driver writing each verdict the moment the engine reports it, and
Ctrl-C in the main thread stops cleanly; no import cycle between evaluate and the executor."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from pollux.evaluate import Progress, evaluate
from pollux.store import read_verdicts
from test_evaluate import answers, write_jsonl


@pytest.fixture(scope="module")
def judge(tiny_judge_path: Path) -> Any:
    from pollux.engine import SamplingParams
    from pollux.judge import Judge

    return Judge.from_pretrained(str(tiny_judge_path), dtype="float32", device="cpu", batch_size=2,
                                 sampling=SamplingParams(max_new_tokens=6))


class StoredBeforeNext:
    """The real judge; each time the engine reports a verdict, checks (after the evaluate run's own
    `on_verdict` returned) that the verdict is committed in `db`, through a connection of its own."""

    def __init__(self, judge: Any, db: Path) -> None:
        self.inner, self.db = judge, db
        self.name, self.kind = judge.name, judge.kind
        self.missing: list[str] = []
        self.checked = 0
        self.threads: set[str] = set()

    def describe(self) -> Any:
        return self.inner.describe()

    def judge_many(self, items: Any, on_verdict: Any = None) -> Any:
        self.threads.add(threading.current_thread().name)

        def checked(i: int, verdict: Any) -> None:
            on_verdict(i, verdict)
            with sqlite3.connect(self.db) as conn:
                found = conn.execute("SELECT COUNT(*) FROM verdicts WHERE item_key = ?", (items[i].key,)).fetchone()[0]
            self.checked += 1
            if found != 1:
                self.missing.append(items[i].key)

        return self.inner.judge_many(items, on_verdict=checked)


def test_each_verdict_is_stored_before_the_engine_goes_on(tmp_path: Path, judge: Any) -> None:
    src, db = write_jsonl(tmp_path / "a.jsonl", answers(4)), tmp_path / "run.db"
    checking = StoredBeforeNext(judge, db)
    summary = evaluate(src, db, checking, chunk_size=4)
    assert (summary.judged, summary.failed, summary.remaining) == (8, 0, 0)
    assert checking.checked == 8 and checking.missing == []
    # the executor's thread backend judged, not the caller's thread
    assert checking.threads and all(name.startswith("pollux-executor") for name in checking.threads)


class CtrlCAfter(Progress):
    """Raises KeyboardInterrupt in the main thread (where the driver reports progress), as Ctrl-C
    would, once `n` verdicts were stored."""

    def __init__(self, n: int) -> None:
        self.n, self.seen = n, 0

    def advance(self, n: int = 1) -> None:
        self.seen += n
        if self.seen == self.n:
            raise KeyboardInterrupt


def test_ctrl_c_in_the_main_thread_keeps_every_stored_verdict_and_stops_the_worker(tmp_path: Path, judge: Any) -> None:
    src, db = write_jsonl(tmp_path / "a.jsonl", answers(4)), tmp_path / "run.db"
    logged: list[str] = []
    before = set(threading.enumerate())
    summary = evaluate(src, db, judge, chunk_size=4, progress=CtrlCAfter(3), log=logged.append)
    assert summary.interrupted and (summary.judged, summary.remaining) == (3, 5)
    assert len(read_verdicts(db)) == 3
    assert any("interrupted" in m and "resume" in m for m in logged)
    for thread in set(threading.enumerate()) - before:  # the worker thread ends (at its next verdict)
        thread.join(timeout=120)
        assert not thread.is_alive(), thread.name
    again = evaluate(src, db, judge, chunk_size=4)
    assert (again.already_done, again.judged, again.remaining) == (3, 5, 0)
    assert len(read_verdicts(db)) == 8


class FailsOn:
    def __init__(self, judge: Any, word: str) -> None:
        self.inner, self.word = judge, word
        self.name, self.kind = judge.name, judge.kind

    def describe(self) -> Any:
        return self.inner.describe()

    def judge_many(self, items: Any, on_verdict: Any = None) -> Any:
        if any(self.word in it.answer for it in items):
            raise RuntimeError("CUDA out of memory (injected)")
        return self.inner.judge_many(items, on_verdict=on_verdict)


def test_a_failed_call_is_logged_once_and_recorded_as_errors(tmp_path: Path, judge: Any) -> None:
    rows = answers(3)
    rows[1]["answer"] = "ПАДАЕТ"
    src, db = write_jsonl(tmp_path / "a.jsonl", rows), tmp_path / "run.db"
    logged: list[str] = []
    summary = evaluate(src, db, FailsOn(judge, "ПАДАЕТ"), chunk_size=2, log=logged.append)
    assert (summary.judged, summary.failed) == (4, 2)
    failures = [m for m in logged if "recorded as errors" in m]
    assert len(failures) == 1 and "a batch of 2 failed (RuntimeError: CUDA out of memory (injected))" in failures[0]


def test_evaluate_and_the_executor_import_alone_without_a_cycle() -> None:
    code = ("import sys\n"
            "import pollux.executor.judging, pollux.executor.local\n"
            "assert 'pollux.evaluate' not in sys.modules, 'the executor imports evaluate'\n"
            "import pollux.evaluate\n"
            "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
