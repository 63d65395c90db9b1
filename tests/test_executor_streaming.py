"""`Streaming` workers: results handed over in parts as the worker makes them — locally each part
reaches the caller before the worker goes on (what lets `evaluate` store each verdict the moment the
engine reports it); on Ray a batch's parts come back together. A Ctrl-C raised inside a worker is
the run's, never retried; a caller that stops reading stops the workers."""

from __future__ import annotations

import threading
import time

import pytest

from pollux.executor import Emit, ExecutorOptions, Row, Streaming, map_batches
from test_executor_ray import ray_cluster  # noqa: F401 — the session's one Ray cluster


class PartByPart:
    """Emits each row of its batch as a part of its own. With `handshake`, after each part it
    waits until the caller has seen that part (fails the batch if the caller never does)."""

    def __init__(self, handshake: bool = False) -> None:
        self.handshake = handshake
        self.seen = threading.Event()
        self.continued_after: list[str] = []

    def __call__(self) -> Streaming:
        def run(batch: list[Row], emit: Emit) -> None:
            for row in batch:
                self.seen.clear()
                emit([{"key": row["key"], "y": row["x"] * 10}])
                if self.handshake and not self.seen.is_set():
                    raise AssertionError(f"emit of {row['key']} returned before the caller took the part")
                self.continued_after.append(row["key"])

        return Streaming(run)


def _rows(n: int) -> list[Row]:
    return [{"key": f"k{i}", "x": i} for i in range(n)]


def test_each_part_reaches_the_caller_before_the_worker_goes_on() -> None:
    worker = PartByPart(handshake=True)
    got = []
    for part in map_batches(_rows(6), worker, ExecutorOptions(batch_size=3, max_retries=0)):
        assert len(part) == 1  # one part per emit, not one per batch
        got.append(part[0]["key"])
        worker.seen.set()
    assert sorted(got) == [f"k{i}" for i in range(6)]
    assert sorted(worker.continued_after) == sorted(got)


class InterruptAfter:
    """Raises KeyboardInterrupt (as a judge's Ctrl-C would) after its `n`-th part; records every key
    it emitted, so a retried batch would show twice."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.emitted: list[str] = []

    def __call__(self) -> Streaming:
        def run(batch: list[Row], emit: Emit) -> None:
            for row in batch:
                emit([row])
                self.emitted.append(row["key"])
                if len(self.emitted) == self.n:
                    raise KeyboardInterrupt

        return Streaming(run)


def test_a_ctrl_c_inside_a_worker_stops_the_run_after_its_parts_and_is_not_retried() -> None:
    worker = InterruptAfter(3)
    got: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        for part in map_batches(_rows(8), worker, ExecutorOptions(batch_size=4, max_retries=3)):
            got += [r["key"] for r in part]
    assert got == ["k0", "k1", "k2"]
    assert worker.emitted.count("k0") == 1  # the interrupted batch was not run again


class Endless:
    """A streaming worker that would emit forever: only a caller that stops reading can end it."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []

    def __call__(self) -> Streaming:
        self.threads.append(threading.current_thread())

        def run(batch: list[Row], emit: Emit) -> None:
            i = 0
            while True:
                emit([{"key": f"{batch[0]['key']}.{i}"}])
                i += 1

        return Streaming(run)


def test_a_caller_that_stops_reading_stops_the_workers() -> None:
    worker = Endless()
    results = map_batches(_rows(4), worker, ExecutorOptions(workers=2, batch_size=1))
    first = next(results)
    results.close()
    assert first[0]["key"].endswith(".0")
    for thread in worker.threads:
        thread.join(timeout=60)
        assert not thread.is_alive()


class LongStep:
    """Batch k0 emits its part at once; batch k1 computes for a long time without emitting (an
    engine between two verdicts, e.g. vLLM generating a whole chunk); records how that ended."""

    def __init__(self) -> None:
        self.computing = threading.Event()
        self.thread: threading.Thread | None = None
        self.ended: list[str] = []

    def __call__(self) -> Streaming:
        def run(batch: list[Row], emit: Emit) -> None:
            if batch[0]["key"] == "k0":
                emit([{"key": "k0"}])
                return
            self.thread = threading.current_thread()
            self.computing.set()
            deadline = time.monotonic() + 60
            try:
                while time.monotonic() < deadline:  # pure Python, like a model's forward between torch ops
                    sum(range(1000))
            except BaseException as exc:
                self.ended.append(type(exc).__name__)
                raise
            self.ended.append("ran to its end")

        return Streaming(run)


def test_a_caller_that_stops_reading_interrupts_a_long_computation() -> None:
    """Ctrl-C must not wait for the engine's next verdict: a stop reaches a worker's thread at its
    next Python instruction, as a KeyboardInterrupt reached the main thread's engine before."""
    worker = LongStep()
    results = map_batches(_rows(2), worker, ExecutorOptions(workers=2, batch_size=1))
    assert next(results) == [{"key": "k0"}]
    assert worker.computing.wait(60)
    results.close()
    assert worker.thread is not None
    worker.thread.join(timeout=120)
    assert not worker.thread.is_alive() and worker.ended == ["_Stopped"]


class Tens:
    """A picklable streaming worker factory: one part per row, "y" = 10 × "x"."""

    def __call__(self) -> Streaming:
        def run(batch: list[Row], emit: Emit) -> None:
            for row in batch:
                emit([{"key": row["key"], "y": row["x"] * 10}])

        return Streaming(run)


@pytest.mark.slow
def test_on_ray_a_batchs_parts_come_back_together(ray_cluster: None) -> None:  # noqa: F811
    out = list(map_batches(_rows(6), Tens(), ExecutorOptions(ray="auto", batch_size=3)))
    assert sorted(len(batch) for batch in out) == [3, 3]
    assert sorted(r["y"] for batch in out for r in batch) == [0, 10, 20, 30, 40, 50]
