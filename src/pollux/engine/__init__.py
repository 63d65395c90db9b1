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

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from pollux.records import JudgeItem
from pollux.verdicts import Verdict

# Called as each verdict completes, with the item's index in the input — lets callers store
# results before the whole call returns (resumable runs).
OnVerdict = Callable[[int, Verdict], None]


@dataclass(frozen=True)
class SamplingParams:
    """How the judge decodes. Greedy by default (temperature 0), as the official offline runs."""

    max_new_tokens: int = 1024
    min_new_tokens: int = 0  # end-of-turn tokens are suppressed until this many were generated
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be ≥ 1")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError("min_new_tokens must lie in [0, max_new_tokens]")
        if self.temperature < 0:
            raise ValueError("temperature must be ≥ 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must lie in (0, 1]")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

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
