"""What `/v1/chat/completions` answers: the reply formats, the served model names, and the
chat completion — whole, or as the server-sent events of `stream=true`.

Two reply formats (docs/serving.md, "Reply formats"):

* `full` — the content is the judge's own text (`[FEEDBACK] … [RESULT] n [END]`, or a `-r` judge's
  rationale), as OpenAI-compatible judges answer.
* `score` — the content is the verdict's score and nothing else, for clients that read a bare
  number (MERA's POLLUX tasks, the lighteval and DeepEval integrations): an integer as an integer
  (`2`), a regression head's float exactly as the head gave it (Python's shortest repr, which reads
  back to the same float: `1.3721506595611572`), never rounded to a scale level, since that would
  be another score. A verdict without a score is `nan`: not a number any judge gives, so it is
  neither read as a real score nor taken from a digit of the rationale.

Either way the `pollux` side object carries the score, the rationale and the judge's raw text. A
server has a default format (`--reply`); a client that sends only `model` picks one per request
with the model name: `NAME` (the default), `NAME:score` or `NAME:full`, all listed in `/v1/models`.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from typing import Any

from pollux.verdicts import Verdict

REPLY_MODES = ("full", "score")
NO_SCORE = "nan"


def model_modes(model_name: str, default: str) -> dict[str, str]:
    """Each model name a client may send → the reply format it gets, in `/v1/models` order."""
    if default not in REPLY_MODES:
        raise ValueError(f"reply format {default!r} is not one of {', '.join(REPLY_MODES)}")
    return {model_name: default, **{f"{model_name}:{mode}": mode for mode in ("score", "full")}}


def score_text(score: float | None) -> str:
    """A score as the `score` format writes it: exact, an integral value without `.0`; `nan` for none."""
    if score is None or not math.isfinite(score):
        return NO_SCORE
    return str(int(score)) if float(score).is_integer() else repr(float(score))


def reply_content(verdict: Verdict, mode: str) -> str:
    return score_text(verdict.score) if mode == "score" else verdict.raw_text


def clean(value: Any) -> Any:
    """JSON cannot carry NaN/inf: a non-finite score becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v) for v in value]
    return value


def side_object(verdict: Verdict, mode: str) -> dict[str, Any]:
    """The non-standard `pollux` object: the scores, the rationale, the judge's text, the format."""
    return clean({
        "head_score": verdict.head_score, "text_score": verdict.text_score, "score": verdict.score,
        "valid": verdict.valid, "invalid_reason": verdict.invalid_reason,
        "scale_min": verdict.scale_min, "scale_max": verdict.scale_max,
        "criteria_name": verdict.criteria_name, "rationale": verdict.rationale, "raw_text": verdict.raw_text,
        "expected_score": verdict.expected_score, "score_probs": verdict.score_probs, "reply": mode,
    })


def usage(verdict: Verdict) -> dict[str, int]:
    return {"prompt_tokens": verdict.prompt_tokens, "completion_tokens": verdict.completion_tokens,
            "total_tokens": verdict.prompt_tokens + verdict.completion_tokens}


def completion(verdict: Verdict, logprobs: list[dict[str, Any]] | None, model: str, mode: str) -> dict[str, Any]:
    """A whole `chat.completion`. Logprobs belong to the judge's text, so the `score` format has none."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply_content(verdict, mode)},
                     "finish_reason": verdict.finish_reason or "stop",
                     "logprobs": None if logprobs is None else {"content": clean(logprobs), "refusal": None}}],
        "usage": usage(verdict),
        "pollux": side_object(verdict, mode),
    }


class ChunkWriter:
    """`chat.completion.chunk` events of one streamed reply, as OpenAI's SDK reads them: a first
    chunk with the role, one per text delta, one with the finish reason (and the `pollux` object),
    with `include_usage` one with no choices and the usage, then `data: [DONE]`."""

    def __init__(self, model: str, mode: str, include_usage: bool) -> None:
        self.id, self.created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        self.model, self.mode, self.include_usage = model, mode, include_usage

    def _event(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        chunk = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                 "choices": choices, **extra}
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode()

    def delta(self, text: str, role: bool = False) -> bytes:
        delta = {"role": "assistant", "content": text} if role else {"content": text}
        return self._event([{"index": 0, "delta": delta, "finish_reason": None, "logprobs": None}])

    def end(self, verdict: Verdict) -> Iterable[bytes]:
        yield self._event([{"index": 0, "delta": {}, "finish_reason": verdict.finish_reason or "stop",
                            "logprobs": None}], pollux=side_object(verdict, self.mode))
        if self.include_usage:
            yield self._event([], usage=usage(verdict))
        yield b"data: [DONE]\n\n"

    @staticmethod
    def error(status: int, message: str) -> bytes:
        """An error after the stream has begun (the status is sent already): the SDK raises it."""
        body = {"error": {"message": message, "type": "server_error", "code": status}}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode()

    async def whole(self, verdict: Verdict) -> AsyncIterator[bytes]:
        """The stream of a reply judged already (the `score` format, or a judge that cannot stream)."""
        yield self.delta("", role=True)
        yield self.delta(reply_content(verdict, self.mode))
        for event in self.end(verdict):
            yield event
