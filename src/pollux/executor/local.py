"""The local executor: worker threads in this process, each with its own built worker.

Threads suit the stages that run here by default — HTTP calls to LLM endpoints and pollux's own
engines, which release the GIL in torch — and need nothing installed. Batches are read from the
input lazily and at most `2 × workers` are in flight, so a huge input never sits in memory.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from pollux.executor import (
    BatchFn,
    ExecutorError,
    ExecutorOptions,
    Row,
    WorkerFactory,
    batch_failed_message,
    build_failed_message,
)


class _WorkerBuildError(Exception):
    """The factory itself raised: a configuration problem (no model, bad endpoint), never retried."""


class _ThreadWorkers:
    """One built worker per thread; a worker that raised is dropped, so a retry gets a fresh one."""

    def __init__(self, make_worker: WorkerFactory) -> None:
        self._make_worker = make_worker
        self._local = threading.local()

    def run(self, batch: list[Row]) -> list[Row]:
        fn: BatchFn | None = getattr(self._local, "fn", None)
        if fn is None:
            try:
                fn = self._make_worker()
            except Exception as exc:
                raise _WorkerBuildError(build_failed_message(exc)) from exc
            self._local.fn = fn
        try:
            result = fn(batch)
        except BaseException:
            self._local.fn = None
            raise
        if not isinstance(result, list):
            self._local.fn = None
            raise TypeError(f"a worker must return a list of rows, got {type(result).__name__}")
        return result


def batches(rows: Iterable[Row], size: int) -> Iterator[list[Row]]:
    """Consecutive batches of `size` rows (the last one may be shorter), read lazily."""
    it = iter(rows)
    while batch := list(itertools.islice(it, size)):
        yield batch


def map_batches_local(
    rows: Iterable[Row], make_worker: WorkerFactory, options: ExecutorOptions
) -> Iterator[list[Row]]:
    """`pollux.executor.map_batches` on `options.workers` threads of this process."""
    workers = _ThreadWorkers(make_worker)
    pending = batches(rows, options.batch_size)
    in_flight: dict[Future[list[Row]], tuple[list[Row], int]] = {}  # future → (batch, attempt)
    pool = ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="pollux-executor")

    def submit(batch: list[Row], attempt: int) -> None:
        in_flight[pool.submit(workers.run, batch)] = (batch, attempt)

    try:
        for batch in itertools.islice(pending, 2 * options.workers):
            submit(batch, 0)
        while in_flight:
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                batch, attempt = in_flight.pop(future)
                exc = future.exception()
                if exc is None:
                    next_batch = next(pending, None)  # keep the threads busy while the caller works
                    if next_batch is not None:
                        submit(next_batch, 0)
                    yield future.result()
                elif isinstance(exc, _WorkerBuildError):
                    raise ExecutorError(str(exc)) from exc.__cause__
                elif attempt < options.max_retries:
                    submit(batch, attempt + 1)
                else:
                    raise ExecutorError(batch_failed_message(batch, attempt + 1, options.max_retries, exc)) from exc
    finally:
        # On an error or when the caller stops early: drop queued batches, let running ones finish.
        pool.shutdown(wait=False, cancel_futures=True)
