"""The FastAPI app of `pollux serve`: a judge behind HTTP.

Endpoints:

* `POST /v1/judge` — one item (the JSON object itself, or `{"item": {...}}`) or a batch
  (`{"items": [...]}`) with POLLUX field names → `{"verdicts": [...]}` with the head score.
* `POST /v1/chat/completions` — OpenAI-compatible: the user message is a rendered judge prompt;
  the reply text is the judge's, and a non-standard `pollux` object carries `head_score` (and
  `expected_score` / `score_probs` when the judge computes them). With `logprobs: true` (and
  `top_logprobs: K`) the choice carries OpenAI-format `logprobs.content` — each generated
  token's raw log-probability (temperature 1), bytes and K most likely alternatives — for
  judges whose engine records them (in-process): a local OpenAI-compatible server that returns
  logprobs, e.g. for `openai:` judges' expected scores.
* `GET /v1/models` — the served judge; `GET /healthz` (never needs the key); `GET /metrics`.

Every item of every request goes through one `MicroBatcher`, so concurrent requests are judged
together. Errors are JSON in OpenAI's shape, `{"error": {"message", "type", "code"}}`, with a
message that says what was wrong: 400 malformed JSON, 401 missing/wrong key, 404 unknown model,
413 body or batch too large, 422 an item is missing fields or has one that is not usable text
(empty, a lone surrogate, NUL; the message names the item and the field), 429 queue full
(+ Retry-After), 499 (in /metrics only) the client went away mid-body.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from pollux.prompts import PromptTemplate
from pollux.records import JudgeItem, RecordError, json_problem, text_problem
from pollux.server.batcher import MicroBatcher, QueueFull, Result, ShuttingDown
from pollux.server.metrics import CONTENT_TYPE, Metrics
from pollux.server.prompt_parse import PromptError, item_from_prompt, template_pattern
from pollux.verdicts import Verdict

log = logging.getLogger("pollux.server")

PUBLIC_PATHS = frozenset({"/healthz"})
# The web UI (`pollux serve --ui`) lives under this prefix and checks the same key itself: a browser
# navigating pages cannot send a bearer header, so the UI signs in once and keeps a session cookie.
UI_PREFIX = "/ui"
# Not an HTTP status a client ever reads (it has gone): nginx's code for "client closed the
# request", so /metrics tells a client that disconnected mid-body apart from a server error.
CLIENT_CLOSED = 499
# OpenAI allows 20; a pollux server allows more (the whole scale of a tiny or uncertain judge may
# lie beyond the top 20), at a cost only to the request that asks.
MAX_TOP_LOGPROBS = 1000
ENDPOINTS = frozenset({"/v1/judge", "/v1/chat/completions", "/v1/models", "/healthz", "/metrics"})


@dataclass
class ServerConfig:
    model_name: str
    api_key: str | None = None
    batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 1024  # items waiting for the engine; more → 429
    max_body_bytes: int = 8 * 1024 * 1024
    max_items: int = 256  # items in one /v1/judge request
    template: PromptTemplate = field(default_factory=PromptTemplate)


class ApiError(Exception):
    """An HTTP error with an OpenAI-shaped JSON body."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error",
                 headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.headers, self.extra = status, message, type_, headers, extra


def error_response(status: int, message: str, type_: str = "invalid_request_error",
                   headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "code": status, **(extra or {})}}
    return JSONResponse(body, status_code=status, headers=headers)


def create_app(judge: Any, config: ServerConfig) -> FastAPI:
    """An app serving `judge` (anything with `judge_many`, normally a `pollux.judge.Judge`)."""
    batcher_box: dict[str, MicroBatcher] = {}
    pattern = template_pattern(config.template)

    def batcher() -> MicroBatcher:
        return batcher_box["b"]

    metrics = Metrics(
        depth=lambda: batcher_box["b"].depth if "b" in batcher_box else 0,
        in_flight=lambda: batcher_box["b"].in_flight if "b" in batcher_box else 0,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        b = MicroBatcher(judge, batch_size=config.batch_size, max_wait_s=config.max_wait_ms / 1000,
                         max_queue=config.max_queue, on_batch=metrics.observe_batch)
        batcher_box["b"] = b
        b.start()
        yield
        await b.stop()  # uvicorn has already let in-flight requests finish; drain what is left

    app = FastAPI(title="pollux judge server", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.config = config
    app.state.metrics = metrics

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        """Metrics for every request; the key and the body size checked before any handler runs."""
        started = time.perf_counter()
        path = request.url.path
        endpoint = path if path in ENDPOINTS else "other"
        try:
            response = _precheck(request, config)
            if response is None:
                response = await call_next(request)
        except Exception as e:  # a bug: still a JSON error, and the server stays up
            log.exception("unhandled error on %s %s", request.method, path)
            response = error_response(500, f"internal server error: {type(e).__name__}", "server_error")
        finally:
            metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        if response.status_code in (401, 413, 429):
            metrics.rejected.labels(str(response.status_code)).inc()
        return response

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.type, exc.headers, exc.extra)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        return error_response(exc.status_code, message)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        b = batcher_box.get("b")
        return {"status": "ok", "model": config.model_name, "queue_depth": b.depth if b else 0,
                "in_flight": b.in_flight if b else 0, "max_queue": config.max_queue,
                "batch_size": config.batch_size}

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [
            {"id": config.model_name, "object": "model", "created": 0, "owned_by": "pollux",
             "kind": getattr(judge, "kind", None)}
        ]}

    @app.post("/v1/judge")
    async def judge_endpoint(request: Request) -> JSONResponse:
        body = await _read_json(request, config.max_body_bytes)
        rows, single = _judge_rows(body, config.max_items)
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
        good = [it for it in items if it is not None]
        verdicts = iter(await _submit(request, batcher(), good, metrics))
        out: list[dict[str, Any]] = []
        for i, (row, item) in enumerate(zip(rows, items, strict=True)):
            if item is None:
                name = row.get("criteria_name") if isinstance(row, dict) else None
                name = name if isinstance(name, str) and text_problem(name) is None else ""  # echo valid text only
                out.append({**_verdict_dict(Verdict(criteria_name=name, error=problems[i],
                                                    invalid_reason=problems[i])), "key": None})
            else:
                out.append({**_verdict_dict(next(verdicts)), "key": item.key})
        usage = {
            "prompt_tokens": sum(v["prompt_tokens"] for v in out),
            "completion_tokens": sum(v["completion_tokens"] for v in out),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return JSONResponse({"object": "pollux.judgement", "model": config.model_name,
                             "verdicts": out, "usage": usage})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> JSONResponse:
        body = await _read_json(request, config.max_body_bytes)
        prompt, top_logprobs = _chat_prompt(body, config.model_name)
        if top_logprobs is not None and not _accepts(judge, "on_logprobs"):
            raise ApiError(400, "this judge's engine does not return logprobs (only in-process judges do); "
                                "send 'logprobs': false")
        try:
            item = item_from_prompt(prompt, pattern)
            _check_required_text(item)
        except PromptError as e:
            raise ApiError(400, str(e)) from None
        except RecordError as e:  # the prompt's sections were found, but a field is unusable
            raise ApiError(422, f"messages[0].content: {e}") from None
        [(verdict, logprobs)] = await _submit_detailed(request, batcher(), [item], metrics, top_logprobs)
        if verdict.error:
            raise ApiError(500, f"the judge failed on this prompt: {verdict.error}", type_="server_error")
        usage = {"prompt_tokens": verdict.prompt_tokens, "completion_tokens": verdict.completion_tokens,
                 "total_tokens": verdict.prompt_tokens + verdict.completion_tokens}
        return JSONResponse({
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": config.model_name,
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
        })

    return app


def _precheck(request: Request, config: ServerConfig) -> Response | None:
    """401 without the right bearer token; 413 when Content-Length already says too big."""
    path = request.url.path
    under_ui = path == UI_PREFIX or path.startswith(UI_PREFIX + "/")
    if config.api_key and path not in PUBLIC_PATHS and not under_ui:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return error_response(401, "missing API key: send 'Authorization: Bearer <key>'",
                                  "authentication_error", {"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(token.strip().encode(), config.api_key.encode()):
            return error_response(401, "invalid API key", "authentication_error", {"WWW-Authenticate": "Bearer"})
    length = request.headers.get("content-length")
    if length is not None:
        try:
            size = int(length)
        except ValueError:
            return error_response(400, f"bad Content-Length header: {length!r}")
        if size > config.max_body_bytes:
            return error_response(413, f"request body of {size} bytes exceeds the limit of "
                                       f"{config.max_body_bytes} bytes")
    return None


async def _read_json(request: Request, limit: int) -> Any:
    """The JSON body, read with a size cap (also for chunked bodies without Content-Length)."""
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(CLIENT_CLOSED, f"the client disconnected after {size} bytes of the body") from None
    raw = b"".join(chunks)
    if not raw.strip():
        raise ApiError(400, "empty request body: expected a JSON object")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ApiError(400, f"request body is not UTF-8: {e}") from None
    except json.JSONDecodeError as e:
        raise ApiError(400, f"request body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply") from None


def _judge_rows(body: Any, max_items: int) -> tuple[list[Any], bool]:
    """(rows, single) from a /v1/judge body: `{"items": [...]}`, `{"item": {...}}` or the item itself."""
    if not isinstance(body, dict):
        raise ApiError(422, f"expected a JSON object (an item, or {{\"items\": [...]}}), got {type(body).__name__}")
    if "items" in body:
        rows = body["items"]
        if not isinstance(rows, list):
            raise ApiError(422, f"'items' must be a list of objects, got {type(rows).__name__}")
        if not rows:
            raise ApiError(422, "'items' is empty: nothing to judge")
        if len(rows) > max_items:
            raise ApiError(413, f"{len(rows)} items in one request exceeds the limit of {max_items}; "
                                "split the batch")
        return rows, False
    if "item" in body:
        return [body["item"]], True
    return [body], True


class JudgeItemBody(BaseModel):
    """One `/v1/judge` item: the POLLUX field names (other keys are ignored). Strict: a number is
    not a string."""

    model_config = ConfigDict(strict=True, extra="ignore")

    instruction: str
    answer: str
    criteria_name: str
    rubrics: str
    reference_answer: str | None = None
    meta: dict[str, Any] | None = None


_EXPECTED = {"string_type": "a string", "dict_type": "a JSON object", "list_type": "a list",
             "bool_type": "true or false", "int_type": "an integer"}


def _validation_message(error: ValidationError) -> str:
    """A pydantic error in the words the rest of pollux uses (`missing field 'model'`,
    `missing field(s) a, b`, `field 'meta' must be a JSON object, got int`)."""
    errors = error.errors()
    missing = [".".join(map(str, e["loc"])) for e in errors if e["type"] == "missing"]
    if len(missing) == 1:
        return f"missing field {missing[0]!r}"
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    first = errors[0]
    name = ".".join(map(str, first["loc"]))
    if first["type"] in _EXPECTED:
        return f"field {name!r} must be {_EXPECTED[first['type']]}, got {type(first['input']).__name__}"
    return f"field {name!r}: {first['msg']}"


def _check_required_text(item: JudgeItem) -> None:
    """What `pollux evaluate` refuses, the server refuses too: nothing to judge is not a judgement."""
    for name in ("instruction", "answer"):
        if not getattr(item, name).strip():
            raise RecordError(f"field {name!r} is empty")


def parse_item(row: Any, where: str) -> JudgeItem:
    """A `JudgeItem` from one item of a request body; `RecordError` naming `where` and the field."""
    if not isinstance(row, dict):
        raise RecordError(f"{where}: expected a JSON object, got {type(row).__name__}")
    try:
        body = JudgeItemBody.model_validate(row)
        problem = json_problem(body.meta)
        if problem is not None:
            raise RecordError(f"field 'meta': {problem}")
        item = JudgeItem(instruction=body.instruction, answer=body.answer, criteria_name=body.criteria_name,
                         rubrics=body.rubrics, reference_answer=body.reference_answer or "", meta=body.meta or {})
        _check_required_text(item)
    except ValidationError as e:
        raise RecordError(f"{where}: {_validation_message(e)}") from None
    except RecordError as e:
        raise RecordError(f"{where}: {e}") from None
    return item


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    role: str
    content: Any = None  # a string or text parts; checked by `_message_text` for 400-level messages


class ChatRequest(BaseModel):
    """A `/v1/chat/completions` body: what the server reads. Sampling fields (`temperature`,
    `max_tokens`, …) are accepted and ignored: decoding is fixed when the server starts."""

    model_config = ConfigDict(strict=True, extra="ignore")

    model: str
    messages: list[ChatMessage]
    stream: bool | None = None
    n: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None


def _chat_prompt(body: Any, model_name: str) -> tuple[str, int | None]:
    """The judge prompt of a chat-completion request and how many top logprobs it asks per token
    (None: no logprobs), after checking what we cannot honour."""
    if not isinstance(body, dict):
        raise ApiError(422, f"expected a JSON object, got {type(body).__name__}")
    try:
        request = ChatRequest.model_validate(body)
    except ValidationError as e:
        raise ApiError(422, _validation_message(e)) from None
    if request.model != model_name:
        raise ApiError(404, f"the model {request.model!r} is not served here; this server serves {model_name!r}",
                       type_="not_found_error")
    if request.stream:
        raise ApiError(400, "streaming is not supported by pollux serve; send 'stream': false")
    if request.n not in (None, 1):
        raise ApiError(400, "only n=1 is supported")
    if not request.messages:
        raise ApiError(422, "field 'messages' is empty (a list with one user message)")
    if len(request.messages) != 1 or request.messages[0].role != "user":
        raise ApiError(400, "a POLLUX judge reads exactly one user message (no system or assistant messages)")
    return _message_text(request.messages[0].content), _top_logprobs(request)


def _top_logprobs(request: ChatRequest) -> int | None:
    """OpenAI's rule: `top_logprobs` (0…) needs `logprobs: true`; `logprobs` alone means 0."""
    if request.top_logprobs is not None and not request.logprobs:
        raise ApiError(400, "'top_logprobs' needs 'logprobs': true")
    if not request.logprobs:
        return None
    k = request.top_logprobs or 0
    if not 0 <= k <= MAX_TOP_LOGPROBS:
        raise ApiError(400, f"'top_logprobs' must lie in [0, {MAX_TOP_LOGPROBS}], got {k}")
    return k


def _accepts(judge: Any, hook: str) -> bool:
    """Whether the served judge's engine takes `hook` (a `pollux.judge.Judge`; others do not)."""
    accepts = getattr(judge, "accepts", None)
    return bool(accepts(hook)) if callable(accepts) else False


def _message_text(content: Any) -> str:
    """A message's text: a string, or OpenAI's content parts `[{"type": "text", "text": "..."}]`."""
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if len(texts) != len(content) or not all(isinstance(t, str) for t in texts):
            raise ApiError(400, "only text content parts are supported")
        return "".join(t for t in texts if isinstance(t, str))
    if not isinstance(content, str):
        raise ApiError(422, "the user message's 'content' must be a string")
    return content


async def _submit(request: Request, batcher: MicroBatcher, items: list[JudgeItem], metrics: Metrics) -> list[Verdict]:
    return [verdict for verdict, _ in await _submit_detailed(request, batcher, items, metrics, None)]


async def _submit_detailed(request: Request, batcher: MicroBatcher, items: list[JudgeItem], metrics: Metrics,
                           top_logprobs: int | None) -> list[Result]:
    """The items' results, judged unless the client goes away first: then its queued items are
    dropped (the batcher skips cancelled entries) and the request ends as 499 in /metrics."""
    submit = asyncio.ensure_future(batcher.submit_detailed(items, top_logprobs=top_logprobs))
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
    metrics.observe_verdicts([verdict for verdict, _ in results])
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
