"""Jobs: items turned into tokenised prompts with a new-token budget, and their delivery — shared
by the local engines (in-process and vLLM).

Every local engine tokenises exactly what the model card feeds — the chat-formatted POLLUX prompt,
tokenised whole — and applies the same context policy, so it lives here once:

* a prompt that leaves no room for a new token gets an error verdict (the others go on);
* otherwise the job may generate `min(max_new_tokens, context - prompt length)` tokens, so that
  prompt + generated text always fits the context (the model card's second forward reads it whole).

Delivery is shared too: each verdict reaches the caller exactly once, a failed batch is rerun item
by item, and an exception raised by the caller's `on_verdict` is not an engine failure — it
propagates at once, unretried (`Delivery`, `run_isolating_failures`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pollux.engine import OnLogprobs, OnText, OnVerdict
from pollux.prompts import PromptTemplate, chat_text
from pollux.records import JudgeItem
from pollux.verdicts import Verdict, error_verdict

log = logging.getLogger(__name__)


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


# --------------------------------------------------------------------------------------------
# Delivery: each verdict exactly once; the caller's errors are not engine errors
# --------------------------------------------------------------------------------------------


class CallbackError(Exception):
    """The caller's `on_verdict` raised (e.g. its database failed): not an engine failure, so
    never retried; `judge_many` re-raises the caller's own exception (`caller_errors_unwrapped`)."""


class Delivery:
    """Hands each verdict to its slot and to the caller's `on_verdict`, exactly once per item.

    Shared by the local engines so that a retry after a failed batch can never call `on_verdict`
    twice for one item, and so that an exception from `on_verdict` is told apart from an engine
    failure (it is wrapped in `CallbackError` and propagates unretried)."""

    def __init__(self, n_items: int, on_verdict: OnVerdict | None, *, on_text: OnText | None = None,
                 on_logprobs: OnLogprobs | None = None, top_logprobs: int | None = None):
        self.verdicts: list[Verdict | None] = [None] * n_items
        self.on_verdict = on_verdict
        self.on_text = on_text  # progress of items still generating (streaming)
        # per-token logprobs with this many alternatives, just before an item's verdict
        self.on_logprobs = on_logprobs if top_logprobs is not None else None
        self.top_logprobs = top_logprobs if on_logprobs is not None else None

    def text(self, index: int, text: str) -> None:
        """An item's text so far, to the caller's `on_text` (its exceptions are the caller's)."""
        if self.on_text is not None and not self.delivered(index):
            _call_caller(self.on_text, index, text)

    def logprobs(self, index: int, content: list[dict[str, Any]]) -> None:
        """An item's token logprobs, to the caller's `on_logprobs`, before its verdict."""
        if self.on_logprobs is not None and not self.delivered(index):
            _call_caller(self.on_logprobs, index, content)

    def delivered(self, index: int) -> bool:
        return self.verdicts[index] is not None

    def __call__(self, index: int, verdict: Verdict) -> None:
        if self.delivered(index):
            return
        self.verdicts[index] = verdict
        if self.on_verdict is not None:
            _call_caller(self.on_verdict, index, verdict)

    def all(self) -> list[Verdict]:
        """Every verdict, in input order (all items must have been delivered)."""
        missing = [i for i, v in enumerate(self.verdicts) if v is None]
        if missing:
            raise RuntimeError(f"engine bug: no verdict for items {missing[:10]}")
        return self.verdicts  # type: ignore[return-value]


def _call_caller(callback: Callable[..., None], *args: Any) -> None:
    try:
        callback(*args)
    except Exception as e:
        raise CallbackError() from e


@contextmanager
def caller_errors_unwrapped() -> Iterator[None]:
    """Around a `judge_many` body: the caller's own `on_verdict` exception comes out unchanged."""
    try:
        yield
    except CallbackError as e:
        raise e.__cause__ from None  # type: ignore[misc]


def run_isolating_failures(
    jobs: Sequence[Job],
    run_together: Callable[[], None],
    run_alone: Callable[[Job], None],
    done: Delivery,
    *,
    judge: str,
) -> None:
    """Run `jobs` together (`run_together`, which delivers through `done`); if that raises an
    engine error (e.g. out of memory, a rejected request), run each job not yet delivered alone,
    so one bad item never costs the others their verdicts. A job that fails alone gets an error
    verdict naming the exception. A `CallbackError` (the caller's `on_verdict` failed) is not an
    engine error: it propagates at once, nothing is rerun."""
    try:
        run_together()
        return
    except CallbackError:
        raise
    except Exception as exc:
        pending = [j for j in jobs if not done.delivered(j.index)]
        if len(jobs) == 1:
            _fail(pending, exc, done, judge)
            return
        log.warning("a batch of %d failed (%r); retrying item by item", len(jobs), exc)
    for job in pending:
        try:
            run_alone(job)
        except CallbackError:
            raise
        except Exception as exc:
            _fail([job], exc, done, judge)


def _fail(jobs: Sequence[Job], exc: Exception, done: Delivery, judge: str) -> None:
    for j in jobs:
        if not done.delivered(j.index):
            done(j.index, error_verdict(j.item, f"engine error: {exc!r}", judge=judge, prompt_tokens=len(j.ids)))
