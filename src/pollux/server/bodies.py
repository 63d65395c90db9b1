"""Request bodies of `pollux serve`: pydantic models, the size-capped read, and messages that
name the item and the field.

The models are what the OpenAPI description shows (`/openapi.json`) and what every body is checked
against. The endpoints read bodies themselves rather than as FastAPI body parameters, for three
reasons FastAPI's own parsing would lose: the size cap holds for chunked bodies too (no
Content-Length), `/v1/judge` checks a batch item by item (one bad item gets an error verdict, the
others are judged), and errors read as the rest of pollux's (`items[3]: missing field(s) rubrics`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from starlette.requests import ClientDisconnect, Request

from pollux.records import JudgeItem, RecordError, json_problem

# Not an HTTP status a client ever reads (it has gone): nginx's code for "client closed the
# request", so /metrics tells a client that disconnected apart from a server error.
CLIENT_CLOSED = 499
# OpenAI allows 20; a pollux server allows more (the whole scale of a tiny or uncertain judge may
# lie beyond the top 20), at a cost only to the request that asks.
MAX_TOP_LOGPROBS = 1000


class ApiError(Exception):
    """An HTTP error with an OpenAI-shaped JSON body."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error",
                 headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.headers, self.extra = status, message, type_, headers, extra


class JudgeItemBody(BaseModel):
    """One `/v1/judge` item: the POLLUX field names (other keys are ignored). Strict: a number is
    not a string."""

    model_config = ConfigDict(strict=True, extra="ignore")

    instruction: str
    answer: str
    criteria_name: str
    rubrics: str
    reference_answer: str | None = None
    meta: dict[str, Any] | None = Field(None, description="free identifiers, echoed in the verdict")


class JudgeOne(BaseModel):
    """`{"item": {...}}`: one item, wrapped."""

    item: JudgeItemBody


class JudgeBatch(BaseModel):
    """`{"items": [...]}`: a batch; each item is checked alone."""

    items: list[JudgeItemBody] = Field(min_length=1)


# A `/v1/judge` body, as the OpenAPI description shows it: an item, `{"item": ...}` or `{"items": [...]}`.
JudgeRequest: TypeAdapter[JudgeItemBody | JudgeOne | JudgeBatch] = TypeAdapter(JudgeItemBody | JudgeOne | JudgeBatch)


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    role: str
    content: Any = None  # a string or text parts; checked by `_message_text` for 400-level messages


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    include_usage: bool | None = None


class ChatRequest(BaseModel):
    """A `/v1/chat/completions` body: what the server reads. Sampling fields (`temperature`,
    `max_tokens`, …) are accepted and ignored: decoding is fixed when the server starts, so a
    client's `max_tokens` never cuts a judge's text, and never cuts a score (docs/serving.md)."""

    model_config = ConfigDict(strict=True, extra="ignore")

    model: str = Field(description="the served name (its reply format), NAME:score or NAME:full; see /v1/models")
    messages: list[ChatMessage]
    stream: bool | None = Field(None, description="server-sent events of chat.completion.chunk")
    stream_options: StreamOptions | None = None
    n: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    # Any: fields the server ignores must never be what refuses a request
    temperature: Any = Field(None, description="ignored: decoding is the server's (--temperature)")
    max_tokens: Any = Field(None, description="ignored: the judge writes up to --max-new-tokens; a score is never cut")


@dataclass(frozen=True)
class ChatAsk:
    """What a chat-completion request asks: the prompt, the reply format, streaming, logprobs."""

    prompt: str
    model: str
    reply: str  # "full" or "score" (pollux.server.replies)
    stream: bool = False
    include_usage: bool = False
    top_logprobs: int | None = None  # None: no logprobs


async def read_json(request: Request, limit: int) -> Any:
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


def judge_rows(body: Any, max_items: int) -> tuple[list[Any], bool]:
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


_EXPECTED = {"string_type": "a string", "dict_type": "a JSON object", "list_type": "a list",
             "bool_type": "true or false", "int_type": "an integer"}


def validation_message(error: ValidationError) -> str:
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


def check_required_text(item: JudgeItem) -> None:
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
        check_required_text(item)
    except ValidationError as e:
        raise RecordError(f"{where}: {validation_message(e)}") from None
    except RecordError as e:
        raise RecordError(f"{where}: {e}") from None
    return item


def chat_request(body: Any, models: Mapping[str, str]) -> ChatAsk:
    """What a chat-completion request asks (`models`: each served name → its reply format), after
    checking what we cannot honour."""
    if not isinstance(body, dict):
        raise ApiError(422, f"expected a JSON object, got {type(body).__name__}")
    try:
        request = ChatRequest.model_validate(body)
    except ValidationError as e:
        raise ApiError(422, validation_message(e)) from None
    if request.model not in models:
        names = ", ".join(repr(name) for name in models)
        raise ApiError(404, f"the model {request.model!r} is not served here; this server serves {names}",
                       type_="not_found_error")
    if request.n not in (None, 1):
        raise ApiError(400, "only n=1 is supported")
    if not request.messages:
        raise ApiError(422, "field 'messages' is empty (a list with one user message)")
    if len(request.messages) != 1 or request.messages[0].role != "user":
        raise ApiError(400, "a POLLUX judge reads exactly one user message (no system or assistant messages)")
    reply, top = models[request.model], _top_logprobs(request)
    if top is not None and request.stream:
        raise ApiError(400, "logprobs are not streamed; send 'stream': false with 'logprobs': true")
    if top is not None and reply == "score":
        raise ApiError(400, f"logprobs belong to the judge's text, and the model {request.model!r} replies with "
                            "the score alone; ask the full reply (the model NAME:full) for logprobs")
    return ChatAsk(prompt=_message_text(request.messages[0].content), model=request.model, reply=reply,
                   stream=bool(request.stream), top_logprobs=top,
                   include_usage=bool(request.stream_options and request.stream_options.include_usage))


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


def request_schemas() -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """For each POST endpoint: (its JSON body's schema, the component schemas it refers to), in
    OpenAPI's `#/components/schemas/` namespace — what `/openapi.json` describes."""
    ref = "#/components/schemas/{model}"
    out: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for path, schema in (("/v1/judge", JudgeRequest.json_schema(ref_template=ref)),
                         ("/v1/chat/completions", ChatRequest.model_json_schema(ref_template=ref))):
        defs = schema.pop("$defs", {})
        if "title" in schema and schema.get("type") == "object":  # a model itself: refer to it too
            defs[schema["title"]] = schema
            schema = {"$ref": ref.format(model=schema["title"])}
        out[path] = (schema, defs)
    return out
