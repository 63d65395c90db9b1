"""Score-only judging (`max_new_tokens=0`, issue 21 item 3): a `-r` judge's head reads the hidden
state at the prompt's last token, with no rationale generated — the model card's second forward
over the prompt alone. The in-process engine here; the GGUF engine's in tests/test_gguf.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pollux.engine import SamplingParams
from pollux.prompts import PromptTemplate, chat_text
from pollux.records import JudgeItem

RUBRICS = "0: ответ неверный.\n\n1: ответ частично верный.\n\n2: ответ полностью верный."
ITEMS = [JudgeItem(instruction=q, answer=a, criteria_name=c, rubrics=RUBRICS)
         for q, a in [("Сколько будет 2+2?", "4"), ("Назови столицу Франции.", "Берлин")]
         for c in ("Правильность ответа", "Полнота", "Грамотность")]


def test_sampling_params_accept_zero_new_tokens_and_refuse_negative() -> None:
    assert SamplingParams(max_new_tokens=0).max_new_tokens == 0
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingParams(max_new_tokens=-1)
    with pytest.raises(ValueError, match="min_new_tokens"):
        SamplingParams(max_new_tokens=0, min_new_tokens=1)


@torch.inference_mode()
def test_in_process_score_only_reads_the_head_at_the_prompts_last_token(tiny_judge_path: Path) -> None:
    """Each item's score is `regr_output` of one forward over its prompt (the model card's
    second forward with nothing generated), batched and prefix-shared as usual; no text."""
    from pollux.checkpoint import load_judge
    from pollux.engine.hf import TransformersEngine

    engine = TransformersEngine.from_pretrained(str(tiny_judge_path), dtype="float32", device="cpu",
                                                sampling=SamplingParams(max_new_tokens=0))
    verdicts = engine.judge_many(ITEMS)
    loaded = load_judge(tiny_judge_path, dtype="float32", device="cpu")
    model, tok = loaded.model, loaded.tokenizer
    for item, v in zip(ITEMS, verdicts, strict=True):
        assert v.error is None, v.error
        assert v.raw_text == "" and v.completion_tokens == 0 and v.finish_reason == "length"
        ids = tok([chat_text(tok, PromptTemplate().render(item))], return_tensors="pt")["input_ids"]
        expected = model(input_ids=ids).regr_output.item()
        assert v.head_score == pytest.approx(expected, abs=1e-4)
    assert len({round(v.head_score, 6) for v in verdicts}) > 1  # each item its own score


def test_answer_generation_refuses_zero_new_tokens() -> None:
    """Score-only is a judge's mode: a chat model asked for 0 new tokens would write empty answers."""
    from pollux.answer import AnswerError, generation_for
    from pollux.engine.registry import CommonOptions

    with pytest.raises(AnswerError, match="max_new_tokens"):
        generation_for("/nonexistent/model", CommonOptions(max_new_tokens=0), name=None, system_prompt=None)


def test_score_only_needs_a_regression_judge(tiny_generative_path: Path) -> None:
    """A generative judge's score is in its text: with no text it would have none."""
    from pollux.engine.hf import TransformersEngine

    with pytest.raises(ValueError, match=r"max_new_tokens=0 .*needs a -r judge"):
        TransformersEngine.from_pretrained(str(tiny_generative_path), dtype="float32", device="cpu",
                                           sampling=SamplingParams(max_new_tokens=0))
