"""The endpoints of `pollux serve`, as one APIRouter over the server's shared state (`Served`).

Every item of every request goes through one `MicroBatcher`, so concurrent requests are judged
together; a client that goes away while its items wait is noticed, and its items are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from pollux.prompts import PromptTemplate
from pollux.records import JudgeItem, RecordError, text_problem
from pollux.server.batcher import MicroBatcher, QueueFull, Result, ShuttingDown
from pollux.server.bodies import (
    CLIENT_CLOSED,
    ApiError,
    chat_prompt,
    check_required_text,
    judge_rows,
    parse_item,
    read_json,
)
from pollux.server.metrics import CONTENT_TYPE, Metrics
from pollux.server.prompt_parse import PromptError, item_from_prompt
from pollux.verdicts import Verdict


@dataclass
class ServerConfig:
    model_name: str
    api_key: str | None = None
    batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 1024  # items waiting for the engine; more → 429
    max_body_bytes: int = 8 * 1024 * 1024
    max_items: int = 256  # items in one /v1/judge request
    body_timeout_s: float = 60.0  # a request's whole body must arrive within this; else 408
    template: PromptTemplate = field(default_factory=PromptTemplate)


@dataclass
class Served:
    """What the endpoints share: the judge, its settings, metrics, and the batcher (which exists
    only while the app runs: it is made in the app's lifespan, on the serving event loop)."""

    judge: Any  # anything with `judge_many`, normally a `pollux.judge.Judge`
    config: ServerConfig
    metrics: Metrics
    pattern: Any  # the compiled template pattern `item_from_prompt` reads chat prompts with
    batcher: MicroBatcher | None = None


def served(request: Request) -> Served:
    return request.app.state.served


State = Annotated[Served, Depends(served)]
router = APIRouter()


@router.get("/healthz")
async def healthz(state: State) -> dict[str, Any]:
    b, config = state.batcher, state.config
    return {"status": "ok", "model": config.model_name, "queue_depth": b.depth if b else 0,
            "in_flight": b.in_flight if b else 0, "max_queue": config.max_queue, "batch_size": config.batch_size}


@router.get("/metrics")
async def metrics_endpoint(state: State) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)


@router.get("/v1/models")
async def models(state: State) -> dict[str, Any]:
    return {"object": "list", "data": [
        {"id": state.config.model_name, "object": "model", "created": 0, "owned_by": "pollux",
         "kind": getattr(state.judge, "kind", None)}
    ]}


@router.post("/v1/judge")
async def judge_endpoint(request: Request, state: State) -> JSONResponse:
    """One item or a batch → verdicts in request order; a bad item gets an error verdict that
    names it, the others are judged (a request with nothing judgeable is a 422)."""
    rows, single = judge_rows(await read_json(request, state.config.max_body_bytes), state.config.max_items)
    items: list[JudgeItem | None] = []
    problems: dict[int, str] = {}
    for i, row in enumerate(rows):
        try:
            items.append(parse_item(row, "item" if single else f"items[{i}]"))
        except RecordError as e:
            items.append(None)
            problems[i] = str(e)
    if len(problems) == len(rows):  # nothing to judge: the request itself is wrong
        raise ApiError(422, "; ".join(problems[i] for i in sorted(problems))[:4000])
    judged = await _submit(request, state, [it for it in items if it is not None], None)
    verdicts = iter(verdict for verdict, _ in judged)
    out = [{**_verdict_dict(next(verdicts)), "key": item.key} if item is not None else _refused(row, problems[i])
           for i, (row, item) in enumerate(zip(rows, items, strict=True))]
    usage = {"prompt_tokens": sum(v["prompt_tokens"] for v in out),
             "completion_tokens": sum(v["completion_tokens"] for v in out)}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return JSONResponse({"object": "pollux.judgement", "model": state.config.model_name,
                         "verdicts": out, "usage": usage})


def _refused(row: Any, problem: str) -> dict[str, Any]:
    """The verdict of an item that could not be judged: its error, and its criterion's name when
    that is valid text (unusable text is not echoed back)."""
    name = row.get("criteria_name") if isinstance(row, dict) else None
    name = name if isinstance(name, str) and text_problem(name) is None else ""
    return {**_verdict_dict(Verdict(criteria_name=name, error=problem, invalid_reason=problem)), "key": None}


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, state: State) -> JSONResponse:
    """OpenAI-compatible: the user message is a rendered judge prompt; the reply is the judge's
    text, and a `pollux` object carries the scores (docs/serving.md)."""
    prompt, top_logprobs = chat_prompt(await read_json(request, state.config.max_body_bytes),
                                       state.config.model_name)
    if top_logprobs is not None and not _accepts(state.judge, "on_logprobs"):
        raise ApiError(400, "this judge's engine does not return logprobs (only in-process judges do); "
                            "send 'logprobs': false")
    try:
        item = item_from_prompt(prompt, state.pattern)
        check_required_text(item)
    except PromptError as e:
        raise ApiError(400, str(e)) from None
    except RecordError as e:  # the prompt's sections were found, but a field is unusable
        raise ApiError(422, f"messages[0].content: {e}") from None
    [(verdict, logprobs)] = await _submit(request, state, [item], top_logprobs)
    if verdict.error:
        raise ApiError(500, f"the judge failed on this prompt: {verdict.error}", type_="server_error")
    return JSONResponse(_chat_completion(verdict, logprobs, state.config.model_name))


def _chat_completion(verdict: Verdict, logprobs: list[dict[str, Any]] | None, model_name: str) -> dict[str, Any]:
    usage = {"prompt_tokens": verdict.prompt_tokens, "completion_tokens": verdict.completion_tokens,
             "total_tokens": verdict.prompt_tokens + verdict.completion_tokens}
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": verdict.raw_text},
                     "finish_reason": verdict.finish_reason or "stop",
                     "logprobs": None if logprobs is None else {"content": _clean(logprobs), "refusal": None}}],
        "usage": usage,
        "pollux": _clean({
            "head_score": verdict.head_score, "text_score": verdict.text_score, "score": verdict.score,
            "valid": verdict.valid, "invalid_reason": verdict.invalid_reason,
            "scale_min": verdict.scale_min, "scale_max": verdict.scale_max,
            "criteria_name": verdict.criteria_name, "rationale": verdict.rationale,
            "expected_score": verdict.expected_score, "score_probs": verdict.score_probs,
        }),
    }


def _accepts(judge: Any, hook: str) -> bool:
    """Whether the served judge's engine takes `hook` (a `pollux.judge.Judge`; others do not)."""
    accepts = getattr(judge, "accepts", None)
    return bool(accepts(hook)) if callable(accepts) else False


async def _submit(request: Request, state: Served, items: list[JudgeItem], top_logprobs: int | None) -> list[Result]:
    """The items' results, judged unless the client goes away first: then its queued items are
    dropped (the batcher skips cancelled entries) and the request ends as 499 in /metrics."""
    assert state.batcher is not None, "the app's lifespan makes the batcher before any request"
    submit = asyncio.ensure_future(state.batcher.submit_detailed(items, top_logprobs=top_logprobs))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({submit, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not submit.done():
        submit.cancel()  # its entries are cancelled in `submit_detailed`'s cleanup
        with contextlib.suppress(asyncio.CancelledError):
            await submit
        raise ApiError(CLIENT_CLOSED, f"the client disconnected before its {len(items)} item(s) were judged")
    try:
        results = submit.result()
    except QueueFull as e:
        raise ApiError(429, str(e), type_="rate_limit_error", headers={"Retry-After": str(e.retry_after)},
                       extra={"queue_depth": e.depth, "max_queue": e.max_queue}) from None
    except ShuttingDown as e:
        raise ApiError(503, str(e), type_="server_error", headers={"Retry-After": "5"}) from None
    state.metrics.observe_verdicts([verdict for verdict, _ in results])
    return results


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone. Called after the body was read, so the only message
    left to receive is the disconnect (uvicorn sends it when the connection closes)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _clean(value: Any) -> Any:
    """JSON cannot carry NaN/inf: a non-finite score becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _verdict_dict(verdict: Verdict) -> dict[str, Any]:
    return _clean(verdict.to_dict())
