"""The training objective: CE on target tokens only, the head's MSE read at `<|im_end|>` — checked
against the model's own forward (`labels=`, `regr_labels=`) and against single, unpadded rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from pollux.checkpoint import load_judge
from pollux.train.data import IGNORE, collate, load_examples
from pollux.train.loss import step_terms

RUBRICS = "0: неверно\n\n1: частично верно\n\n2: верно"


@pytest.fixture(scope="module")
def setup(tiny_judge_path: Path, tmp_path_factory: pytest.TempPathFactory):
    judge = load_judge(tiny_judge_path, dtype="float32", device="cpu")
    rows = [
        {"instruction": "Сколько будет 2 + 2?", "reference_answer": "4", "answer": "4",
         "criteria_name": "Правильность ответа", "rubrics": RUBRICS, "rationale": "Верно.", "score": 2},
        {"instruction": "Сколько будет 12 + 30? Ответь подробно, с пояснением.", "answer": "Думаю, что 41.",
         "criteria_name": "Правильность ответа", "rubrics": RUBRICS,
         "rationale": "Ответ близок к эталону, но неточен: ошибка на единицу.", "score": 1},
        {"instruction": "Сколько будет 5 - 3?", "reference_answer": "2", "answer": "Девять",
         "criteria_name": "Правильность ответа", "rubrics": RUBRICS, "rationale": "Неверно.", "score": 0},
    ]
    path = tmp_path_factory.mktemp("loss") / "rows.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    examples, _ = load_examples(path, judge.tokenizer)
    return judge.model, judge.tokenizer, examples


def test_terms_equal_the_models_own_losses(setup):
    model, tok, examples = setup
    batch = collate(examples, tok.pad_token_id)
    with torch.no_grad():
        terms = step_terms(model, batch, regression=True)
        own = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    position_ids=batch["position_ids"], labels=batch["labels"],
                    regr_labels=batch["regr_labels"], regr_weight=0.7)
    assert terms.n_tokens == sum(e.n_target for e in examples)
    assert terms.ce_sum.item() / terms.n_tokens == pytest.approx(own.lm_loss.item(), rel=1e-5)
    assert terms.se_sum.item() / len(examples) == pytest.approx(own.regr_loss.item(), rel=1e-5)
    lm, mse = terms.ce_sum / terms.n_tokens, terms.se_sum / len(examples)
    assert (lm + 0.7 * mse).item() == pytest.approx(own.loss.item(), rel=1e-5)


def test_prompt_tokens_get_no_cross_entropy(setup):
    """CE = sum over exactly the target positions (target text + <|im_end|>), from full logits."""
    model, tok, examples = setup
    for ex in examples:
        batch = collate([ex], tok.pad_token_id)
        with torch.no_grad():
            terms = step_terms(model, batch, regression=True)
            logits = model(input_ids=torch.tensor([ex.input_ids])).logits[0]
        logp = F.log_softmax(logits.float(), dim=-1)
        n_prompt = ex.labels.index(next(x for x in ex.labels if x != IGNORE))
        target_positions = range(n_prompt, len(ex.input_ids))
        expected = -sum(logp[p - 1, ex.input_ids[p]].item() for p in target_positions)
        assert terms.n_tokens == len(target_positions)
        assert terms.ce_sum.item() == pytest.approx(expected, rel=1e-5)
        # a prompt token's (large) CE would change the sum: make sure it is really left out
        prompt_ce = -logp[n_prompt - 2, ex.input_ids[n_prompt - 1]].item()
        assert abs(terms.ce_sum.item() - expected) < 0.01 * prompt_ce


def test_head_is_read_at_end_of_turn_as_at_inference(setup):
    """The MSE uses the head at <|im_end|> — what the model card computes on prompt + generated
    ids ending in <|im_end|> — for every row of a left-padded batch."""
    model, tok, examples = setup
    end = tok.convert_tokens_to_ids("<|im_end|>")
    batch = collate(examples, tok.pad_token_id)
    with torch.no_grad():
        terms = step_terms(model, batch, regression=True)
        for i, ex in enumerate(examples):
            assert ex.input_ids[-1] == end
            alone = model(input_ids=torch.tensor(ex.input_ids)).regr_output.item()  # model-card style call
            assert terms.regr_output[i].item() == pytest.approx(alone, abs=1e-5)
            hidden = model.model(input_ids=torch.tensor([ex.input_ids])).last_hidden_state[0]
            at_end = model.regression_head(hidden[-1]).item()
            before_end = model.regression_head(hidden[-2]).item()
            assert at_end == pytest.approx(alone, abs=1e-5)
            assert abs(before_end - alone) > 1e-4  # another position would give another score
    scores = batch["regr_labels"]
    assert terms.se_sum.item() == pytest.approx(((terms.regr_output - scores) ** 2).sum().item(), rel=1e-6)
