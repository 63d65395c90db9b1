"""The executor workers that ask synth's LLMs — endpoints, local checkpoints, vLLM — for text.

A *request* is a row with `key`, `messages` (chat), `temperature`, `max_tokens` and `seed`; a chat
model turns a batch of requests into replies (`text`, token counts, or an `error`). The chat models
themselves are not synth's: every model pollux talks to is named by the engine registry's one spec
grammar and loaded by it (`pollux.engine.registry.load_chat`; the three backends live in
`pollux.engine.chat`): `openai:NAME` (with base_url), `vllm:PATH` or a checkpoint folder. An
endpoint model gets one client per process, shared by all worker threads (`shared_chat`).

`ChatWorker` is the executor's worker factory (picklable: a dataclass of plain values): it builds a
chat model once per worker thread / Ray actor. With `validate="verdict"` it checks each reply with
pollux's own parser against the row's rubric scale and asks again (up to `max_attempts`), so the
teacher's retries happen where the client lives, not in the driver.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pollux.engine.chat import ChatModel, HttpChat, checked_text, shared_chat
from pollux.engine.reask import reask_sampling
from pollux.engine.registry import OpenAIOptions, get_engine, load_chat
from pollux.records import text_problem
from pollux.scales import check_level, check_score, parse_feedback, parse_result, parse_scale, result_problem
from pollux.synth.config import ModelConfig

Row = dict[str, Any]


def make_backend(model: ModelConfig) -> ChatModel:
    """The model's chat model, through the engine registry; an endpoint model's is this process's
    shared one (see module doc)."""
    if model.kind == "openai":
        options = get_engine("openai").validate(model.chat_options())
        assert isinstance(options, OpenAIOptions)
        return shared_chat(model.path, options)
    return load_chat(model.model, model.chat_options())


def check_verdict(text: str, rubrics: str) -> tuple[float | None, str | None]:
    """(score, None) for a reply with a rationale and one complete `[RESULT] n [END]` whose score is one
    of the rubric's levels, else (None, reason) — pollux's own parser and scale check, as for judge
    verdicts. Reasons: invalid_text, unparseable, several_results, out_of_scale, not_a_level,
    no_rationale."""
    if text_problem(text):  # NUL / lone surrogate: unusable for storage and training
        return None, "invalid_text"
    score = parse_result(text)
    if score is None:
        return None, "several_results" if result_problem(text) else "unparseable"
    scale = parse_scale(rubrics)
    if not check_score(score, scale)[0]:
        return None, "out_of_scale"
    if not check_level(score, scale)[0]:  # between the rubric's levels (1.5 on 0/1/2): no rating it defines
        return None, "not_a_level"
    if not parse_feedback(text):  # `pollux train` needs a rationale to learn from
        return None, "no_rationale"
    return score, None


@dataclass(frozen=True)
class ChatWorker:
    """Worker factory for `pollux.executor.map_batches` (see module doc)."""

    model: ModelConfig
    validate: str | None = None  # None: any text; "verdict": [FEEDBACK] … [RESULT] n [END] within the row's scale
    max_attempts: int = 1

    def __call__(self) -> Callable[[list[Row]], list[Row]]:
        backend = make_backend(self.model)
        if self.validate == "verdict":
            return lambda batch: [checked_text(r) for r in _verdicts(backend, batch, self.max_attempts)]
        return lambda batch: [checked_text({**r, "attempts": 1}) for r in backend.generate(batch)]


def _verdicts(backend: ChatModel, batch: list[Row], max_attempts: int) -> list[Row]:
    """Ask the teacher; ask again (new seed, some temperature) while a reply is unparseable or out of
    scale; after `max_attempts`, the row comes back with `drop` = the last reason. Over HTTP each row
    retries on its own (no round waits for the slowest row); local models retry in rounds (batches)."""
    if isinstance(backend, HttpChat):
        async def all_rows() -> list[Row]:
            return list(await asyncio.gather(*(_verdict_http(backend, r, max_attempts) for r in batch)))

        return backend.run(all_rows())
    done: list[Row] = []
    pending = batch
    for attempt in range(max_attempts):
        retry = []
        requests = [_attempt(r, attempt) for r in pending]
        for request, reply in zip(pending, backend.generate(requests), strict=True):
            result = _judged(request, reply, attempt, max_attempts)
            if result is None:
                retry.append(request)
            else:
                done.append(result)
        pending = retry
        if not pending:
            break
    return done


async def _verdict_http(backend: HttpChat, request: Row, max_attempts: int) -> Row:
    for attempt in range(max_attempts):
        result = _judged(request, await backend.one(_attempt(request, attempt)), attempt, max_attempts)
        if result is not None:
            return result
    raise AssertionError("unreachable: the last attempt always gives a result")


def _attempt(request: Row, attempt: int) -> Row:
    """The request for attempt n (`pollux.engine.reask`: after the first, a new seed and some temperature)."""
    temperature, seed = reask_sampling(request["temperature"], request["seed"], attempt)
    return {**request, "seed": seed, "temperature": temperature}


def _judged(request: Row, reply: Row, attempt: int, max_attempts: int) -> Row | None:
    """The finished row for this reply, or None to ask again."""
    if reply["error"] is not None:  # the endpoint failed for good: not the teacher's fault, not retried here
        return {**reply, "attempts": attempt + 1, "drop": None}
    score, reason = check_verdict(reply["text"], request["rubrics"])
    if score is not None:
        return {**reply, "attempts": attempt + 1, "drop": None, "score": score,
                "rationale": parse_feedback(reply["text"])}
    if attempt + 1 == max_attempts:
        return {**reply, "attempts": attempt + 1, "drop": reason, "score": None, "rationale": None}
    return None
