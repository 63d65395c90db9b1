"""The endpoints of `pollux serve`, as one APIRouter over the server's shared state (`Served`).

Every item of every request goes through one `MicroBatcher`, so concurrent requests are judged
together; a client that goes away while its items wait is noticed, and its items are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from pollux.prompts import PromptTemplate
from pollux.records import JudgeItem, RecordError, text_problem
from pollux.server.batcher import MicroBatcher, QueueFull, Result, ShuttingDown
from pollux.server.bodies import (
    CLIENT_CLOSED,
    ApiError,
    chat_request,
    check_required_text,
    judge_rows,
    parse_item,
    read_json,
)
from pollux.server.metrics import CONTENT_TYPE, Metrics
from pollux.server.prompt_parse import PromptError, PromptPatterns, item_from_prompt
from pollux.server.replies import ChunkWriter, clean, completion, model_modes
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
    reply: str = "full"  # the chat reply's format for the plain model name: "full" or "score"

    def models(self) -> dict[str, str]:
        """Each model name a chat client may send → the reply format it gets."""
        return model_modes(self.model_name, self.reply)


@dataclass
class Served:
    """What the endpoints share: the judge, its settings, metrics, and the batcher (which exists
    only while the app runs: it is made in the app's lifespan, on the serving event loop)."""

    judge: Any  # anything with `judge_many`, normally a `pollux.judge.Judge`
    config: ServerConfig
    metrics: Metrics
    patterns: PromptPatterns  # how `item_from_prompt` reads chat prompts in the server's template
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
    """The served judge under each of its names: NAME (the server's reply format), NAME:score and
    NAME:full; `reply` says which format the name gets."""
    kind = getattr(state.judge, "kind", None)
    return {"object": "list", "data": [
        {"id": name, "object": "model", "created": 0, "owned_by": "pollux", "kind": kind, "reply": mode}
        for name, mode in state.config.models().items()
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
async def chat_completions(request: Request, state: State) -> Response:
    """OpenAI-compatible: the user message is a rendered judge prompt; the reply is the judge's
    text or its score alone (the reply format of the model name), whole or streamed, and a
    `pollux` object carries the scores (docs/serving.md). Every check comes before a stream opens."""
    ask = chat_request(await read_json(request, state.config.max_body_bytes), state.config.models())
    if ask.top_logprobs is not None and not _accepts(state.judge, "on_logprobs"):
        raise ApiError(400, "this judge's engine does not return logprobs (only in-process judges do); "
                            "send 'logprobs': false")
    try:
        item = item_from_prompt(ask.prompt, state.patterns)
        check_required_text(item)
    except PromptError as e:
        raise ApiError(400, str(e)) from None
    except RecordError as e:  # the prompt's sections were found, but a field is unusable
        raise ApiError(422, f"messages[0].content: {e}") from None
    writer = ChunkWriter(ask.model, ask.reply, ask.include_usage)
    if ask.stream and ask.reply == "full" and callable(getattr(state.judge, "astream", None)):
        return _event_stream(_stream_text(state, item, writer))
    [(verdict, logprobs)] = await _submit(request, state, [item], ask.top_logprobs)
    if verdict.error:
        raise ApiError(500, f"the judge failed on this prompt: {verdict.error}", type_="server_error")
    if ask.stream:  # the score comes at the end of judging: nothing to stream before it
        return _event_stream(writer.whole(verdict))
    return JSONResponse(completion(verdict, logprobs, ask.model, ask.reply))


def _event_stream(events: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _stream_text(state: Served, item: JudgeItem, writer: ChunkWriter) -> AsyncIterator[bytes]:
    """The judge's text as it is generated (`Judge.astream`, as the web UI's judge live), then the
    end of the reply. A streamed judgement is not micro-batched; a client that goes away stops it
    at its next token (Starlette cancels this generator, which closes the judge's stream)."""
    yield writer.delta("", role=True)
    try:
        async with contextlib.aclosing(state.judge.astream(item)) as parts:
            async for part in parts:
                if isinstance(part, str):
                    yield writer.delta(part)
                    continue
                state.metrics.observe_verdicts([part])
                if part.error:
                    yield writer.error(500, f"the judge failed on this prompt: {part.error}")
                    return
                for event in writer.end(part):
                    yield event
    except Exception as e:  # the status is sent already: the error goes into the stream
        yield writer.error(500, f"the judge failed on this prompt: {type(e).__name__}: {e}")


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


def _verdict_dict(verdict: Verdict) -> dict[str, Any]:
    return clean(verdict.to_dict())
