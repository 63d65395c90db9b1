"""Jobs: items turned into tokenised prompts with a new-token budget, shared by local engines.

Every local engine tokenises exactly what the model card feeds — the chat-formatted POLLUX prompt,
tokenised whole — and applies the same context policy, so it lives here once:

* a prompt that leaves no room for a new token gets an error verdict (the others go on);
* otherwise the job may generate `min(max_new_tokens, context - prompt length)` tokens, so that
  prompt + generated text always fits the context (the model card's second forward reads it whole).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pollux.engine import OnVerdict
from pollux.prompts import PromptTemplate, chat_text
from pollux.records import JudgeItem
from pollux.verdicts import error_verdict


@dataclass
class Job:
    index: int  # position in the caller's list
    item: JudgeItem
    ids: list[int]  # the full chat-formatted prompt, tokenised whole
    max_new: int  # max new tokens for this job (capped by the context)


def prepare_jobs(
    items: Sequence[JudgeItem],
    *,
    tokenizer: Any,
    template: PromptTemplate,
    context: int,
    max_new_tokens: int,
    judge: str,
    done: OnVerdict,
) -> list[Job]:
    """One job per item that fits the context; `done(i, error verdict)` for each that does not."""
    texts = [chat_text(tokenizer, template.render(it)) for it in items]
    all_ids = tokenizer(texts)["input_ids"] if texts else []
    jobs = []
    for i, (item, ids) in enumerate(zip(items, all_ids, strict=True)):
        room = context - len(ids)
        if room < 1:
            done(i, error_verdict(
                item,
                f"prompt has {len(ids)} tokens but the judge's context is {context} tokens "
                "(shorten the answer or reference)",
                judge=judge, prompt_tokens=len(ids),
            ))
            continue
        jobs.append(Job(i, item, list(ids), min(max_new_tokens, room)))
    return jobs
