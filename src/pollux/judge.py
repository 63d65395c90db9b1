"""The Python API: `Judge.from_pretrained(path)` and `judge.judge(item)` / `judge.judge_many(items)`.

`Judge` is a thin shell over an engine (see `pollux.engine`): it accepts items as `JudgeItem`s
or as dicts with POLLUX column names, and returns `Verdict`s in input order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pollux.engine import Engine, OnVerdict, SamplingParams
from pollux.prompts import PromptTemplate
from pollux.records import JudgeItem
from pollux.verdicts import Verdict

ItemLike = JudgeItem | Mapping[str, Any]


def as_item(item: ItemLike, where: str = "item") -> JudgeItem:
    return item if isinstance(item, JudgeItem) else JudgeItem.from_dict(dict(item), where=where)


class Judge:
    def __init__(self, engine: Engine):
        self.engine = engine

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        *,
        dtype: str = "auto",
        device: str = "auto",
        template: PromptTemplate | None = None,
        sampling: SamplingParams | None = None,
        batch_size: int = 32,
        max_batch_tokens: int = 65_536,
        share_prefix: bool = True,
    ) -> Judge:
        """Load a judge checkpoint from a local folder into the in-process engine."""
        from pollux.engine.hf import TransformersEngine

        return cls(
            TransformersEngine.from_pretrained(
                path,
                dtype=dtype,
                device=device,
                template=template or PromptTemplate(),
                sampling=sampling or SamplingParams(),
                batch_size=batch_size,
                max_batch_tokens=max_batch_tokens,
                share_prefix=share_prefix,
            )
        )

    @classmethod
    def from_spec(cls, spec: str, **options: Any) -> Judge:
        """`openai:MODEL` (with `base_url=...`) for an OpenAI-compatible server, `vllm:PATH` for
        the vLLM engine, otherwise a local checkpoint path."""
        if spec.startswith("openai:"):
            from pollux.engine.openai_api import OpenAIEngine

            return cls(OpenAIEngine(model=spec.removeprefix("openai:"), **options))
        if spec.startswith("vllm:"):
            from pollux.engine.vllm_engine import VLLMEngine

            return cls(VLLMEngine.from_pretrained(spec.removeprefix("vllm:"), **options))
        return cls.from_pretrained(spec, **options)

    @property
    def name(self) -> str:
        return self.engine.name

    @property
    def kind(self) -> str:
        return self.engine.kind

    def describe(self) -> dict[str, Any]:
        return self.engine.describe()

    def judge(self, item: ItemLike) -> Verdict:
        return self.judge_many([item])[0]

    def judge_many(self, items: Iterable[ItemLike], on_verdict: OnVerdict | None = None) -> list[Verdict]:
        """Judge all items (batched inside the engine); verdicts come back in input order."""
        prepared = [as_item(it, where=f"item {i}") for i, it in enumerate(items)]
        return self.engine.judge_many(prepared, on_verdict=on_verdict)
