"""Rubric scales, [RESULT] parsing and verdict validity."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from pollux.records import JudgeItem
from pollux.scales import (
    Scale,
    check_level,
    check_score,
    normalise,
    parse_feedback,
    parse_result,
    parse_result_open,
    parse_scale,
    result_problem,
    strip_think,
)
from pollux.verdicts import make_verdict


@pytest.mark.parametrize(
    ("rubrics", "expected"),
    [
        ("0: плохо\n\n1: средне\n\n2: хорошо", Scale(0, 2, (0, 1, 2))),
        ("0 — нет\n\n1 — да", Scale(0, 1, (0, 1))),
        ("0 - нет\n\n1 - частично\n\n2 - да\n\n3 - отлично", Scale(0, 3, (0, 1, 2, 3))),
        ("1 – слабо\n2 – норм\n3 – сильно", Scale(1, 3, (1, 2, 3))),
        ("**0**: нет\n\n**4**: всё", Scale(0, 4, (0, 4))),
        ("Оцените ответ по шкале от 1 до 10.", Scale(1, 10)),
        ({"0": "нет", "1": "частично", "2": "да"}, Scale(0, 2, (0, 1, 2))),
        ('{"0": "нет", "1": "да"}', Scale(0, 1, (0, 1))),
        ("-1: вредно\n\n0: нейтрально\n\n1: полезно", Scale(-1, 1, (-1, 0, 1))),
        ("0,5: половина\n\n1,5: больше", Scale(0.5, 1.5, (0.5, 1.5))),
    ],
)
def test_parse_scale(rubrics, expected):
    assert parse_scale(rubrics) == expected


def test_parse_scale_ignores_years_lists_and_absent_scales():
    assert parse_scale("Ответ за 2023-2024 годы\n\n1. пункт\n\n2. пункт") is None
    assert parse_scale("Просто оцени.") is None
    assert parse_scale(None) is None
    assert parse_scale("0: нет\n\n1: да").is_binary


@pytest.mark.parametrize(
    ("text", "score"),
    [
        ("[FEEDBACK] Хорошо. [RESULT] 2 [END]", 2.0),
        ("[FEEDBACK] x [RESULT]1[END]", 1.0),
        ("[RESULT] 1,5 [END]", 1.5),
        ("[RESULT] -1 [END]", -1.0),
        ("[RESULT] 10 [END]", 10.0),
        ("[RESULT] 0.25 [END]", 0.25),
        ("[RESULT] 4", None),  # incomplete block: no score
        ("[RESULT] [END]", None),
        ("нет разметки", None),
        ("[RESULT] 1 [END] ... [RESULT] 2 [END]", None),  # two verdicts in one reply: none is read
        ("[FEEDBACK] x [RESULT] 1 и ещё [RESULT] 2 [END]", None),
    ],
)
def test_parse_result(text, score):
    assert parse_result(text) == score


TWO_RESULTS = "[FEEDBACK] Всё верно. [RESULT] 2 [END]\n[FEEDBACK] Нет, ошибка. [RESULT] 0 [END]"


@pytest.mark.parametrize("parse", [parse_result, parse_result_open])
def test_a_reply_with_several_result_blocks_has_no_score(parse):
    """Issue 23 item 8: the first block's rationale with the last block's score was read as a verdict."""
    assert parse(TWO_RESULTS) is None
    assert parse("Feedback: хорошо [RESULT] 2\nFeedback: плохо [RESULT] 0") is None
    assert result_problem(TWO_RESULTS) == "the reply has 2 [RESULT] blocks (a verdict has exactly one)"
    assert result_problem("[FEEDBACK] ok [RESULT] 1 [END]") is None


def test_a_verdict_with_several_result_blocks_is_invalid_and_says_why():
    v = make_verdict(ITEM, TWO_RESULTS)
    assert v.text_score is None and not v.valid
    assert v.invalid_reason == "the reply has 2 [RESULT] blocks (a verdict has exactly one)"
    v = make_verdict(ITEM, "Feedback: да [RESULT] 2\nFeedback: нет [RESULT] 0", parse=parse_result_open)
    assert v.text_score is None and not v.valid and "2 [RESULT] blocks" in v.invalid_reason


@pytest.mark.parametrize(("score", "scale", "expected"), [
    (1.0, Scale(0, 2, (0, 1, 2)), (True, None)),
    (1.5, Scale(0, 2, (0, 1, 2)), (False, "score 1.5 is not one of the rubric's levels 0, 1, 2")),
    (1.5, Scale(0.5, 1.5, (0.5, 1.5)), (True, None)),
    (7.0, Scale(1, 10), (True, None)),
    (7.5, Scale(1, 10), (False, "score 7.5 is not a whole number of the rubric's scale 1..10")),
    (3.0, Scale(0, 2, (0, 1, 2)), (False, "score 3 outside the rubric's scale [0, 2]")),
    (None, Scale(0, 2, (0, 1, 2)), (False, "no score")),
    (0.25, None, (True, None)),
])
def test_check_level_accepts_only_the_rubrics_own_values(score, scale, expected):
    """Issue 23 item 18: a text score (a teacher's, a judge's, one expert's) is one of the rubric's levels;
    an interval scale (`от 1 до 10`) takes its whole numbers."""
    assert check_level(score, scale) == expected


def test_parse_feedback():
    assert parse_feedback("[FEEDBACK] Ответ верный. [RESULT] 2 [END]") == "Ответ верный."
    assert parse_feedback("[FEEDBACK] Только текст [END]") == "Только текст"
    assert parse_feedback("без разметки") == "без разметки"


def test_check_and_normalise():
    s = Scale(0, 2, (0, 1, 2))
    assert check_score(2, s) == (True, None)
    valid, why = check_score(3, s)
    assert not valid and "outside" in why
    assert check_score(None, s) == (False, "no score")
    assert not check_score(float("nan"), s)[0]
    assert normalise(1, s) == 0.5
    with pytest.raises(ValueError, match="maximum is 0"):
        normalise(0, Scale(0, 0))


ITEM = JudgeItem(instruction="i", answer="a", criteria_name="c", rubrics="0: нет\n\n1: частично\n\n2: да")


def test_verdicts_keep_and_flag_out_of_scale_scores():
    v = make_verdict(ITEM, "[FEEDBACK] Слишком щедро. [RESULT] 5 [END]")
    assert v.text_score == 5 and v.score == 5 and not v.valid and "outside" in v.invalid_reason
    assert v.rationale == "Слишком щедро." and (v.scale_min, v.scale_max) == (0, 2)
    v = make_verdict(ITEM, "[FEEDBACK] ok [RESULT] 2 [END]", head_score=1.7)
    assert v.score == 1.7 and v.text_score == 2 and v.valid
    v = make_verdict(ITEM, "[FEEDBACK] оборвано [RESULT] 2")
    assert v.score is None and not v.valid and v.invalid_reason == "no score"
    v = make_verdict(ITEM, "[FEEDBACK] x [END]", head_score=-0.3)
    assert not v.valid and v.to_dict()["score"] == -0.3


# --- rubrics per language and as JSON strings (as the official code reads them) ----------------

def test_parse_scale_per_language_and_json_string():
    per_language = {"ru": {"-2": "плохо", "0": "нейтрально", "2": "хорошо"},
                    "en": {"-2": "bad", "0": "neutral", "2": "good"}}
    assert parse_scale(per_language) == Scale(-2, 2, (-2, 0, 2))
    assert parse_scale(json.dumps(per_language, ensure_ascii=False)) == Scale(-2, 2, (-2, 0, 2))
    assert parse_scale({"en": {"0": "no", "1": "yes"}}) == Scale(0, 1, (0, 1))
    with pytest.raises(ValueError, match="different scales"):
        parse_scale({"ru": {"0": "нет", "1": "да"}, "en": {"0": "no", "2": "yes"}})


# --- baseline judges' replies ----------------------------------------------------------------------

PROMETHEUS_REPLY = "Feedback: Ответ точен, но неполон: пропущен второй пункт. [RESULT] 1"
R1_REPLY = ("<think>Критерий — полнота. Сначала думаю поставить [RESULT] 0 [END], но второй пункт "
            "раскрыт.</think>\n[FEEDBACK] Ответ полон. [RESULT] 2 [END]")


@pytest.mark.parametrize(
    ("text", "score"),
    [
        (PROMETHEUS_REPLY, 1.0),
        ("Feedback: плохо [RESULT] (0)", 0.0),
        (R1_REPLY, 2.0),
        ("<think>[RESULT] 2 [END] — нет, подумаю ещё", None),  # cut inside the reasoning: no verdict
        ("рассуждение без открывающего тега</think> [RESULT] 1,5", 1.5),
        ("[RESULT] 12.", 12.0),
        ("нет оценки", None),
    ],
)
def test_parse_result_open(text, score):
    assert parse_result_open(text) == score


def test_strict_parse_stays_strict():
    """The POLLUX judges' parser still reads no score where [END] is missing."""
    assert parse_result(PROMETHEUS_REPLY) is None
    assert strip_think(R1_REPLY).strip() == "[FEEDBACK] Ответ полон. [RESULT] 2 [END]"


class _Replies(BaseHTTPRequestHandler):
    """A chat-completions endpoint on loopback answering with the reply chosen by the instruction."""

    bodies: ClassVar[list[dict]] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append(body)
        text = "\n".join(m["content"] for m in body["messages"])
        reply = R1_REPLY if "рассуждающая" in text else TWO_RESULTS if "две оценки" in text else PROMETHEUS_REPLY
        out = json.dumps({"id": "x", "object": "chat.completion", "model": body["model"],
                          "choices": [{"index": 0, "finish_reason": "stop",
                                       "message": {"role": "assistant", "content": reply}}],
                          "usage": {"prompt_tokens": 5, "completion_tokens": 5}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(
    ("style", "instruction", "expected"),
    [("prometheus", "Задание для M-Prometheus", 1.0), ("general", "Задание (рассуждающая модель)", 2.0),
     ("pollux", "Задание для M-Prometheus", None)],
)
def test_baseline_styles_through_an_http_server(style, instruction, expected):
    from pollux.engine.openai_api import PROMETHEUS_SYSTEM, OpenAIEngine

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Replies)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Replies.bodies = []
    try:
        engine = OpenAIEngine("baseline", base_url=f"http://127.0.0.1:{server.server_port}/v1",
                              prompt_style=style, max_reasks=0, max_retries=0)
        item = JudgeItem(instruction=instruction, answer="Ответ", criteria_name="Полнота",
                         rubrics="0: неполно\n\n1: частично\n\n2: полно", reference_answer="Эталон")
        [verdict] = engine.judge_many([item])
    finally:
        server.shutdown()
        server.server_close()
    assert verdict.text_score == expected
    assert verdict.valid is (expected is not None)
    messages = _Replies.bodies[0]["messages"]
    if style == "prometheus":
        assert messages[0] == {"role": "system", "content": PROMETHEUS_SYSTEM}
        prompt = messages[1]["content"]
        assert "a number between 0 and 2" in prompt and "###Reference Answer (Score 2):\nЭталон" in prompt
        assert "[Полнота]\n0: неполно" in prompt and prompt.endswith("###Feedback: ")


@pytest.mark.parametrize("style", ["pollux", "general", "prometheus"])
def test_an_endpoint_judge_writing_two_result_blocks_is_asked_again_then_invalid(style):
    """Issue 23 item 8 for judges: re-asked (`max_reasks`), then a verdict with valid=false and the reason."""
    from pollux.engine.openai_api import OpenAIEngine

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Replies)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Replies.bodies = []
    try:
        engine = OpenAIEngine("twice", base_url=f"http://127.0.0.1:{server.server_port}/v1",
                              prompt_style=style, max_reasks=1, max_retries=0)
        [verdict] = engine.judge_many([JudgeItem(instruction="Задание: две оценки", answer="Ответ",
                                                 criteria_name="Полнота", rubrics="0: нет\n\n1: частично\n\n2: да")])
    finally:
        server.shutdown()
        server.server_close()
    assert len(_Replies.bodies) == 2 and engine.usage["reasks"] == 1
    assert verdict.score is None and not verdict.valid
    assert verdict.invalid_reason == "the reply has 2 [RESULT] blocks (a verdict has exactly one)"
