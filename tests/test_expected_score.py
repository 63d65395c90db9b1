"""Expected scores (G-Eval style): the probability of each scale value at the `[RESULT]` position,
checked against a hand computation from the logits of a plain forward — in-process (custom
forward and `generate` fallback) and through the `openai:` engine against a real `pollux serve`
returning logprobs. The judge is a tiny generative Qwen2 overfitted to write
`[FEEDBACK] … [RESULT] n [END]` (`scoring_judge_path`), with a score distribution that is not
one-hot on its first item."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from pollux.engine import SamplingParams
from pollux.engine.hf import TransformersEngine
from pollux.fixtures import SCORING_RUBRICS, scoring_items
from pollux.judge import Judge
from pollux.prompts import PromptTemplate, chat_text
from pollux.records import JudgeItem
from pollux.server.launch import free_port, start_serve, stop
from pollux.verdicts import Verdict

NEW_TOKENS = 16
K = 20  # top logprobs asked of the server (OpenAI's maximum): every scale token is among them (asserted)


@pytest.fixture(scope="module")
def loaded(scoring_judge_path: Path):
    from pollux.checkpoint import load_judge

    return load_judge(scoring_judge_path, dtype="float32", device="cpu")


def engine(loaded, **kw) -> TransformersEngine:
    return TransformersEngine(loaded.model, loaded.tokenizer, kind=loaded.kind, name="scoring",
                              sampling=SamplingParams(max_new_tokens=NEW_TOKENS), expected_score=True, **kw)


def by_hand(loaded, item: JudgeItem) -> tuple[str, dict[str, float]]:
    """Greedy text from `generate`, then one plain forward over prompt + generated tokens up to the
    score position (the first non-whitespace token after `[RESULT]`): softmax of the last logits,
    restricted to the tokens "0", "1", "2" and renormalised."""
    model, tok = loaded.model, loaded.tokenizer
    prompt = tok(chat_text(tok, PromptTemplate().render(item)))["input_ids"]
    out = model.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    generated = out[0, len(prompt):].tolist()
    position = max(k for k in range(len(generated))
                   if re.search(r"\[RESULT\]\s*$", tok.decode(generated[:k])) and tok.decode([generated[k]]).strip())
    with torch.no_grad():
        logits = model(torch.tensor([prompt + generated[:position]])).logits[0, -1]
    probs = torch.softmax(logits, dim=-1)
    ids = [tok.convert_tokens_to_ids(v) for v in ("0", "1", "2")]
    chosen = probs[ids] / probs[ids].sum()
    return tok.decode(generated, skip_special_tokens=True), dict(zip(("0", "1", "2"), chosen.tolist(), strict=True))


def check(verdict: Verdict, text: str, probs: dict[str, float]) -> None:
    assert verdict.raw_text == text and "[RESULT]" in text
    assert verdict.score_probs is not None and verdict.score_probs.keys() == probs.keys()
    for key, p in probs.items():
        assert verdict.score_probs[key] == pytest.approx(p, abs=1e-5)
    assert verdict.expected_score == pytest.approx(sum(int(k) * p for k, p in probs.items()), abs=1e-5)
    # the greedy score is the most probable scale value (the greedy token is a scale token here)
    assert verdict.text_score == float(max(verdict.score_probs, key=verdict.score_probs.__getitem__))


@pytest.fixture(scope="module")
def hand(loaded) -> list[tuple[str, dict[str, float]]]:
    return [by_hand(loaded, item) for item in scoring_items()]


def test_in_process_expected_score_equals_the_hand_computation(loaded, hand) -> None:
    verdicts = engine(loaded).judge_many(scoring_items())
    for verdict, (text, probs) in zip(verdicts, hand, strict=True):
        check(verdict, text, probs)
    assert max(verdicts[0].score_probs.values()) < 0.99  # type: ignore[union-attr]  # not one-hot


@pytest.mark.parametrize("logits_bytes", [1 << 30, 1])  # 1: one row per `generate` call
def test_the_generate_fallback_gives_the_same(loaded, hand, logits_bytes, monkeypatch) -> None:
    from pollux.engine import hf

    monkeypatch.setattr(hf, "GENERATE_LOGITS_BYTES", logits_bytes)
    eng = engine(loaded)
    eng.custom_forward = False
    assert eng._generate_rows(NEW_TOKENS, hf.Delivery(0, None)) == (1 if logits_bytes == 1 else 110)  # 1 GiB / (16 steps × 151,936 × 4 B)
    for verdict, (text, probs) in zip(eng.judge_many(scoring_items()), hand, strict=True):
        check(verdict, text, probs)


def test_off_by_default_and_for_regression_judges(loaded, tiny_judge) -> None:
    plain = TransformersEngine(loaded.model, loaded.tokenizer, kind=loaded.kind, name="scoring",
                               sampling=SamplingParams(max_new_tokens=NEW_TOKENS))
    verdict = plain.judge_many(scoring_items()[:1])[0]
    assert "[RESULT]" in verdict.raw_text and verdict.expected_score is None and verdict.score_probs is None
    assert "expected_score" not in plain.describe()
    assert Judge.from_spec(str(loaded.model.name_or_path), expected_score=True).describe()["expected_score"] is True
    assert tiny_judge.engine.expected_score is False  # a -r judge has no expected score here


def test_values_that_are_not_one_token_leave_a_note(loaded) -> None:
    item = scoring_items()[0]
    negative = JudgeItem(instruction=item.instruction, answer=item.answer, criteria_name=item.criteria_name,
                         rubrics="-1: плохо.\n\n0: так себе.\n\n1: хорошо.")
    ten = JudgeItem(instruction=item.instruction, answer=item.answer, criteria_name=item.criteria_name,
                    rubrics="Оценка от 1 до 10.")
    for v in engine(loaded).judge_many([negative, ten]):
        assert v.expected_score is None and v.score_probs is None
        assert "not single tokens" in v.meta["expected_score_note"], v.meta


@pytest.fixture(scope="module")
def server(scoring_judge_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("scoring-serve") / "serve.log"
    proc = start_serve(scoring_judge_path, port, ["--model-name", "scoring", "--device", "cpu",
                                                  "--max-new-tokens", str(NEW_TOKENS)],
                       log_path=log, timeout=300)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop(proc)


@pytest.mark.parametrize("index", [0, 1])
def test_serve_returns_openai_logprobs(server: str, index: int) -> None:
    prompt = PromptTemplate().render(scoring_items()[index])
    body = {"model": "scoring", "messages": [{"role": "user", "content": prompt}], "logprobs": True, "top_logprobs": K}
    reply = httpx.post(f"{server}/chat/completions", json=body, timeout=120).json()
    choice = reply["choices"][0]
    content = choice["logprobs"]["content"]
    assert b"".join(bytes(t["bytes"]) for t in content).decode() == choice["message"]["content"]
    for t in content:
        assert len(t["top_logprobs"]) == K and t["top_logprobs"][0]["logprob"] == pytest.approx(t["logprob"])  # greedy
    assert reply["pollux"]["text_score"] is not None
    text, positions = "", 0
    for t in content:  # at the score position every scale token is among the top K
        if re.search(r"\[RESULT\]\s*$", text) and t["token"].strip():
            assert {"0", "1", "2"} <= {a["token"] for a in t["top_logprobs"]}
            positions += 1
        text += t["token"]
    assert positions == 1
    plain = httpx.post(f"{server}/chat/completions", json={**body, "logprobs": False, "top_logprobs": None},
                       timeout=120).json()
    assert plain["choices"][0]["logprobs"] is None
    assert plain["choices"][0]["message"]["content"] == choice["message"]["content"]
    bad = httpx.post(f"{server}/chat/completions", json={**body, "logprobs": False}, timeout=120)
    assert bad.status_code == 400 and "top_logprobs" in bad.json()["error"]["message"]


def test_openai_engine_reads_the_expected_score_from_a_pollux_server(server: str, hand) -> None:
    judge = Judge.from_spec("openai:scoring", base_url=server, expected_score=True, top_logprobs=K,
                            max_new_tokens=NEW_TOKENS, max_reasks=0)
    verdicts = judge.judge_many(scoring_items())
    for verdict, (text, probs) in zip(verdicts, hand, strict=True):
        check(verdict, text, probs)
    # an engine without a text hook streams its whole text once, then the verdict
    *deltas, last = list(judge.stream(scoring_items()[0]))
    assert deltas == [verdicts[0].raw_text] and isinstance(last, Verdict)
    assert last.expected_score == pytest.approx(verdicts[0].expected_score, abs=1e-5)  # batch of 1, not 2


def test_the_scoring_rubric_is_the_scale_tested() -> None:
    from pollux.scales import parse_scale, scale_value_keys

    assert scale_value_keys(parse_scale(SCORING_RUBRICS)) == ["0", "1", "2"]
