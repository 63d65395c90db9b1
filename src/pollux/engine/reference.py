"""The model card's method, as a reference for parity tests and benchmarks.

One item at a time: `generate` on the chat-formatted prompt, then a second full forward over
prompt + generated ids, reading `regr_output` at the last position. pollux's engine must give
the same greedy text and the same score (within float tolerance) without that second pass.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from pollux.prompts import PromptTemplate, chat_text
from pollux.records import JudgeItem


@torch.inference_mode()
def model_card_judge(
    model: Any,
    tokenizer: Any,
    item: JudgeItem,
    *,
    max_new_tokens: int,
    min_new_tokens: int = 0,
    template: PromptTemplate | None = None,
) -> dict[str, Any]:
    """Judge one item the model card's way; returns text, score, token counts and time."""
    started = time.perf_counter()
    text = chat_text(tokenizer, (template or PromptTemplate()).render(item))
    inputs = tokenizer([text], return_tensors="pt").to(model.device)
    sequence_ids = model.generate(
        **inputs, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens or None, do_sample=False
    )
    prompt_len = inputs["input_ids"].shape[1]
    generated = sequence_ids[0][prompt_len:]
    score = None
    if hasattr(model, "regression_head"):
        score = model(input_ids=sequence_ids).regr_output.item()
    return {
        "text": tokenizer.decode(generated, skip_special_tokens=True),
        "score": score,
        "prompt_tokens": prompt_len,
        "completion_tokens": int(generated.shape[0]),
        # the second forward re-encodes the whole sequence
        "prefilled_tokens": prompt_len + (int(sequence_ids.shape[1]) if score is not None else 0),
        "time_s": time.perf_counter() - started,
    }
