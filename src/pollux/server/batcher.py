"""Micro-batching: many concurrent HTTP requests, one engine call per batch.

A judge is fastest when it sees many items at once (batched decode, shared prompt prefixes), but
HTTP clients send one item per request. The batcher puts every item of every request into one
queue; a single worker takes up to `batch_size` items — waiting at most `max_wait_s` for more once
the first one arrived — and runs `judge.judge_many` on them in a thread, so the event loop keeps
accepting requests while the model works. Each item's future is resolved with its verdict. If
the engine call for a batch raises, its items are judged again one by one: only an item that
fails alone gets an error verdict, never the other clients' items that shared its batch.

A request may ask for per-token logprobs (`top_logprobs=K`, the chat endpoint's OpenAI
`logprobs`): a batch holding such items asks the engine for the largest K among them (the
in-process engine's `on_logprobs` hook) and each item gets its own K back; a batch without them
calls the engine exactly as before, so the default path costs nothing more.

The queue is bounded in items (`max_queue`): a request that would overflow it is refused at once
(`QueueFull`, which the app turns into 429 + Retry-After) instead of waiting unboundedly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pollux.records import JudgeItem
from pollux.verdicts import Verdict, error_verdict

log = logging.getLogger("pollux.server")


class QueueFull(Exception):
    """The queue cannot take the request now; `retry_after` is an estimate in whole seconds."""

    def __init__(self, depth: int, max_queue: int, wanted: int, retry_after: int):
        super().__init__(
            f"the judge queue is full ({depth} of {max_queue} items queued, this request adds {wanted}); "
            f"retry after {retry_after} s"
        )
        self.depth, self.max_queue, self.wanted, self.retry_after = depth, max_queue, wanted, retry_after


class ShuttingDown(Exception):
    """The server is stopping and takes no new work."""


# What one item gets back: its verdict and, when asked, its OpenAI-format `logprobs.content`.
Result = tuple[Verdict, list[dict[str, Any]] | None]


@dataclass
class _Entry:
    item: JudgeItem
    future: asyncio.Future[Result]
    top_logprobs: int | None = None
    waiting: bool = True  # counted in `MicroBatcher.depth`: queued, and its client still there


class MicroBatcher:
    def __init__(
        self,
        judge: Any,  # anything with judge_many(items) -> list[Verdict], e.g. pollux.judge.Judge
        *,
        batch_size: int = 32,
        max_wait_s: float = 0.005,
        max_queue: int = 1024,
        on_batch: Callable[[int, float], None] | None = None,  # (batch size, seconds) for metrics
    ):
        if batch_size < 1 or max_queue < 1:
            raise ValueError("batch_size and max_queue must be ≥ 1")
        self.judge = judge
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Entry] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._closing = False
        self.in_flight = 0  # items inside the engine right now
        self._waiting = 0  # queued items whose client still waits (cancelled ones leave at once)
        self._rate = 0.0  # items per second, smoothed over recent batches (for Retry-After)

    @property
    def depth(self) -> int:
        """Items waiting for the engine (not counting the batch being judged, nor items whose
        client went away: they stay in the asyncio queue until the worker skips them, but must
        not make the queue look full to the clients still there)."""
        return self._waiting

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="pollux-batcher")

    async def stop(self) -> None:
        """Finish everything queued, then stop the worker (graceful shutdown)."""
        self._closing = True
        if self._worker is None:
            return
        await self._queue.join()
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker
        self._worker = None

    def retry_after(self, wanted: int = 1) -> int:
        """Seconds until the queue has probably drained enough to take `wanted` more items.

        Only the overflow has to drain, not the whole queue: telling every refused client to wait
        for a full drain would leave the engine idle while they sleep.
        """
        if self._rate <= 0:
            return 1
        overflow = max(1, self.depth + wanted - self.max_queue)
        return max(1, min(60, math.ceil(overflow / self._rate)))

    async def submit(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        """Judge `items` (all admitted or none); verdicts in input order."""
        return [verdict for verdict, _ in await self.submit_detailed(items)]

    async def submit_detailed(self, items: Sequence[JudgeItem], *, top_logprobs: int | None = None) -> list[Result]:
        """`submit`, with each item's token logprobs (`top_logprobs` alternatives per token) when
        asked; the judge must take the `on_logprobs` hook (see `pollux.judge.Judge.accepts`)."""
        if self._closing:
            raise ShuttingDown("the server is shutting down")
        if self.depth + len(items) > self.max_queue:
            raise QueueFull(self.depth, self.max_queue, len(items), self.retry_after(len(items)))
        loop = asyncio.get_running_loop()
        entries = [_Entry(item, loop.create_future(), top_logprobs) for item in items]
        for entry in entries:
            self._queue.put_nowait(entry)
        self._waiting += len(entries)
        try:
            return list(await asyncio.gather(*(e.future for e in entries)))
        finally:  # a client that went away: its queued items are skipped, not judged
            for e in entries:
                if not e.future.done():
                    e.future.cancel()
                if e.future.cancelled():  # (gather may have cancelled it already)
                    self._leaves(e)

    def _leaves(self, entry: _Entry) -> _Entry:
        """`entry` no longer waits (taken by the worker, or its client went away); once only."""
        if entry.waiting:
            entry.waiting = False
            self._waiting -= 1
        return entry

    async def _take_batch(self) -> list[_Entry]:
        batch = [self._leaves(await self._queue.get())]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.batch_size:
            try:
                batch.append(self._leaves(self._queue.get_nowait()))
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(self._leaves(await asyncio.wait_for(self._queue.get(), remaining)))
            except TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._take_batch()
            live = [e for e in batch if not e.future.done()]
            try:
                if live:
                    await self._judge(live)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _engine(self, items: list[JudgeItem], top_logprobs: int | None) -> list[Result]:
        """One engine call, in a thread so the event loop keeps accepting requests."""
        logprobs: dict[int, list[dict[str, Any]]] = {}
        if top_logprobs is None:
            verdicts = await asyncio.to_thread(self.judge.judge_many, items)
        else:
            verdicts = await asyncio.to_thread(self.judge.judge_many, items, top_logprobs=top_logprobs,
                                               on_logprobs=logprobs.__setitem__)
        if len(verdicts) != len(items):
            raise RuntimeError(f"engine returned {len(verdicts)} verdicts for {len(items)} items")
        return [(v, logprobs.get(i)) for i, v in enumerate(verdicts)]

    async def _judge_isolated(self, items: list[JudgeItem], top_logprobs: int | None = None) -> list[Result]:
        """Verdicts for `items`; when the engine call for the batch raises, each item is judged
        alone, so one item the engine cannot take fails by itself and not the other clients'
        items that happened to share its micro-batch."""
        try:
            return await self._engine(items, top_logprobs)
        except Exception as e:
            if len(items) == 1:
                log.exception("engine failed on an item")
                return [(error_verdict(items[0], f"engine error: {type(e).__name__}: {e}"), None)]
            log.warning("engine failed on a batch of %d items (%s: %s); judging them one by one",
                        len(items), type(e).__name__, e)
        return [result for item in items for result in await self._judge_isolated([item], top_logprobs)]

    async def _judge(self, live: list[_Entry]) -> None:
        items = [e.item for e in live]
        self.in_flight = len(items)
        started = time.perf_counter()
        asked = [e.top_logprobs for e in live if e.top_logprobs is not None]
        try:
            results = await self._judge_isolated(items, max(asked) if asked else None)
        finally:
            self.in_flight = 0
        elapsed = time.perf_counter() - started
        rate = len(items) / max(elapsed, 1e-6)
        self._rate = rate if self._rate == 0 else 0.7 * self._rate + 0.3 * rate
        if self.on_batch is not None:
            self.on_batch(len(items), elapsed)
        for entry, (verdict, content) in zip(live, results, strict=True):
            if entry.top_logprobs is None:
                content = None
            elif content is not None:  # the batch's K may exceed this item's
                content = [{**t, "top_logprobs": t["top_logprobs"][:entry.top_logprobs]} for t in content]
            if not entry.future.done():
                entry.future.set_result((verdict, content))
