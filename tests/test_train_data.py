"""Training rows → sequences: prompt tokens exactly as inference sees them, CE only on the target,
the sequence ending at `<|im_end|>`; too-long rows dropped and counted; bad rows named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from pollux.prompts import PromptTemplate, chat_text
from pollux.records import JudgeItem
from pollux.train.data import IGNORE, TrainDataError, collate, load_examples, target_text

RUBRICS = "0: неверно\n\n1: частично верно\n\n2: верно"


def row(**over) -> dict:
    base = {"instruction": "Сколько будет 2 + 2?", "reference_answer": "4", "answer": "Ответ: 4.",
            "criteria_name": "Правильность ответа", "rubrics": RUBRICS,
            "rationale": "Ответ совпадает с эталоном.", "score": 2}
    return {**base, **over}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n"
                            for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer(tiny_judge_path: Path):
    return AutoTokenizer.from_pretrained(tiny_judge_path)


def test_sequence_is_prompt_then_target_then_end_of_turn(tmp_path: Path, tokenizer):
    r = row()
    (ex,), report = load_examples(write_jsonl(tmp_path / "t.jsonl", [r]), tokenizer)
    assert report.kept == 1 and report.too_long == 0 and not report.bad

    prompt = chat_text(tokenizer, PromptTemplate().render(JudgeItem.from_dict(r)))
    assert prompt.endswith("<|im_start|>assistant\n")
    prompt_ids = tokenizer(prompt)["input_ids"]  # the engine's own tokenisation of the prompt
    n = len(prompt_ids)
    assert ex.input_ids[:n] == prompt_ids
    # no CE on any prompt token; CE on every target token and on <|im_end|>
    assert ex.labels[:n] == [IGNORE] * n
    assert ex.labels[n:] == ex.input_ids[n:]
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert ex.input_ids[-1] == end and ex.input_ids.count(end) == 3  # system, user, assistant turns
    # regression target: feedback only, the score stripped
    assert tokenizer.decode(ex.input_ids[n:-1]) == "[FEEDBACK] Ответ совпадает с эталоном. [END]"
    assert ex.score == 2.0
    # = the chat template of the finished conversation, minus what follows <|im_end|>
    full = tokenizer.apply_chat_template(
        [{"role": "user", "content": PromptTemplate().render(JudgeItem.from_dict(r))},
         {"role": "assistant", "content": target_text(r["rationale"], 2, "regression")}], tokenize=False)
    assert tokenizer.decode(ex.input_ids) == full.removesuffix("\n")


def test_generative_target_carries_the_score(tmp_path: Path, tokenizer):
    halves = "0: неверно\n\n0,5: почти неверно\n\n1: частично\n\n1,5: почти верно\n\n2: верно"
    rows = [row(score=1), row(score="1,5", rubrics=halves), row(rationale="[FEEDBACK] Почти верно. [RESULT] 1 [END]", score=1)]
    exs, _ = load_examples(write_jsonl(tmp_path / "g.jsonl", rows), tokenizer, kind="generative")
    texts = [tokenizer.decode([t for t, lab in zip(e.input_ids, e.labels, strict=True) if lab != IGNORE])
             for e in exs]
    assert texts == ["[FEEDBACK] Ответ совпадает с эталоном. [RESULT] 1 [END]<|im_end|>",
                     "[FEEDBACK] Ответ совпадает с эталоном. [RESULT] 1.5 [END]<|im_end|>",
                     "[FEEDBACK] Почти верно. [RESULT] 1 [END]<|im_end|>"]
    assert [e.score for e in exs] == [1.0, 1.5, 1.0]


def test_too_long_rows_are_dropped_and_counted(tmp_path: Path, tokenizer):
    rows = [row(), row(answer="очень длинный ответ " * 200), row()]
    exs, report = load_examples(write_jsonl(tmp_path / "l.jsonl", rows), tokenizer, max_length=400)
    assert (report.rows, report.kept, report.too_long) == (3, 2, 1)
    assert all(len(e.input_ids) <= 400 for e in exs)


def test_bad_rows_are_named_with_file_and_line(tmp_path: Path, tokenizer):
    rows = [row(), "{broken json", row(score="много"), row(score=7), {k: v for k, v in row().items() if k != "rationale"},
            row(rationale=""), row(score=None), row()]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(TrainDataError) as err:
        load_examples(path, tokenizer)
    msg = str(err.value)
    assert "6 bad row(s) of 8" in msg
    for line, what in [(2, "broken JSON"), (3, "'score' must be a number"), (4, "outside the rubric's scale"),
                       (5, "missing field 'rationale'"), (6, "'rationale' is empty"), (7, "missing field 'score'")]:
        assert f"bad.jsonl:{line}: " in msg and what in msg, (line, what, msg)
    # with skip_bad_rows the good rows are kept and the bad ones counted
    exs, report = load_examples(path, tokenizer, skip_bad_rows=True)
    assert len(exs) == 2 and len(report.bad) == 6 and report.kept == 2


def test_a_score_between_the_rubrics_levels_is_a_bad_row(tmp_path: Path, tokenizer):
    """Issue 23 item 18: 1.5 on a 0/1/2 rubric was a valid training target."""
    rows = [row(), row(score=1.5), row(score="0,5"), row(rubrics="Оцени от 1 до 10.", score=7.5),
            row(rubrics="Оцени от 1 до 10.", score=7)]
    path = write_jsonl(tmp_path / "levels.jsonl", rows)
    with pytest.raises(TrainDataError) as err:
        load_examples(path, tokenizer)
    msg = str(err.value)
    assert "3 bad row(s) of 5" in msg
    assert "levels.jsonl:2: score 1.5 is not one of the rubric's levels 0, 1, 2" in msg
    assert "levels.jsonl:3: score 0.5 is not one of the rubric's levels 0, 1, 2" in msg
    assert "levels.jsonl:4: score 7.5 is not a whole number of the rubric's scale 1..10" in msg


def test_parquet_rows(tmp_path: Path, tokenizer):
    import pandas as pd

    path = tmp_path / "t.parquet"
    pd.DataFrame([row(), row(score=0, rationale="Неверно.", reference_answer=None)]).to_parquet(path)
    exs, report = load_examples(path, tokenizer)
    assert report.kept == 2 and [e.score for e in exs] == [2.0, 0.0]


def test_collate_left_pads_with_real_positions(tmp_path: Path, tokenizer):
    rows = [row(), row(answer="Ответ: 4. Потому что два плюс два равно четырём.")]
    exs, _ = load_examples(write_jsonl(tmp_path / "c.jsonl", rows), tokenizer)
    batch = collate(exs, tokenizer.pad_token_id)
    short, long_ = sorted(range(2), key=lambda i: len(exs[i].input_ids))
    pad = len(exs[long_].input_ids) - len(exs[short].input_ids)
    assert pad > 0
    assert batch["attention_mask"][short, :pad].sum() == 0 and batch["attention_mask"][short, pad:].all()
    assert (batch["labels"][short, :pad] == IGNORE).all()
    assert batch["position_ids"][short, pad:].tolist() == list(range(len(exs[short].input_ids)))
    assert batch["position_ids"][long_].tolist() == list(range(len(exs[long_].input_ids)))
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert (batch["input_ids"][:, -1] == end).all()
    assert torch.equal(batch["regr_labels"], torch.tensor([2.0, 2.0]))
