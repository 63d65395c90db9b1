"""Engines: turn judge prompts into verdicts.

An engine (backend) takes `JudgeItem`s and returns one `Verdict` per item, in order. All of them
render prompts with `pollux.prompts` and build verdicts with `pollux.verdicts.make_verdict`, so
they differ only in how text (and the head score) is produced:

* `hf.TransformersEngine` — in-process transformers (CPU or GPU), batched, prefix-shared, the
  regression score taken in the generation pass.
* `openai_api` — any OpenAI-compatible server (vLLM, pollux serve, hosted APIs).
* `vllm_engine` — vLLM on GPUs (optional extra).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

from pollux.records import JudgeItem
from pollux.verdicts import Verdict

# Called as each verdict completes, with the item's index in the input — lets callers store
# results before the whole call returns (resumable runs).
OnVerdict = Callable[[int, Verdict], None]
# Called while an item is being generated, with its index and its text so far (whole characters
# only, never half a UTF-8 sequence) — lets callers stream the judge's output (`Judge.stream`).
OnText = Callable[[int, str], None]
# Called before an item's verdict is delivered, with its index and the OpenAI-format
# `logprobs.content` list of its generated tokens (see `TransformersEngine.judge_many`).
OnLogprobs = Callable[[int, list[dict[str, Any]]], None]


@dataclass(frozen=True)
class SamplingParams:
    """How the judge decodes.

    `temperature`, `top_p`, `top_k` and `repetition_penalty` default to None: "as the checkpoint
    says". An engine resolves them once, against the checkpoint's `generation_config.json`
    (`resolve`), with this precedence: **a value set here > the checkpoint's generation config >
    pollux's default** (greedy, top_p 1, top_k 0 = off, repetition_penalty 1 = off). That is what
    the model card's `model.generate(...)` does, so a checkpoint whose generation config sets e.g.
    `repetition_penalty: 1.05` is judged with it unless you override it. The checkpoint's
    temperature / top_p / top_k count only where it sets `do_sample: true` (as in `generate`);
    pass `temperature=0` to force greedy decoding whatever the checkpoint says.
    """

    # 0 = score-only (`-r` judges, in-process and gguf engines): no rationale; the head reads the
    # prompt's last token — an input the head was not trained on (docs/laptop.md measures the cost)
    max_new_tokens: int = 1024
    min_new_tokens: int = 0  # end-of-turn tokens are suppressed until this many were generated
    temperature: float | None = None  # 0 = greedy
    top_p: float | None = None
    top_k: int | None = None  # 0 = off
    repetition_penalty: float | None = None  # 1 = off; HF semantics (prompt + generated tokens)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError("max_new_tokens must be ≥ 0 (0: score-only)")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError("min_new_tokens must lie in [0, max_new_tokens]")
        if self.temperature is not None and self.temperature < 0:
            raise ValueError("temperature must be ≥ 0")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError("top_p must lie in (0, 1]")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError("top_k must be ≥ 0")
        if self.repetition_penalty is not None and self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be > 0")

    @property
    def greedy(self) -> bool:
        return not self.temperature

    def resolve(self, generation_config: Any = None) -> SamplingParams:
        """Every field concrete: set here > `generation_config` (a transformers `GenerationConfig`,
        or a dict of `generation_config.json`'s fields; None = the checkpoint has none) > pollux's
        default."""
        # Only what the checkpoint sets itself: transformers 4.x fills unset fields with its own
        # defaults (top_k=50), which are not the checkpoint's word; `to_diff_dict` leaves them out.
        explicit = (generation_config.to_diff_dict() if hasattr(generation_config, "to_diff_dict")
                    else dict(generation_config or {}))

        def ckpt(name: str) -> Any:
            return explicit.get(name)

        sampling_ckpt = bool(ckpt("do_sample"))
        temperature = self.temperature
        if temperature is None:
            temperature = float(ckpt("temperature") or 1.0) if sampling_ckpt else 0.0
        return replace(
            self,
            temperature=temperature,
            top_p=self.top_p if self.top_p is not None else float(ckpt("top_p") or 1.0),
            top_k=self.top_k if self.top_k is not None else int(ckpt("top_k") or 0),
            repetition_penalty=(self.repetition_penalty if self.repetition_penalty is not None
                                else float(ckpt("repetition_penalty") or 1.0)),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Engine(Protocol):
    """What `pollux.judge.Judge` needs from a backend."""

    name: str  # identifies the judge in stores and reports
    kind: str  # "regression", "generative" or "api"

    def judge_many(self, items: Sequence[JudgeItem], on_verdict: OnVerdict | None = None) -> list[Verdict]: ...

    def describe(self) -> dict[str, Any]:
        """Everything that changes the verdicts (model, template, sampling, …), for run configs."""
        ...


# What an in-process (local checkpoint) judge imports. They are the `local` extra, not the core:
# `openai:` judges, meta-eval, report and the UI never load them (a core install is ~1 GB smaller).
LOCAL_EXTRA_MODULES = ("torch", "transformers", "safetensors", "tokenizers")


class ExtraMissing(ImportError, RuntimeError):
    """An optional part of pollux is used without its extra installed; the message names the extra.

    An ImportError for code that expects one, and a RuntimeError so that the verbs, which report a
    judge that cannot load as one line (not a traceback), report this one the same way."""


def require_local_extra(purpose: str = "loading a local checkpoint") -> Any:
    """`torch`, once torch and the rest of the `local` extra import; otherwise an `ExtraMissing`
    that says which extra to install (instead of `No module named 'torch'` from deep inside the
    engine). A package that is installed but fails to import is not hidden: its error propagates."""
    missing = []
    for name in LOCAL_EXTRA_MODULES:  # transformers' top level is lazy: importing them here is cheap
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            missing.append(name)
    if missing:
        raise ExtraMissing(f"{purpose} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                           "not installed: install pollux's `local` extra: pip install 'pollux[local]' "
                           "(openai: judges need none of it)", name=missing[0])
    return importlib.import_module("torch")


def check_score_only(sampling: SamplingParams, kind: str, judge: str) -> None:
    """`max_new_tokens=0` (score-only) asks a `-r` judge's head for the score; a generative judge's
    score is in the text it would not write, so it is refused before anything runs."""
    if sampling.max_new_tokens == 0 and kind != "regression":
        raise ValueError(f"{judge}: max_new_tokens=0 (score-only) needs a -r judge (a regression head); "
                         "a generative judge's score is in its text")


def end_of_turn_ids(*sources: Any) -> list[int]:
    """The ids that end a reply, from each source given (a generation config's `eos_token_id`, the
    tokenizer's): an id, a list of ids, or None. Every engine stops on the same set
    (torch-free: the gguf engine needs no `local` extra)."""
    ids: set[int] = set()
    for source in sources:
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(int(i) for i in source)
    return sorted(ids)
