"""The GGUF engine (`gguf:PATH`, llama.cpp) and `pollux convert`, against the in-process engine.

Needs llama-cpp-python and llama.cpp's converter (a llama.cpp source tree: $POLLUX_LLAMA_CPP or
<venv>/llama.cpp); `.ci/gguf-env` builds both into .venv-gguf and CI runs this file there. Where
they are missing, every test here is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (the gguf extra; .ci/gguf-env builds it)")

from pollux.convert import ConvertError, convert_checkpoint, find_converter, head_path
from pollux.engine import SamplingParams
from pollux.engine.gguf import GGUFEngine, GGUFError
from pollux.records import JudgeItem

try:
    find_converter()
except ConvertError as exc:
    pytest.skip(f"llama.cpp's converter is not available: {exc}", allow_module_level=True)

# llama.cpp's AMX kernels (quantised weights) die with SIGILL on VMs whose hypervisor does not enable
# AMX though the CPU reports it, as on this project's machines: the tests (and their subprocesses)
# run without llama.cpp's extra weight buffers (`extra_buffers`, pollux.engine.gguf._model_params).
os.environ.setdefault("POLLUX_GGUF_EXTRA_BUFFERS", "0")

RUBRICS = "0: ответ неверный.\n\n1: ответ частично верный.\n\n2: ответ полностью верный."
QUESTIONS = [
    ("Сколько будет 2+2?", "4"),
    ("Назови столицу Франции.", "Берлин"),
    ("Сколько дней в неделе?", "Семь, если считать выходные."),
    ("Кто написал «Войну и мир»?", "Лев Николаевич Толстой, в 1860-х годах."),
]
CRITERIA = ["Правильность ответа", "Полнота", "Грамотность", "Краткость", "Вежливость"]


def items() -> list[JudgeItem]:
    """4 answers × 5 criteria: each answer's prompts share their prefix up to the criterion."""
    return [JudgeItem(instruction=q, answer=a, criteria_name=c, rubrics=RUBRICS) for q, a in QUESTIONS for c in CRITERIA]


@pytest.fixture(scope="module")
def peaked_judge(tiny_judge_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny `-r` judge overfitted for 35 Adam steps to write `[FEEDBACK] … [RESULT] n [END]` on
    this file's items (`pollux.fixtures.build_scoring_judge`; its head is kept): peaked, so greedy
    text is stable under f16 rounding."""
    from pollux.fixtures import build_scoring_judge

    examples = [(it, f"[FEEDBACK] {('ok', 'нет', 'частично')[k % 3]} [RESULT] {k % 3} [END]")
                for k, it in enumerate(items())]
    return build_scoring_judge(tiny_judge_path, tmp_path_factory.mktemp("peaked-r"), examples=examples)


@pytest.fixture(scope="module")
def f16(peaked_judge: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gguf") / "judge-f16.gguf"
    convert_checkpoint(peaked_judge, out, "f16")
    return out


def gguf_engine(path: Path, **kw) -> GGUFEngine:
    kw.setdefault("sampling", SamplingParams(max_new_tokens=32, temperature=0))
    return GGUFEngine(path, threads=1, **kw)


def test_convert_writes_the_gguf_the_head_and_the_generation_config(peaked_judge: Path, f16: Path) -> None:
    from safetensors.numpy import load_file

    sidecar = json.loads(Path(f"{f16}.pollux.json").read_text(encoding="utf-8"))
    assert sidecar["kind"] == "regression" and sidecar["quant"] == "f16"
    gen = json.loads((peaked_judge / "generation_config.json").read_text(encoding="utf-8"))
    assert sidecar["generation_config"]["eos_token_id"] == gen["eos_token_id"]
    head = load_file(str(head_path(f16)))
    assert head["regression_head.weight"].shape == (1, 64) and head["regression_head.bias"].shape == (1,)
    engine = gguf_engine(f16)
    assert "<|im_start|>" in engine.llm.metadata["tokenizer.chat_template"]
    assert engine.eos_ids == sorted(set(gen["eos_token_id"]))


def test_tokenizer_gives_the_checkpoint_ids_on_russian_text(peaked_judge: Path, f16: Path) -> None:
    from transformers import AutoTokenizer

    from pollux.prompts import PromptTemplate, chat_text

    hf = AutoTokenizer.from_pretrained(peaked_judge)
    engine = gguf_engine(f16)
    for item in items()[::3]:
        prompt = PromptTemplate().render(item)
        text = chat_text(hf, prompt)
        assert chat_text(engine.tokenizer, prompt) == text  # the GGUF's chat template renders the same
        assert engine.tokenizer([text])["input_ids"][0] == hf(text)["input_ids"]
    sample = "Съешь же ещё этих мягких французских булок, да выпей чаю. Ёжик — 42 раза!"
    assert engine.tokenizer([sample])["input_ids"][0] == hf(sample)["input_ids"]


def test_f16_matches_the_in_process_engine(peaked_judge: Path, f16: Path) -> None:
    """Parity (issue 21): identical rationales on ≥ 95% of items, |Δ head score| ≤ 1e-2."""
    from pollux.engine.hf import TransformersEngine

    sampling = SamplingParams(max_new_tokens=32, temperature=0)
    reference = TransformersEngine.from_pretrained(str(peaked_judge), dtype="float32", device="cpu",
                                                   sampling=sampling).judge_many(items())
    got = gguf_engine(f16, sampling=sampling).judge_many(items())
    pairs = list(zip(reference, got, strict=True))
    same = [(a, b) for a, b in pairs if a.raw_text == b.raw_text]
    # the head reads prompt + rationale: scores compare where the rationales are the same
    deltas = [abs(a.head_score - b.head_score) for a, b in same]
    print(f"gguf f16 vs in-process: texts identical {len(same)}/{len(got)}, max |Δscore| {max(deltas):.2e} "
          f"(over all items: {max(abs(a.head_score - b.head_score) for a, b in pairs):.2e})")
    assert len(same) >= 0.95 * len(got)
    assert max(deltas) <= 1e-2
    assert all(b.finish_reason == a.finish_reason and b.completion_tokens == a.completion_tokens
               for a, b in same)
    assert "[RESULT]" in got[0].raw_text  # the peaked judge writes its trained format


def test_score_only_matches_the_in_process_engine(peaked_judge: Path, f16: Path) -> None:
    """max_new_tokens=0 (score-only, issue 21 item 3): no text; the head reads the prompt's last
    token, as the in-process engine does — with prefix reuse on, in any item order."""
    from pollux.engine.hf import TransformersEngine

    sampling = SamplingParams(max_new_tokens=0, temperature=0)
    reference = TransformersEngine.from_pretrained(str(peaked_judge), dtype="float32", device="cpu",
                                                   sampling=sampling).judge_many(items())
    engine = gguf_engine(f16, sampling=sampling)
    got = engine.judge_many(items())
    assert all(v.error is None and v.raw_text == "" and v.completion_tokens == 0 for v in got), got[0]
    deltas = [abs(a.head_score - b.head_score) for a, b in zip(reference, got, strict=True)]
    print(f"gguf f16 vs in-process, score-only: max |Δscore| {max(deltas):.2e}")
    assert max(deltas) <= 1e-2
    assert engine.stats["decode_steps"] == 0 and engine.stats["head_reads"] == len(got)
    assert engine.stats["prompt_tokens_evaluated"] < 0.5 * engine.stats["prompt_tokens"]


def test_prefix_reuse_evaluates_each_answers_prefix_once_with_the_same_verdicts(f16: Path) -> None:
    shared, whole = gguf_engine(f16), gguf_engine(f16, share_prefix=False)
    a, b = shared.judge_many(items()), whole.judge_many(items())
    assert [v.raw_text for v in a] == [v.raw_text for v in b]
    assert max(abs(x.head_score - y.head_score) for x, y in zip(a, b, strict=True)) < 1e-3
    assert whole.stats["prompt_tokens_evaluated"] == whole.stats["prompt_tokens"]
    # per answer: one whole prompt, then only the criterion's part of the other four
    assert shared.stats["prompt_tokens_evaluated"] < 0.5 * shared.stats["prompt_tokens"]


def test_stop_conditions_length_and_context(f16: Path) -> None:
    engine = gguf_engine(f16, sampling=SamplingParams(max_new_tokens=3, min_new_tokens=3, temperature=0))
    v = engine.judge_many(items()[:1])[0]
    assert v.finish_reason == "length" and v.completion_tokens == 3 and v.head_score is not None
    small = gguf_engine(f16, n_ctx=64)
    verdicts = small.judge_many(items()[:2])
    assert all(v.error and "context is 64 tokens" in v.error for v in verdicts), verdicts[0].error


def test_prompt_reaching_the_context_end_stops_with_length(f16: Path) -> None:
    engine = gguf_engine(f16)
    prompt_len = len(engine.tokenizer([_chat(engine, items()[0])])["input_ids"][0])
    tight = gguf_engine(f16, n_ctx=prompt_len + 2, sampling=SamplingParams(max_new_tokens=32, min_new_tokens=5,
                                                                          temperature=0))
    v = tight.judge_many(items()[:1])[0]
    assert v.error is None and v.finish_reason == "length" and v.completion_tokens == 2


def _chat(engine: GGUFEngine, item: JudgeItem) -> str:
    from pollux.prompts import PromptTemplate, chat_text

    return chat_text(engine.tokenizer, PromptTemplate().render(item))


def test_a_missing_head_is_a_clear_error(f16: Path, tmp_path: Path) -> None:
    lone = tmp_path / "lone.gguf"
    lone.symlink_to(f16)
    Path(f"{lone}.pollux.json").write_text(Path(f"{f16}.pollux.json").read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(GGUFError, match=r"regression \(-r\) judge, but its head .* is missing"):
        GGUFEngine(lone)


def test_score_only_needs_a_regression_judge(f16: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain.gguf"
    plain.symlink_to(f16)
    sidecar = json.loads(Path(f"{f16}.pollux.json").read_text(encoding="utf-8")) | {"kind": "generative", "head": None}
    Path(f"{plain}.pollux.json").write_text(json.dumps(sidecar), encoding="utf-8")
    with pytest.raises(ValueError, match=r"max_new_tokens=0 .*needs a -r judge"):
        GGUFEngine(plain, sampling=SamplingParams(max_new_tokens=0))


def test_registry_and_cli_judge_with_gguf(f16: Path, tmp_path: Path) -> None:
    from pollux.engine.registry import OptionsError, load_engine

    engine = load_engine(f"gguf:{f16}", {"n_ctx": 2048, "threads": 1, "max_new_tokens": 8})
    assert engine.describe()["engine"] == "gguf" and engine.context == 2048
    with pytest.raises(OptionsError, match="does not apply to gguf: judges"):
        load_engine(f"gguf:{f16}", {"dtype": "float32"})
    src = tmp_path / "items.jsonl"
    src.write_text("".join(json.dumps(it.to_dict(), ensure_ascii=False) + "\n" for it in items()[:2]),
                   encoding="utf-8")
    run = subprocess.run([sys.executable, "-m", "pollux.cli", "judge", "--judge", f"gguf:{f16}", "--input", str(src),
                          "--max-new-tokens", "8", "--n-ctx", "2048", "--threads", "1"],
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
    assert len(rows) == 2 and all(r["head_score"] is not None for r in rows)


def test_cli_convert_quantises_and_the_quantised_judge_scores(peaked_judge: Path, f16: Path, tmp_path: Path) -> None:
    """`pollux convert --quant q4_k_m`: one JSON object on stdout; llama.cpp's quantiser falls back
    to q5_0 / q8_0 for this tiny judge's 64-wide rows (k-quants need multiples of 256)."""
    out = tmp_path / "judge-q4_k_m.gguf"
    run = subprocess.run([sys.executable, "-m", "pollux.cli", "convert", str(peaked_judge), str(out), "--quant",
                          "q4_k_m", "--threads", "1"], capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-2000:]
    wrote = json.loads(run.stdout)
    assert wrote["quant"] == "q4_k_m" and wrote["bytes"] < f16.stat().st_size and Path(wrote["head"]).is_file()
    quantised, full = gguf_engine(out).judge_many(items()), gguf_engine(f16).judge_many(items())
    same = [(a, b) for a, b in zip(full, quantised, strict=True) if a.raw_text == b.raw_text]
    drift = max(abs(a.head_score - b.head_score) for a, b in same)
    print(f"gguf q4_k_m vs f16 (tiny judge): texts identical {len(same)}/{len(full)}, max |Δscore| {drift:.2e}")
    assert all(v.error is None and v.head_score is not None for v in quantised)


def test_convert_errors_name_the_problem(peaked_judge: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConvertError, match="unknown quantisation 'q3'"):
        convert_checkpoint(peaked_judge, tmp_path / "x.gguf", "q3")
    run = subprocess.run([sys.executable, "-m", "pollux.cli", "convert", str(tmp_path), str(tmp_path / "x.gguf")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "no config.json" in run.stderr
    monkeypatch.delenv("POLLUX_LLAMA_CPP", raising=False)
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    with pytest.raises(ConvertError, match=r"converter \(convert_hf_to_gguf.py\) was not found.*--llama-cpp"):
        find_converter(tmp_path)


def test_a_gguf_chat_model_writes_replies(f16: Path) -> None:
    """`gguf:PATH` as a chat model (`pollux answer`, synth): replies with token counts, in order."""
    from pollux.engine.registry import load_chat

    chat = load_chat(f"gguf:{f16}", {"threads": 1, "n_ctx": 1024})
    requests = [{"key": f"k{i}", "messages": [{"role": "user", "content": f"Вопрос {i}"}], "temperature": t,
                 "max_tokens": 4, "seed": 0} for i, t in enumerate((0.0, 0.7, 0.0))]
    try:
        replies = chat.generate(requests)
        assert [r["key"] for r in replies] == ["k0", "k1", "k2"] and all(r["error"] is None for r in replies)
        assert all(r["prompt_tokens"] > 0 and 0 < r["completion_tokens"] <= 4 for r in replies)
        assert chat.generate(requests[:1])[0]["text"] == replies[0]["text"]  # greedy: the same reply again
    finally:
        chat.close()
