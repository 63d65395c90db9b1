"""Rubric scales, [RESULT] parsing and verdict validity."""

from __future__ import annotations

import pytest

from pollux.records import JudgeItem
from pollux.scales import Scale, check_score, normalise, parse_feedback, parse_result, parse_scale
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
        ("[RESULT] 1 [END] ... [RESULT] 2 [END]", 2.0),
    ],
)
def test_parse_result(text, score):
    assert parse_result(text) == score


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
