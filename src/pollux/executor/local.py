"""The local executor: worker threads in this process, each with its own built worker.

Threads suit the stages that run here by default — HTTP calls to LLM endpoints and pollux's own
engines, which release the GIL in torch — and need nothing installed. Batches are read from the
input lazily and at most `2 × workers` are in flight, so a huge input never sits in memory.

Every result part — a plain worker's whole batch, or each part a `Streaming` worker emits — goes
through one queue to the caller's thread, which is the only one that sees results (so a driver
can keep its SQLite connection, which is bound to its thread). A `Streaming` worker's emit returns
only once the caller has taken the part (asked for the next one): a driver that stores each part
has stored it before the worker goes on, so a crash loses nothing the worker had reported. When
the caller stops reading (Ctrl-C in its thread, an error, `close()`), each running worker is
stopped at once — at its next Python instruction, not its next emit (see `_ThreadWorkers.stop`).
"""

from __future__ import annotations

import ctypes
import itertools
import queue
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from pollux.executor import (
    ExecutorError,
    ExecutorOptions,
    Row,
    Streaming,
    Worker,
    WorkerFactory,
    batch_failed_message,
    build_failed_message,
    run_worker,
)

_Part = tuple[list[Row], threading.Event | None]  # result rows, and the event set once the caller took them
_Event = _Part | Future[None]  # a result part, or a batch's worker finished (its future)
_POLL_S = 0.05  # how often a worker waiting for the caller checks that the caller still reads


class _WorkerBuildError(Exception):
    """The factory itself raised: a configuration problem (no model, bad endpoint), never retried."""


class _Stopped(BaseException):
    """The caller stopped reading: unwinds a running worker at its next emit. A BaseException, so
    that an engine's or a judge's `except Exception` (which turns errors into error verdicts) lets
    it through."""


def _raise_in(thread_id: int, exc: type[BaseException] | None) -> None:
    """Have CPython raise `exc` in that thread at its next bytecode; None withdraws a pending one."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc else None)


class _ThreadWorkers:
    """One built worker per thread; a worker that raised is dropped, so a retry gets a fresh one.
    Results go to `events` part by part."""

    def __init__(self, make_worker: WorkerFactory, events: queue.SimpleQueue[_Event]) -> None:
        self._make_worker = make_worker
        self._local = threading.local()
        self._events = events
        self.stopped = threading.Event()
        self._running: set[int] = set()  # threads inside `run` now
        self._guard = threading.Lock()  # `_running` and the stop request change together

    def stop(self) -> None:
        """Stop every running worker now. At its next emit is not enough: an engine may compute for
        minutes between two verdicts (vLLM returns a whole chunk at once), and the process cannot
        exit while a worker thread runs — so Ctrl-C would hang. Each running thread gets `_Stopped`
        raised at its next Python instruction (CPython's asynchronous exception, what a
        KeyboardInterrupt did to an engine running in the main thread)."""
        with self._guard:
            if self.stopped.is_set():
                return
            self.stopped.set()
            for thread_id in self._running:
                _raise_in(thread_id, _Stopped)

    def _emit(self, part: list[Row]) -> None:
        if self.stopped.is_set():
            raise _Stopped
        self._events.put((part, None))

    def _emit_and_wait(self, part: list[Row]) -> None:
        """A `Streaming` worker's emit: back once the caller took the part (or stopped reading)."""
        if self.stopped.is_set():
            raise _Stopped
        taken = threading.Event()
        self._events.put((part, taken))
        while not taken.wait(_POLL_S):
            if self.stopped.is_set():
                raise _Stopped

    def run(self, batch: list[Row]) -> None:
        thread_id = threading.get_ident()
        try:
            with self._guard:
                if self.stopped.is_set():
                    raise _Stopped
                self._running.add(thread_id)
            self._run(batch)
        finally:
            with self._guard:
                self._running.discard(thread_id)
                if self.stopped.is_set():  # a stop that did not land yet must not land in the pool's own code
                    _raise_in(thread_id, None)

    def _run(self, batch: list[Row]) -> None:
        fn: Worker | None = getattr(self._local, "fn", None)
        if fn is None:
            try:
                fn = self._make_worker()
            except Exception as exc:
                raise _WorkerBuildError(build_failed_message(exc)) from exc
            self._local.fn = fn
        try:
            run_worker(fn, batch, self._emit_and_wait if isinstance(fn, Streaming) else self._emit)
        except BaseException:
            self._local.fn = None
            raise


def batches(rows: Iterable[Row], size: int) -> Iterator[list[Row]]:
    """Consecutive batches of `size` rows (the last one may be shorter), read lazily."""
    it = iter(rows)
    while batch := list(itertools.islice(it, size)):
        yield batch


def map_batches_local(
    rows: Iterable[Row], make_worker: WorkerFactory, options: ExecutorOptions
) -> Iterator[list[Row]]:
    """`pollux.executor.map_batches` on `options.workers` threads of this process.

    A worker's Ctrl-C (a KeyboardInterrupt raised in its thread, e.g. by a judge) is the run's: it
    is re-raised here, never retried."""
    events: queue.SimpleQueue[_Event] = queue.SimpleQueue()
    workers = _ThreadWorkers(make_worker, events)
    pending = batches(rows, options.batch_size)
    in_flight: dict[Future[None], tuple[list[Row], int]] = {}  # future → (batch, attempt)
    pool = ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="pollux-executor")

    def submit(batch: list[Row], attempt: int) -> None:
        future = pool.submit(workers.run, batch)
        in_flight[future] = (batch, attempt)
        future.add_done_callback(events.put)  # after every part the worker emitted

    try:
        for batch in itertools.islice(pending, 2 * options.workers):
            submit(batch, 0)
        while in_flight:
            event = events.get()
            if not isinstance(event, Future):
                part, taken = event
                yield part
                if taken is not None:
                    taken.set()
                continue
            batch, attempt = in_flight.pop(event)
            exc = event.exception()
            if exc is None:
                next_batch = next(pending, None)
                if next_batch is not None:
                    submit(next_batch, 0)
            elif not isinstance(exc, Exception):
                raise exc
            elif isinstance(exc, _WorkerBuildError):
                raise ExecutorError(str(exc)) from exc.__cause__
            elif attempt < options.max_retries:
                submit(batch, attempt + 1)
            else:
                raise ExecutorError(batch_failed_message(batch, attempt + 1, options.max_retries, exc)) from exc
    finally:
        # On an error or when the caller stops early: drop queued batches, stop running ones.
        workers.stop()
        pool.shutdown(wait=False, cancel_futures=True)
