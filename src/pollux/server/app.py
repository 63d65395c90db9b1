"""The FastAPI app of `pollux serve`: a judge behind HTTP.

Endpoints:

* `POST /v1/judge` — one item (the JSON object itself, or `{"item": {...}}`) or a batch
  (`{"items": [...]}`) with POLLUX field names → `{"verdicts": [...]}` with the head score.
* `POST /v1/chat/completions` — OpenAI-compatible: the user message is a rendered judge prompt
  (the POLLUX sections in any of the layouts clients send: `pollux.server.prompt_parse`); the
  reply text is the judge's (`full`) or its score alone (`score`, for MERA-style clients that read
  a bare number), by the server's `--reply` or the model name (`NAME:score`, `NAME:full`:
  `pollux.server.replies`), whole or as server-sent events (`stream: true`); a non-standard
  `pollux` object carries `head_score`, `score`, the rationale (and
  `expected_score` / `score_probs` when the judge computes them). With `logprobs: true` (and
  `top_logprobs: K`) the choice carries OpenAI-format `logprobs.content` — each generated
  token's raw log-probability (temperature 1), bytes and K most likely alternatives — for
  judges whose engine records them (in-process): a local OpenAI-compatible server that returns
  logprobs, e.g. for `openai:` judges' expected scores.
* `GET /v1/models` — the served judge, under each of its names; `GET /healthz` (never needs the key); `GET /metrics`.

Every item of every request goes through one `MicroBatcher`, so concurrent requests are judged
together. Errors are JSON in OpenAI's shape, `{"error": {"message", "type", "code"}}`, with a
message that says what was wrong: 400 malformed JSON, 401 missing/wrong key, 404 unknown model,
413 body or batch too large, 422 an item is missing fields or has one that is not usable text
(empty, a lone surrogate, NUL; the message names the item and the field), 429 queue full
(+ Retry-After), 499 (in /metrics only) the client went away before its answer, 408 a body (or,
at the protocol, headers) not received in time, 431 headers over the limit.

The app is assembled here; the endpoints are `pollux.server.routes`, the request bodies and their
checks `pollux.server.bodies`, the connection limits below the app `pollux.server.protocol`.
`/openapi.json` (key required, like every path but `/healthz`) describes the request bodies.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pollux.pairwise import check_generative
from pollux.server.batcher import MicroBatcher
from pollux.server.bodies import ApiError, request_schemas
from pollux.server.metrics import Metrics
from pollux.server.prompt_parse import prompt_patterns
from pollux.server.routes import Served, ServerConfig, router

__all__ = ["ApiError", "ServerConfig", "create_app", "error_response"]

log = logging.getLogger("pollux.server")

PUBLIC_PATHS = frozenset({"/healthz"})
# The web UI (`pollux serve --ui`) lives under this prefix and checks the same key itself: a browser
# navigating pages cannot send a bearer header, so the UI signs in once and keeps a session cookie.
UI_PREFIX = "/ui"
ENDPOINTS = frozenset({"/v1/judge", "/v1/chat/completions", "/v1/models", "/healthz", "/metrics", "/openapi.json"})


def error_response(status: int, message: str, type_: str = "invalid_request_error",
                   headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "code": status, **(extra or {})}}
    return JSONResponse(body, status_code=status, headers=headers)


def create_app(judge: Any, config: ServerConfig) -> FastAPI:
    """An app serving `judge` (anything with `judge_many`, normally a `pollux.judge.Judge`)."""
    config.models()  # a reply format that does not exist fails here, not at the first request
    if "{answer_2}" in config.template.text:  # side by side: a regression head has no pairwise output
        check_generative(judge)
    state = Served(judge=judge, config=config, patterns=prompt_patterns(config.template), metrics=Metrics(
        depth=lambda: state.batcher.depth if state.batcher else 0,
        in_flight=lambda: state.batcher.in_flight if state.batcher else 0,
    ))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.batcher = MicroBatcher(judge, batch_size=config.batch_size, max_wait_s=config.max_wait_ms / 1000,
                                     max_queue=config.max_queue, on_batch=state.metrics.observe_batch)
        state.batcher.start()
        yield
        await state.batcher.stop()  # uvicorn has already let in-flight requests finish; drain what is left

    app = FastAPI(title="pollux judge server", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.served, app.state.config, app.state.metrics = state, config, state.metrics
    app.include_router(router)
    app.add_middleware(Guard, config=config, metrics=state.metrics)
    app.add_middleware(BodyTimeout, timeout_s=config.body_timeout_s)  # outside `Guard`: its 408 is metered
    app.add_exception_handler(ApiError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.message, exc.type, exc.headers, exc.extra)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    if exc.status_code == 404:
        message = f"no such endpoint: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    return error_response(exc.status_code, message)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's description, with the request bodies the endpoints read themselves
    (`pollux.server.bodies.request_schemas`)."""
    schema = FastAPI.openapi(app)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for path, (body, defs) in request_schemas().items():
        components.update(defs)
        schema["paths"][path]["post"]["requestBody"] = {
            "required": True, "content": {"application/json": {"schema": body}}}
    return schema


class Guard:
    """ASGI middleware: metrics for every request, the key and the body size checked before any
    handler runs, and a JSON 500 (the server stays up) for a bug."""

    def __init__(self, app: ASGIApp, config: ServerConfig, metrics: Metrics) -> None:
        self.app, self.config, self.metrics = app, config, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        path = request.url.path
        endpoint = path if path in ENDPOINTS else "other"
        started, status = time.perf_counter(), 500
        response_started = False

        async def metered_send(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
            await send(message)

        try:
            refusal = _precheck(request, self.config)
            await (refusal or self.app)(scope, receive, metered_send)
        except Exception as e:  # a bug: still a JSON error, and the server stays up
            log.exception("unhandled error on %s %s", request.method, path)
            if not response_started:
                await error_response(500, f"internal server error: {type(e).__name__}", "server_error")(
                    scope, receive, metered_send)
        finally:
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        self.metrics.requests.labels(endpoint, str(status)).inc()
        if status in (401, 413, 429):
            self.metrics.rejected.labels(str(status)).inc()


class BodyTimeout:
    """ASGI middleware: a request's body must arrive within `timeout_s` of its first read, else
    408. A client that sends its headers and then a body slowly (or never) would otherwise hold
    its request, and its connection, for ever; the header phase is `pollux.server.protocol`'s."""

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app, self.timeout_s = app, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        complete = False

        async def timed_receive() -> Message:
            nonlocal deadline, complete
            if complete:  # the body is in: what is left is the disconnect, waited for as long as it takes
                return await receive()
            deadline = deadline if deadline is not None else loop.time() + self.timeout_s
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise ApiError(408, f"request body not received within {self.timeout_s:g} s") from None
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, timed_receive, send)


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
