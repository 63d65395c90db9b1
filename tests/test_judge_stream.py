"""`Judge.stream`: text deltas as the judge generates them, then the verdict `judge(item)` gives.

An engine without a text hook (`openai:` against a real `pollux serve`) is streamed in
tests/test_expected_score.py."""

from __future__ import annotations

import threading
import time
from dataclasses import asdict
from itertools import pairwise

import pytest

from pollux.engine import SamplingParams
from pollux.judge import Judge
from pollux.records import JudgeItem
from pollux.verdicts import Verdict

ITEM = JudgeItem(instruction="Назови столицу Франции.", answer="Париж — столица Франции.",
                 criteria_name="Правильность ответа", rubrics="0: неверно.\n\n1: частично.\n\n2: верно.")


@pytest.fixture(scope="module")
def judge(tiny_generative_path) -> Judge:
    return Judge.from_pretrained(str(tiny_generative_path), dtype="float32", device="cpu",
                                 sampling=SamplingParams(max_new_tokens=16))


def comparable(v: Verdict) -> dict:
    d = asdict(v)
    d.pop("time_s")
    return d


def split(events: list) -> tuple[list[str], Verdict]:
    *deltas, verdict = events
    assert all(isinstance(d, str) and d for d in deltas)
    assert isinstance(verdict, Verdict)
    return deltas, verdict


def test_deltas_concatenate_to_the_verdicts_text_and_the_verdict_is_judges(judge: Judge) -> None:
    deltas, verdict = split(list(judge.stream(ITEM)))
    assert verdict.completion_tokens == 16 and verdict.finish_reason == "length"
    assert len(deltas) >= 3, deltas
    assert "".join(deltas) == verdict.raw_text
    assert comparable(verdict) == comparable(judge.judge(ITEM))


def test_the_generate_fallback_streams_too(judge: Judge) -> None:
    engine = judge.engine
    engine.custom_forward = False  # type: ignore[attr-defined]
    try:
        deltas, verdict = split(list(judge.stream(ITEM)))
        plain = judge.judge(ITEM)
    finally:
        engine.custom_forward = True  # type: ignore[attr-defined]
    assert len(deltas) >= 3 and "".join(deltas) == verdict.raw_text
    assert comparable(verdict) == comparable(plain)


def test_closing_the_stream_early_stops_the_worker(judge: Judge) -> None:
    slow = Judge.from_pretrained(str(judge.engine.name), dtype="float32", device="cpu",
                                 sampling=SamplingParams(max_new_tokens=400, min_new_tokens=400))
    stream = slow.stream(ITEM)
    first = next(stream)
    assert isinstance(first, str) and first
    started = time.monotonic()
    stream.close()
    deadline = started + 30
    while any(t.name == "pollux-stream" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name == "pollux-stream" for t in threading.enumerate())
    assert slow.engine.stats["decode_steps"] < 300  # type: ignore[attr-defined]  # it stopped, not finished


@pytest.mark.parametrize("custom_forward", [True, False], ids=["custom-forward", "generate-fallback"])
def test_closing_the_stream_stops_the_model_within_a_step_or_two(judge: Judge, custom_forward: bool) -> None:
    """The judge-live page relies on this: closing `Judge.stream` (GeneratorExit at its yield)
    stops the forward passes at once — counted at the LM head, which every decode step calls,
    in the custom forward and in the `generate` fallback. This model writes whole characters at
    least every second token, so the worker's hook raises within two more steps."""
    slow = Judge.from_pretrained(str(judge.engine.name), dtype="float32", device="cpu",
                                 sampling=SamplingParams(max_new_tokens=400, min_new_tokens=400))
    slow.engine.custom_forward = custom_forward  # type: ignore[attr-defined]
    calls: list[int] = []
    slow.engine.model.lm_head.register_forward_hook(lambda *_: calls.append(1))  # type: ignore[attr-defined]
    stream = slow.stream(ITEM)
    assert isinstance(next(stream), str)
    stream.close()
    at_close = len(calls)
    for worker in [t for t in threading.enumerate() if t.name == "pollux-stream"]:
        worker.join(60)
    assert not any(t.name == "pollux-stream" for t in threading.enumerate())
    assert len(calls) - at_close <= 2, (at_close, len(calls))
    assert len(calls) < 400


def test_an_engine_error_reaches_the_consumer() -> None:
    class Broken:
        name, kind = "broken", "api"

        def judge_many(self, items, on_verdict=None):
            raise RuntimeError("boom")

        def describe(self):
            return {}

    with pytest.raises(RuntimeError, match="boom"):
        list(Judge(Broken()).stream(ITEM))


def test_one_engine_call_at_a_time_per_judge(judge: Judge) -> None:
    """A server's micro-batcher and its UI's judge-live page call one judge from two threads:
    the engine's calls must not overlap (vLLM's LLM is not safe to call concurrently)."""
    spans: list[tuple[float, float]] = []
    real = judge.engine.judge_many

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            spans.append((start, time.perf_counter()))

    judge.engine.judge_many = timed  # type: ignore[method-assign]
    try:
        streamer = threading.Thread(target=lambda: [list(judge.stream(ITEM)) for _ in range(3)])
        streamer.start()
        for _ in range(3):
            assert judge.judge_many([ITEM, ITEM])[0].completion_tokens == 16
        streamer.join(60)
    finally:
        del judge.engine.judge_many  # type: ignore[method-assign]
    assert len(spans) == 6
    spans.sort()
    assert all(end <= next_start for (_, end), (next_start, _) in pairwise(spans)), spans
