"""Score parsing findings of issue 22 (item 6): baseline judges' replies that gave no score, the
rationale that kept a `<think>` block, a prometheus-style re-ask that re-sent the identical
temperature-0 request, and `-o expected_score=true` on a `-r` judge ignored without a note."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request

from pollux.engine.openai_api import OpenAIEngine
from pollux.records import JudgeItem
from pollux.scales import parse_feedback, parse_result, parse_result_open
from pollux.server.launch import free_port
from pollux.verdicts import make_verdict

RUBRICS = "0: плохо\n\n1: средне\n\n2: хорошо\n\n3: отлично\n\n4: превосходно"

OPEN_CASES = [
    # the forms of issue 22 that gave no score
    ("Feedback: верно. [RESULT]: 4", 4.0),
    ("Feedback: верно. [RESULT] **4**", 4.0),
    ("**Feedback:** верно. **[RESULT]** 2 **[END]**", 2.0),
    ("Feedback: the answer is right.\nScore: 4", 4.0),
    # more of the same family
    ("Обоснование: верно.\nОценка: 3", 3.0),
    ("Feedback: верно. [RESULT] (4)", 4.0),
    ("Feedback: верно. [RESULT]:**3**", 3.0),
    ("Feedback: верно. Score: 4/5", 4.0),
    ("<think>Score: 1, нет</think>Feedback: верно. Score: 2", 2.0),
    # what was read before and still is
    ("Feedback: верно. [RESULT] 3", 3.0),
    ("[FEEDBACK] ok [RESULT] −1 [END]", -1.0),
    ("[FEEDBACK] ok [RESULT] 1,5 [END]", 1.5),
    # no score: nothing to read, or which number is the verdict is a guess
    ("Feedback: верно, но без оценки.", None),
    ("Feedback: верно. [RESULT] хорошо", None),
    ("Feedback: [RESULT] 1 ... передумал: [RESULT] 2", None),  # several [RESULT] blocks (decided: none)
    ("Score: 1 for style. Score: 3 for content.", None),  # several score labels
    ("Feedback: ok [RESULT] 2 and Score: 3", 2.0),  # a [RESULT] block wins over a label
    ("<think>[RESULT] 1", None),  # cut inside the reasoning
]


@pytest.mark.parametrize(("reply", "score"), OPEN_CASES)
def test_baseline_replies_are_read(reply: str, score: float | None) -> None:
    assert parse_result_open(reply) == score


@pytest.mark.parametrize("reply", ["[FEEDBACK] ok [RESULT]: 4 [END]", "[FEEDBACK] ok [RESULT] **4** [END]",
                                   "[FEEDBACK] ok\nScore: 4"])
def test_the_pollux_judges_strict_format_is_not_loosened(reply: str) -> None:
    assert parse_result(reply) is None


FEEDBACK_CASES = [
    ("<think>черновик: [RESULT] 1</think>Ответ верный. [RESULT] 2", "Ответ верный."),
    ("<think>черновик</think>\nОтвет верный.", "Ответ верный."),
    ("<think>черновик</think>[FEEDBACK] Ответ верный. [RESULT] 2 [END]", "Ответ верный."),
    ("Feedback: Ответ верный. [RESULT] 2", "Ответ верный."),
    ("**Feedback:** Ответ верный. **[RESULT]** 2 **[END]**", "Ответ верный."),
    ("[FEEDBACK] Ответ верный. [RESULT] 2 [END]", "Ответ верный."),
]


@pytest.mark.parametrize(("reply", "rationale"), FEEDBACK_CASES)
def test_the_rationale_has_no_reasoning_and_no_markup(reply: str, rationale: str) -> None:
    assert parse_feedback(reply) == rationale
    item = JudgeItem(instruction="2+2?", answer="4", criteria_name="Верность", rubrics=RUBRICS)
    assert make_verdict(item, reply, parse=parse_result_open).rationale == rationale


class Replies:
    """A chat-completions server on loopback answering the scripted replies in turn."""

    def __init__(self, replies: list[str]) -> None:
        self.replies = replies
        self.bodies: list[dict[str, Any]] = []
        self.port = free_port()
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> dict[str, Any]:
            self.bodies.append(await request.json())
            text = self.replies[min(len(self.bodies), len(self.replies)) - 1]
            return {"id": "x", "object": "chat.completion", "model": "m",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5}}

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Replies:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def test_a_prometheus_re_ask_is_not_the_identical_request() -> None:
    item = JudgeItem(instruction="2+2?", answer="4", criteria_name="Верность", rubrics=RUBRICS)
    with Replies(["Feedback: верно, но оценки нет.", "Feedback: верно. [RESULT] 4"]) as srv:
        eng = OpenAIEngine("m-prometheus", base_url=f"http://127.0.0.1:{srv.port}/v1", prompt_style="prometheus",
                           max_reasks=1, timeout=5.0, backoff_base=0.05)
        [verdict] = eng.judge_many([item])
    first, second = srv.bodies
    assert first["temperature"] == 0.0
    assert second != first and second["temperature"] > 0  # at temperature 0 the same request gives the same reply
    assert second["messages"] == first["messages"]  # M-Prometheus was trained on one turn: the prompt stays
    assert verdict.text_score == 4.0 and eng.usage["reasks"] == 1


def test_expected_score_asked_of_a_regression_judge_is_noted_on_each_verdict(tiny_judge_path: Path) -> None:
    from pollux.engine import SamplingParams
    from pollux.judge import Judge

    judge = Judge.from_pretrained(str(tiny_judge_path), dtype="float32", device="cpu",
                                  sampling=SamplingParams(max_new_tokens=4), expected_score=True)
    item = JudgeItem(instruction="2+2?", answer="4", criteria_name="Верность", rubrics=RUBRICS)
    [verdict] = judge.judge_many([item])
    assert verdict.head_score is not None and verdict.expected_score is None
    note = verdict.meta.get("expected_score_note", "")
    assert "regression" in note and "head" in note
    plain = Judge.from_pretrained(str(tiny_judge_path), dtype="float32", device="cpu",
                                  sampling=SamplingParams(max_new_tokens=4))
    assert "expected_score_note" not in plain.judge_many([item])[0].meta  # not asked: no note
