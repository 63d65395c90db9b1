"""Choosing the next token from a step's logits, as `generate` would, and when a row stops.

Logits are processed in `generate`'s order: repetition penalty, end-of-turn suppression
(`min_new_tokens`), then temperature / top-k / top-p (or greedy argmax). `sampling` is always a
resolved `SamplingParams` (the caller's values, then the checkpoint's, then pollux's defaults).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pollux.engine import SamplingParams


def sampling_generator(device: torch.device, sampling: SamplingParams) -> torch.Generator | None:
    """The seeded generator for a batch, on the device the logits live on: `torch.multinomial`
    rejects a generator on another device (a CPU generator with CUDA logits fails every item)."""
    if sampling.greedy:
        return None
    return torch.Generator(device=device).manual_seed(sampling.seed)


def seen_tokens(prompts: Sequence[Sequence[int]], vocab: int, device: torch.device,
                sampling: SamplingParams) -> torch.Tensor | None:
    """For the repetition penalty: a [rows, vocab] mask of the tokens in each row's prompt (the
    caller adds generated tokens as they come). None when the penalty is off (no work per step)."""
    if sampling.repetition_penalty == 1.0:
        return None
    seen = torch.zeros(len(prompts), vocab, dtype=torch.bool, device=device)
    for k, ids in enumerate(prompts):
        seen[k, torch.tensor(ids, device=device)] = True
    return seen


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Transformers' repetition penalty (`RepetitionPenaltyLogitsProcessor`): the logit of every
    token already in the row's prompt + generated text is divided by `penalty` when positive and
    multiplied by it when negative. `seen` is a [rows, vocab] boolean mask of those tokens."""
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalised, logits)


def choose_tokens(logits: torch.Tensor, sampling: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """Greedy argmax, or temperature / top-k / top-p sampling (`sampling` resolved)."""
    if sampling.greedy:
        return logits.argmax(dim=-1)
    assert sampling.temperature is not None and sampling.top_p is not None and sampling.top_k is not None
    logits = logits.float() / sampling.temperature
    if sampling.top_k > 0:
        kth = torch.topk(logits, min(sampling.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        drop = probs.cumsum(-1) - probs > sampling.top_p  # keep the smallest set reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def next_tokens(logits: torch.Tensor, sampling: SamplingParams, generator: torch.Generator | None, *,
                seen: torch.Tensor | None, generated: Sequence[int], eos_ids: Sequence[int]) -> list[int]:
    """Each row's next token from its float logits [rows, vocab] (modified in place).
    `seen`: the rows' repetition-penalty masks (or None); `generated`: tokens each row has so far
    (end of turn is suppressed below `min_new_tokens`)."""
    if seen is not None:
        assert sampling.repetition_penalty is not None
        logits = apply_repetition_penalty(logits, seen, sampling.repetition_penalty)
    for k, n in enumerate(generated):
        if n < sampling.min_new_tokens and eos_ids:
            logits[k, list(eos_ids)] = float("-inf")
    return [int(t) for t in choose_tokens(logits, sampling, generator).tolist()]


def stop_reason(token: int, generated: int, max_new: int, eos_ids: Sequence[int]) -> str | None:
    """Why a row stops after choosing `token` as its `generated`-th token, or None: "stop" at an
    end-of-turn token, "length" at its budget (`max_new_tokens`, capped by the context)."""
    if token in eos_ids:
        return "stop"
    if generated >= max_new:
        return "length"
    return None
