"""Batched `generate` for judges the prefix-shared forward does not cover (architectures other than
Qwen2, or Qwen2 with sliding-window attention): generative judges only, no prefix sharing, no head.

`generate` takes one `max_new_tokens` per call, so the engine calls it once per token budget; the
prompts are left-padded; the checkpoint's resolved sampling settings are passed as `generate`
reads them; a streamer sends each row's text to the caller's `on_text` as it grows.
"""

from __future__ import annotations

from typing import Any

import torch

from pollux.engine import SamplingParams
from pollux.engine.jobs import Delivery, Job
from pollux.engine.tokens import IncrementalText


def generate(model: Any, tokenizer: Any, jobs: list[Job], budget: int, *, sampling: SamplingParams,
             eos_ids: list[int], done: Delivery, output_logits: bool) -> tuple[list[list[int]], Any]:
    """Generate up to `budget` tokens for each job in one call. Returns each row's generated tokens
    (padded after an end of turn) and, with `output_logits`, `generate`'s raw logits per step
    (before any processor), else None."""
    device = next(model.parameters()).device
    longest = max(len(j.ids) for j in jobs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    ids = torch.tensor([[pad] * (longest - len(j.ids)) + j.ids for j in jobs], device=device)
    mask = torch.tensor([[0] * (longest - len(j.ids)) + [1] * len(j.ids) for j in jobs], device=device)
    s = sampling
    out = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=budget,
        min_new_tokens=min(s.min_new_tokens, budget) or None, do_sample=not s.greedy,
        temperature=s.temperature if not s.greedy else None, top_p=s.top_p if not s.greedy else None,
        top_k=(s.top_k or None) if not s.greedy else None, repetition_penalty=s.repetition_penalty,
        eos_token_id=eos_ids, pad_token_id=pad,
        streamer=RowsStreamer(jobs, tokenizer, eos_ids, done) if done.on_text else None,
        return_dict_in_generate=True, output_logits=output_logits,
    )
    return out.sequences[:, longest:].tolist(), (out.logits if output_logits else None)


class RowsStreamer:
    """A `generate` streamer (the `put`/`end` protocol of transformers' `BaseStreamer`) that sends
    each row's text so far to the caller's `on_text`, whole characters only. A hook that raises
    (a closed `Judge.stream`) stops `generate` at that step."""

    def __init__(self, jobs: list[Job], tokenizer: Any, eos_ids: list[int], done: Delivery):
        self.jobs = jobs
        self.texts = [IncrementalText(tokenizer) for _ in jobs]
        self.stopped = [False] * len(jobs)
        self.eos = set(eos_ids)
        self.done = done
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate's first call hands over the prompts
            self.prompt_seen = True
            return
        for b, tok in enumerate(value.reshape(-1).tolist()):
            if self.stopped[b] or tok in self.eos:
                self.stopped[b] = True
                continue
            if self.texts[b].add(int(tok)):
                self.done.text(self.jobs[b].index, self.texts[b].text)

    def end(self) -> None:
        pass
