"""The vLLM engine: same verdicts as the in-process engine; clean skips where vLLM cannot run.

The parity tests need vLLM (the `vllm` extra, or a vLLM CPU build) and are slow (two vLLM
engines start: generation and the head's pooling pass). Without vLLM they skip, naming why.
Test models have head_dim 64 (hidden 256, 4 heads), which vLLM's CPU attention requires.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pollux.engine import SamplingParams
from pollux.engine.vllm_engine import INSTALL_HINT, VLLMEngine, read_head, vllm_status
from pollux.engine.vllm_plugin import drop_head_weights
from pollux.records import JudgeItem

VLLM_OK, VLLM_WHY = vllm_status()
needs_vllm = pytest.mark.skipif(not VLLM_OK, reason=VLLM_WHY)

RUBRIC = "0: ответ неверный.\n\n1: ответ частично верный.\n\n2: ответ полностью верный."
ANSWERS = [
    ("Сколько будет 7 × 8?", "56", "Семь умножить на восемь — 56."),
    ("Назови три столицы европейских государств и коротко опиши каждую.", "",
     "Париж — столица Франции. Берлин — столица Германии. Рим — столица Италии."),
    ("Переведи на английский: «кошка спит».", "The cat is sleeping.", "A cat sleeps."),
]
CRITERIA = ["Правильность ответа", "Грамотность"]
CONTEXT = 1024  # the vLLM engine's max_model_len in these tests: one item below exceeds it


def parity_items() -> list[JudgeItem]:
    """6 items (3 answers × 2 criteria: shared prefixes for the prefix cache)."""
    return [JudgeItem(instruction=i, reference_answer=r, answer=a, criteria_name=c, rubrics=RUBRIC)
            for i, r, a in ANSWERS for c in CRITERIA]


# ---- without vLLM ---------------------------------------------------------------------------


@pytest.mark.skipif(VLLM_OK, reason="vLLM is installed here")
def test_missing_vllm_is_a_clear_error(tiny_judge_path):
    with pytest.raises(RuntimeError, match=r"pip install 'pollux\[vllm\]'"):
        VLLMEngine.from_pretrained(str(tiny_judge_path))
    assert "pollux[vllm]" in INSTALL_HINT


def test_plugin_drops_only_head_weights():
    weights = [("model.embed_tokens.weight", 1), ("regression_head.weight", 2), ("lm_head.weight", 3),
               ("regression_head.bias", 4), ("model.layers.0.regression_head_like", 5)]
    assert [n for n, _ in drop_head_weights(iter(weights))] == [
        "model.embed_tokens.weight", "lm_head.weight", "model.layers.0.regression_head_like"]


def test_head_read_from_safetensors_equals_the_models(tiny_judge_path):
    import torch

    from pollux.checkpoint import load_judge

    model = load_judge(tiny_judge_path, dtype="float32", device="cpu").model
    weight, bias = read_head(tiny_judge_path)
    assert weight.shape == (1, model.config.hidden_size) and bias.shape == (1,)
    assert torch.equal(weight, model.regression_head.weight.detach())
    assert torch.equal(bias, model.regression_head.bias.detach())


def test_head_missing_is_a_checkpoint_error(tiny_generative_path):
    from pollux.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="regression_head"):
        read_head(tiny_generative_path)


# ---- delivery, shared with the in-process engine (no vLLM needed) --------------------------


def _jobs(n: int):
    from pollux.engine.jobs import Job

    return [Job(i, it, [1, 2, 3], 4) for i, it in enumerate(parity_items()[:n])]


def _verdict(job):
    from pollux.verdicts import make_verdict

    return make_verdict(job.item, "[FEEDBACK] ок [RESULT] 2 [END]", judge="t")


def test_delivery_reruns_a_failed_batch_item_by_item_once_each():
    from pollux.engine.jobs import Delivery, run_isolating_failures

    jobs = _jobs(4)
    seen: list[int] = []
    done = Delivery(4, lambda i, v: seen.append(i))

    def together():
        done(jobs[0].index, _verdict(jobs[0]))  # delivered before the failure: it stands
        raise MemoryError("simulated out of memory")

    def alone(job):
        if job.index == 2:
            raise RuntimeError("this item always fails")
        done(job.index, _verdict(job))
        done(job.index, _verdict(job))  # a second delivery of one item is ignored

    run_isolating_failures(jobs, together, alone, done, judge="t")
    assert seen == [0, 1, 2, 3]
    verdicts = done.all()
    assert "this item always fails" in verdicts[2].error
    assert all(v.error is None for k, v in enumerate(verdicts) if k != 2)


def test_delivery_lets_the_callers_error_propagate_unretried():
    from pollux.engine.jobs import Delivery, caller_errors_unwrapped, run_isolating_failures

    jobs = _jobs(3)
    calls: list[int] = []
    reruns: list[int] = []

    def broken_store(i, v):
        calls.append(i)
        raise OSError("disk full")

    done = Delivery(3, broken_store)

    def together():
        for j in jobs:
            done(j.index, _verdict(j))

    with pytest.raises(OSError, match="disk full"), caller_errors_unwrapped():
        run_isolating_failures(jobs, together, lambda j: reruns.append(j.index), done, judge="t")
    assert calls == [0] and reruns == []


def test_vllm_engine_delivers_each_verdict_once_when_the_callback_fails(tiny_judge_path):
    """Defect 6: the vLLM engine used to catch the caller's exception as a vLLM failure, rerun the
    chunk item by item and call `on_verdict` again. The engine here is real but for vLLM itself:
    `_run_chunk` (the vLLM call) is replaced by one that delivers verdicts as it would."""
    from transformers import AutoTokenizer

    from pollux.prompts import PromptTemplate

    engine = object.__new__(VLLMEngine)  # no vLLM here: skip __init__, set what judge_many reads
    engine.tokenizer = AutoTokenizer.from_pretrained(tiny_judge_path)
    engine.template, engine.sampling = PromptTemplate(), SamplingParams(max_new_tokens=4).resolve()
    engine.name, engine.context, engine.chunk_size = "stub", 4096, 1024
    runs: list[int] = []

    def fake_chunk(jobs, done):
        runs.append(len(jobs))
        for j in jobs:
            done(j.index, _verdict(j))

    engine._run_chunk = fake_chunk
    calls: list[int] = []

    def broken_store(i, v):
        calls.append(i)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        engine.judge_many(parity_items()[:3], on_verdict=broken_store)
    assert calls == [0] and runs == [3]  # one callback, no rerun
    got = engine.judge_many(parity_items()[:3], on_verdict=lambda i, v: calls.append(i))
    assert calls == [0, 0, 1, 2] and [v.text_score for v in got] == [2, 2, 2]


# ---- with vLLM (slow) ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory) -> Path:
    from pollux.fixtures import build_tiny_judge

    return build_tiny_judge(tmp_path_factory.mktemp("vllm-judge-r"), hidden=256, heads=4, kv_heads=2, layers=2)


def _hf_verdicts(path: Path, items, sampling: SamplingParams):
    from pollux.engine.hf import TransformersEngine

    return TransformersEngine.from_pretrained(str(path), dtype="float32", device="cpu",
                                              sampling=sampling).judge_many(items)


@needs_vllm
@pytest.mark.slow
def test_vllm_matches_in_process_engine(judge_dir):
    """Greedy texts identical and |Δ head_score| ≤ 1e-3 (fp32) on 6 items, incl. sequences that
    stop on an end-of-turn token (whose id the head pass must read) and ones cut at the length
    limit; an item too long for the context gets an error verdict, the others go on."""
    sampling = SamplingParams(max_new_tokens=16, min_new_tokens=2)
    items = parity_items()

    # Make some greedy sequences stop early: declare a token the random judge writes mid-text
    # an end-of-turn id (in generation_config.json, which both engines read).
    first = _hf_verdicts(judge_dir, items, sampling)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(judge_dir)
    ids = tok(first[0].raw_text, add_special_tokens=False)["input_ids"]
    stop_id = ids[4]
    gen_file = judge_dir / "generation_config.json"
    cfg = json.loads(gen_file.read_text())
    cfg["eos_token_id"] = [*cfg["eos_token_id"], stop_id]
    gen_file.write_text(json.dumps(cfg))

    expected = _hf_verdicts(judge_dir, items, sampling)
    reasons = {v.finish_reason for v in expected}
    assert reasons == {"stop", "length"}, reasons  # both paths exercised

    long_item = JudgeItem(instruction="Перескажи текст. " * 400, answer="Текст.", criteria_name="Грамотность",
                          rubrics=RUBRIC)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    engine = VLLMEngine.from_pretrained(str(judge_dir), sampling=sampling, dtype="float32",
                                        gpu_memory_utilization=0.1, max_model_len=CONTEXT, enforce_eager=True)
    seen: list[int] = []
    try:
        got = engine.judge_many([*items[:3], long_item, *items[3:]], on_verdict=lambda i, v: seen.append(i))
        described = engine.describe()
    finally:
        engine.close()
    assert sorted(seen) == list(range(len(items) + 1))
    assert got[3].error and f"context is {CONTEXT} tokens" in got[3].error and got[3].head_score is None
    got = got[:3] + got[4:]

    deltas = []
    for e, g in zip(expected, got, strict=True):
        assert g.error is None
        assert g.raw_text == e.raw_text, (g.raw_text, e.raw_text)
        assert (g.finish_reason, g.completion_tokens, g.prompt_tokens) == (
            e.finish_reason, e.completion_tokens, e.prompt_tokens)
        deltas.append(abs(g.head_score - e.head_score))
    print(f"\nvLLM vs in-process: texts identical {len(got)}/{len(got)}; finish reasons "
          f"{[v.finish_reason for v in got]}; max |Δ head_score| {max(deltas):.2e}")
    assert max(deltas) <= 1e-3
    assert len({round(v.head_score, 4) for v in got}) > 1  # the head reads each sequence, not a constant

    d = described
    assert (d["engine"], d["kind"], d["dtype"], d["architecture"]) == (
        "vllm", "regression", "float32", "Qwen2WithRegressionHead")
    assert d["sampling"] == sampling.resolve().to_dict()  # the test judge's generation config sets none


@needs_vllm
@pytest.mark.slow
def test_generative_judge_through_the_cli(tmp_path):
    """A plain Qwen2ForCausalLM judge runs generation only (no head pass). `pollux judge --model
    vllm:PATH` (Judge.from_spec with every option the CLI passes) prints only JSON verdicts on
    stdout — vLLM's logs go to stderr — and they match the in-process engine's."""
    import subprocess
    import sys

    from pollux.fixtures import build_tiny_judge

    path = build_tiny_judge(tmp_path / "gen", regression=False, hidden=256, heads=4, kv_heads=2, layers=2, seed=1)
    items = parity_items()[:4]
    expected = _hf_verdicts(path, items, SamplingParams(max_new_tokens=12))
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(it.to_dict(), ensure_ascii=False) + "\n"
                                                  for it in items), encoding="utf-8")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    env.pop("VLLM_LOGGING_STREAM", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pollux.cli", "judge", "--model", f"vllm:{path}", "--input",
         str(tmp_path / "items.jsonl"), "--max-new-tokens", "12", "--dtype", "float32", "--batch-size", "8"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = [json.loads(line) for line in proc.stdout.splitlines()]  # every stdout line is a verdict
    assert [v["raw_text"] for v in got] == [v.raw_text for v in expected]
    assert [v["completion_tokens"] for v in got] == [v.completion_tokens for v in expected]
    assert all(v["head_score"] is None and v["error"] is None for v in got)
    assert "Qwen2ForCausalLM" in proc.stderr  # vLLM's log went to stderr


@needs_vllm
@pytest.mark.slow
def test_vllm_expected_score_matches_in_process(tmp_path):
    """Expected scores from vLLM's per-token logprobs (`SamplingParams(logprobs=K)`, raw) equal the
    in-process engine's (read from the logits) on a judge overfitted to write `[RESULT]`."""
    from pollux.engine.hf import TransformersEngine
    from pollux.fixtures import build_scoring_judge, build_tiny_judge, scoring_items

    source = build_tiny_judge(tmp_path / "gen", regression=False, hidden=256, heads=4, kv_heads=2, layers=2, seed=1)
    path = build_scoring_judge(source, tmp_path / "scoring")
    sampling = SamplingParams(max_new_tokens=16)
    items = scoring_items()
    expected = TransformersEngine.from_pretrained(str(path), dtype="float32", device="cpu", sampling=sampling,
                                                  expected_score=True).judge_many(items)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    engine = VLLMEngine.from_pretrained(str(path), sampling=sampling, dtype="float32", gpu_memory_utilization=0.1,
                                        max_model_len=CONTEXT, enforce_eager=True, expected_score=True, top_logprobs=20)
    try:
        got = engine.judge_many(items)
        described = engine.describe()
    finally:
        engine.close()
    for e, g in zip(expected, got, strict=True):
        assert g.raw_text == e.raw_text and "[RESULT]" in e.raw_text
        assert e.score_probs is not None and g.score_probs is not None
        assert g.score_probs == pytest.approx(e.score_probs, abs=1e-4)
        assert g.expected_score == pytest.approx(e.expected_score, abs=1e-4)
    print(f"\nvLLM vs in-process expected scores: {[g.expected_score for g in got]} vs "
          f"{[e.expected_score for e in expected]}")
    assert described["expected_score"] is True and described["top_logprobs"] == 20
