"""The engine registry: a spec picks the engine, one options object is validated against it, and an
option the engine does not take is a clear error naming the option and the engine."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from pollux.engine import SamplingParams
from pollux.engine import registry as reg
from pollux.engine.registry import (
    CommonOptions,
    EngineEntry,
    LocalOptions,
    OpenAIOptions,
    OptionsError,
    load_engine,
    resolve,
    validate_options,
)
from pollux.judge import Judge
from pollux.prompts import MODEL_CARD_TEMPLATE, PromptTemplate
from pollux.records import JudgeItem
from pollux.verdicts import Verdict, make_verdict


def test_the_spec_picks_the_engine() -> None:
    assert [(e.name, t) for e, t in (resolve("openai:gpt-4o"), resolve("vllm:/m/j"), resolve("/m/j"))] == [
        ("openai", "gpt-4o"), ("vllm", "/m/j"), ("local", "/m/j")]
    with pytest.raises(OptionsError, match=r"unknown engine 'ray:' in 'ray:j' \(known: vllm:, openai:"):
        resolve("ray:j")


def test_an_option_of_another_engine_is_a_clear_error_not_a_type_error() -> None:
    with pytest.raises(OptionsError) as err:
        Judge.from_spec("openai:gpt-4o", dtype="bfloat16", base_url="http://127.0.0.1:9/v1")
    assert str(err.value).startswith("option 'dtype' does not apply to openai: judges (it takes: base_url, ")
    assert "api_key_env" in str(err.value) and "max_new_tokens" in str(err.value)
    with pytest.raises(OptionsError, match="option 'base_url' does not apply to local checkpoint judges"):
        validate_options("/m/judge", {"base_url": "http://x"})
    with pytest.raises(OptionsError, match="option 'max_batch_tokens' does not apply to vllm: judges"):
        validate_options("vllm:/m/judge", {"max_batch_tokens": 4096})


def test_an_unknown_option_names_the_engine_and_the_closest_name() -> None:
    with pytest.raises(OptionsError) as err:
        validate_options("/m/judge", {"max_new_token": 8})
    message = str(err.value)
    assert message.startswith("unknown option 'max_new_token' for local checkpoint judges (it takes: dtype, ")
    assert message.endswith("did you mean 'max_new_tokens'?")


@pytest.mark.parametrize(("spec", "options", "expected"), [
    ("/m/judge", {"batch_size": "many"}, "option 'batch_size' of local checkpoint judges: Input should be a valid "
                                         "integer, unable to parse string as an integer (got 'many')"),
    ("/m/judge", {"batch_size": 0}, "option 'batch_size' of local checkpoint judges: Input should be greater "
                                    "than or equal to 1 (got 0)"),
    ("/m/judge", {"dtype": "int8"}, "option 'dtype' of local checkpoint judges: Input should be 'auto', "),
    ("openai:m", {"temperature": "hot"}, "option 'temperature' of openai: judges: Input should be a valid number"),
    ("openai:m", {"prompt_style": "chatty"}, "option 'prompt_style' of openai: judges: Input should be 'pollux', "
                                             "'general' or 'prometheus' (got 'chatty')"),
    ("openai:m", {"max_new_tokens": 0}, "sampling options of openai: judges: max_new_tokens must be ≥ 1"),
    ("/m/judge", {"template": "no-such-template"}, "option 'template' of local checkpoint judges: template "
                                                   "'no-such-template' is neither a template name"),
])
def test_a_bad_value_names_the_option_and_what_is_wrong(spec: str, options: dict[str, Any], expected: str) -> None:
    with pytest.raises(OptionsError) as err:
        validate_options(spec, options)
    assert str(err.value).startswith(expected)


def test_common_options_are_shared_and_typed() -> None:
    o = validate_options("openai:m", {"sampling": SamplingParams(max_new_tokens=5, seed=3), "temperature": "0.5",
                                      "template": "model-card", "concurrency": "4"})
    assert isinstance(o, OpenAIOptions)
    assert (o.sampling.max_new_tokens, o.sampling.seed, o.sampling.temperature) == (5, 3, 0.5)
    assert o.template == PromptTemplate(text=MODEL_CARD_TEMPLATE) and o.concurrency == 4
    # every sampling field, now and later, is an option of every engine
    for entry in reg.engines():
        names = entry.options.option_names()
        assert set(SamplingParams.__dataclass_fields__) <= set(names), entry.name
        assert "template" in names
    local = validate_options("/m/judge")
    assert isinstance(local, LocalOptions) and local.sampling == SamplingParams() and local.batch_size == 32


def test_defaults_apply_only_where_the_engine_takes_them() -> None:
    """What a verb prefers (serve's batch size) never breaks an engine that has no such option;
    what the caller sets wins over it."""
    assert validate_options("/m/judge", {}, defaults={"batch_size": 8}).batch_size == 8  # type: ignore[attr-defined]
    assert validate_options("/m/judge", {"batch_size": 4}, defaults={"batch_size": 8}).batch_size == 4  # type: ignore[attr-defined]
    o = validate_options("openai:m", {}, defaults={"batch_size": 8, "threads": 2})
    assert "batch_size" not in o.model_dump()


def test_options_of_one_engine_are_not_accepted_by_another() -> None:
    openai = validate_options("openai:m", {"base_url": "http://x"})
    assert validate_options("openai:n", openai) is openai
    with pytest.raises(OptionsError, match="OpenAIOptions are not options of local checkpoint judges"):
        validate_options("/m/judge", openai)


class _EchoEngine:
    """A test engine: scores every item with its answer's length."""

    kind = "generative"

    def __init__(self, name: str, options: CommonOptions):
        self.name = name
        self.options = options

    def judge_many(self, items: Sequence[JudgeItem], on_verdict: Any = None) -> list[Verdict]:
        return [make_verdict(it, f"[FEEDBACK] ok [RESULT] {len(it.answer)} [END]", judge=self.name) for it in items]

    def describe(self) -> dict[str, Any]:
        return {"engine": "echo"}


class _EchoOptions(CommonOptions):
    loud: bool = False


def test_a_new_engine_is_one_registration(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = EngineEntry("echo", "echo:", _EchoOptions, lambda name, o: _EchoEngine(name, o), "test engine")
    monkeypatch.setitem(reg._ENGINES, "echo", entry)
    judge = Judge.from_spec("echo:e1", {"loud": True, "max_new_tokens": 7})
    assert judge.engine.options.loud and judge.engine.options.sampling.max_new_tokens == 7  # type: ignore[attr-defined]
    item = {"instruction": "q", "answer": "ab", "criteria_name": "c", "rubrics": "0: a\n\n1: b\n\n2: c"}
    assert judge.judge(item).score == 2
    with pytest.raises(OptionsError, match="option 'loud' does not apply to openai: judges"):
        load_engine("openai:m", {"loud": True})


def test_threads_reach_torch_for_in_process_judges(tiny_judge_path: Path) -> None:
    before = torch.get_num_threads()
    try:
        judge = Judge.from_spec(str(tiny_judge_path), {"threads": 2, "device": "cpu", "max_new_tokens": 2,
                                                       "template": "model-card"})
        assert torch.get_num_threads() == 2
        assert judge.engine.template.text == MODEL_CARD_TEMPLATE  # type: ignore[attr-defined]
    finally:
        torch.set_num_threads(before)


def test_vllm_options_reach_the_vllm_engine(tmp_path: Path) -> None:
    """Validated options get as far as `VLLMEngine.from_pretrained`; where vLLM is missing it says
    so (the GPU tests in tests/test_vllm_engine.py run the engine itself)."""
    from pollux.engine.vllm_engine import vllm_status

    if vllm_status()[0]:
        pytest.skip("vLLM is installed: tests/test_vllm_engine.py runs it")
    with pytest.raises(RuntimeError, match="vLLM is not installed"):
        Judge.from_spec(f"vllm:{tmp_path}", {"batch_size": 8, "dtype": "bfloat16", "gpu_memory_utilization": 0.5})
    with pytest.raises(OptionsError, match="option 'gpu_memory_utilization' of vllm: judges: Input should be less"):
        Judge.from_spec(f"vllm:{tmp_path}", {"gpu_memory_utilization": 1.5})


def test_expected_score_is_an_option_of_every_engine() -> None:
    for spec in ("/m/judge", "openai:m", "vllm:/m/judge"):
        assert validate_options(spec, {"expected_score": "true"}).expected_score is True, spec
        assert validate_options(spec).expected_score is False, spec
    assert validate_options("openai:m", {"top_logprobs": "5"}).top_logprobs == 5  # type: ignore[attr-defined]
    with pytest.raises(OptionsError, match="'top_logprobs' does not apply to local checkpoint judges"):
        validate_options("/m/judge", {"top_logprobs": 5})


def test_an_option_has_one_command_line_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    """Engines that share an option share its flag (declared once, on the first class with the
    field); a second, different declaration is refused instead of silently shadowed."""
    from pydantic import Field

    flags = {f.name: f for f in reg.option_flags()}
    assert flags["timeout"].flag == "--api-timeout" and flags["share_prefix"].type is bool
    assert flags["batch_size"].type is int and flags["prompt_style"].type is str  # a Literal: str
    assert "api_key" not in flags  # no flag: `-o api_key=…` only (a key on the command line leaks)

    class Clashing(_EchoOptions):
        dtype: str = Field("auto", json_schema_extra=reg.cli("--weights-dtype", "Another flag."))

    entry = EngineEntry("echo", "echo:", Clashing, lambda name, o: _EchoEngine(name, o), "test engine")
    monkeypatch.setitem(reg._ENGINES, "echo", entry)
    with pytest.raises(ValueError, match="option 'dtype' has two command-line flags"):
        reg.option_flags()


# -- chat models: one registry and one spec grammar for every model (issue 24 item 2) -----------------

def test_every_engine_loads_a_chat_model_from_the_same_options_as_its_judges() -> None:
    """The three built-in entries load judges and chat models; a chat model's options are checked by
    the same class (an option of another engine is the same clear error, before anything loads)."""
    from pollux.engine.chat import HttpChat

    assert all(e.chat_loader is not None for e in reg.engines())
    chat = reg.load_chat("openai:some-model", {"base_url": "http://127.0.0.1:9/v1", "concurrency": 3})
    try:
        assert isinstance(chat, HttpChat) and chat.name == "some-model" and chat.client.concurrency == 3
    finally:
        chat.close()
    with pytest.raises(OptionsError, match=r"option 'dtype' does not apply to openai: judges"):
        reg.load_chat("openai:some-model", {"dtype": "bfloat16"})


def test_a_local_chat_model_writes_replies_with_token_counts(tiny_generative_path: Path) -> None:
    chat = reg.load_chat(str(tiny_generative_path), {"device": "cpu", "dtype": "float32", "batch_size": 2})
    requests = [{"key": f"k{i}", "messages": [{"role": "user", "content": f"Вопрос {i}"}], "temperature": 0.0,
                 "max_tokens": 4, "seed": 0} for i in range(3)]
    replies = chat.generate(requests)
    assert [r["key"] for r in replies] == ["k0", "k1", "k2"] and all(r["error"] is None for r in replies)
    assert all(r["prompt_tokens"] > 0 and 0 < r["completion_tokens"] <= 4 for r in replies)
    assert sorted(r["key"] for r in chat.stream(requests)) == ["k0", "k1", "k2"]
