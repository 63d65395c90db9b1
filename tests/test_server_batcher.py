"""The micro-batcher in process: batching, the bounded queue, failures, cancellation, draining.

The engine here is a small scripted judge (it records each call and can be held or made to fail),
because what is under test is the queue around it; the real engine behind the real server is
covered in tests/test_server.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from pollux.records import JudgeItem
from pollux.server.batcher import MicroBatcher, QueueFull, ShuttingDown
from pollux.verdicts import Verdict, make_verdict


def items(n: int, start: int = 0) -> list[JudgeItem]:
    return [JudgeItem(instruction=f"q{i}", answer="a", criteria_name="c", rubrics="0: нет\n\n1: да")
            for i in range(start, start + n)]


class ScriptedJudge:
    def __init__(self, delay: float = 0.0, fail_on: str | None = None):
        self.delay, self.fail_on = delay, fail_on
        self.calls: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()

    def judge_many(self, batch: list[JudgeItem]) -> list[Verdict]:
        self.gate.wait(10)
        self.calls.append([it.instruction for it in batch])
        if self.fail_on and any(it.instruction == self.fail_on for it in batch):
            raise RuntimeError("out of memory (scripted)")
        time.sleep(self.delay)
        return [make_verdict(it, f"[FEEDBACK] {it.instruction} [RESULT] 1 [END]") for it in batch]


def run(coro):
    return asyncio.run(coro)


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for `condition` (the worker took an item, the queue filled…) instead of a fixed sleep."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.001)


def test_concurrent_submits_share_engine_calls_and_keep_order() -> None:
    judge = ScriptedJudge(delay=0.05)

    async def main() -> list[list[Verdict]]:
        b = MicroBatcher(judge, batch_size=8, max_wait_s=0.02, max_queue=100)
        b.start()
        results = await asyncio.gather(*(b.submit(items(2, start=2 * k)) for k in range(10)))
        await b.stop()
        return results

    results = run(main())
    assert [[v.rationale for v in r] for r in results] == [[f"q{2 * k}", f"q{2 * k + 1}"] for k in range(10)]
    assert sorted(x for call in judge.calls for x in call) == sorted(f"q{i}" for i in range(20))
    assert all(len(call) <= 8 for call in judge.calls)
    assert len(judge.calls) <= 5  # 20 items, batches of up to 8: far fewer calls than requests


def test_full_queue_refuses_whole_requests_with_retry_after() -> None:
    judge = ScriptedJudge()
    judge.gate.clear()  # hold the engine so the queue fills

    async def main() -> None:
        b = MicroBatcher(judge, batch_size=1, max_wait_s=0, max_queue=3)
        b.start()
        first = asyncio.ensure_future(b.submit(items(1)))  # taken by the worker, held in the engine
        await until(lambda: b.in_flight == 1)
        queued = asyncio.ensure_future(b.submit(items(2, start=1)))  # 2 of 3 queue slots
        await until(lambda: b.depth == 2)
        with pytest.raises(QueueFull) as refused:
            await b.submit(items(2, start=3))  # would make 4 > 3: refused whole
        assert refused.value.retry_after >= 1 and refused.value.depth == 2 and refused.value.max_queue == 3
        assert "queue is full" in str(refused.value)
        assert b.depth == 2  # nothing of the refused request was queued
        judge.gate.set()
        assert len(await first) == 1 and len(await queued) == 2
        assert len(await b.submit(items(3, start=10))) == 3  # room again
        await b.stop()

    run(main())


def test_engine_failure_fails_only_the_item_that_fails_alone() -> None:
    """A batch the engine raises on is judged again item by item: the other clients' items in
    it get real verdicts and only the item the engine cannot take gets an error."""
    judge = ScriptedJudge(fail_on="q1")

    async def main() -> tuple[list[Verdict], list[Verdict]]:
        b = MicroBatcher(judge, batch_size=4, max_wait_s=0, max_queue=10)
        b.start()
        mixed = await b.submit(items(3))
        after = await b.submit(items(2, start=5))
        await b.stop()
        return mixed, after

    mixed, after = run(main())
    assert [v.error is None for v in mixed] == [True, False, True]
    assert [v.rationale for v in mixed] == ["q0", "", "q2"]
    assert "out of memory" in (mixed[1].error or "")
    assert judge.calls[:4] == [["q0", "q1", "q2"], ["q0"], ["q1"], ["q2"]]
    assert all(v.error is None and v.text_score == 1.0 for v in after)


def test_cancelled_requests_are_skipped_and_stop_drains_the_queue() -> None:
    judge = ScriptedJudge()
    judge.gate.clear()

    async def main() -> list[Verdict]:
        b = MicroBatcher(judge, batch_size=1, max_wait_s=0, max_queue=10)
        b.start()
        held = asyncio.ensure_future(b.submit(items(1)))
        await until(lambda: b.in_flight == 1)
        gone = asyncio.ensure_future(b.submit(items(1, start=1)))
        waiting = asyncio.ensure_future(b.submit(items(1, start=2)))
        await until(lambda: b.depth == 2)
        gone.cancel()  # the client went away while its item was queued
        judge.gate.set()
        stopping = asyncio.ensure_future(b.stop())  # graceful: queued work still finishes
        result = await waiting
        await held
        await stopping
        with pytest.raises(ShuttingDown):
            await b.submit(items(1, start=9))
        return result

    result = run(main())
    assert result[0].rationale == "q2"
    assert judge.calls == [["q0"], ["q2"]]  # q1 was never judged


def test_items_of_clients_that_went_away_leave_the_queue_at_once() -> None:
    """Issue 23, item 3: a queued item whose client is gone is dropped — it no longer counts
    toward the queue's depth, so clients that went away cannot fill the queue (429) for others."""
    judge = ScriptedJudge()
    judge.gate.clear()

    async def main() -> tuple[int, list[Verdict]]:
        b = MicroBatcher(judge, batch_size=1, max_wait_s=0, max_queue=2)
        b.start()
        held = asyncio.ensure_future(b.submit(items(1)))
        await until(lambda: b.in_flight == 1)
        gone = asyncio.ensure_future(b.submit(items(2, start=1)))
        await until(lambda: b.depth == 2)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        depth = b.depth
        waiting = asyncio.ensure_future(b.submit(items(2, start=3)))  # would not fit beside the gone items
        judge.gate.set()
        result = await waiting
        await held
        await b.stop()
        return depth, result

    depth, result = run(main())
    assert depth == 0
    assert [v.rationale for v in result] == ["q3", "q4"]
    assert judge.calls == [["q0"], ["q3"], ["q4"]]
