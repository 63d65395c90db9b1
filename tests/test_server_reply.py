"""Reply formats of `pollux serve`'s chat route (issue 19 item 1): `--reply score|full`, the
`NAME:score` / `NAME:full` models, prompt variants, streaming, and a spoofed X-Forwarded-For.

A real uvicorn server on 127.0.0.1 (as `pollux serve` builds it) in a thread, with a scripted
judge whose verdict depends on the instruction, so each reply case is exact; the OpenAI SDK is the
client where the test is about what SDK users get. The real engine behind a real `pollux serve`
process is tests/test_mera_protocol.py's and tests/test_server.py's.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import uvicorn

from pollux.prompts import MODEL_CARD_TEMPLATE, PromptTemplate
from pollux.records import JudgeItem
from pollux.server.app import ServerConfig, create_app
from pollux.server.launch import free_port
from pollux.server.run import uvicorn_config
from pollux.verdicts import Verdict, make_verdict
from test_server_edges import wait_until

openai = pytest.importorskip("openai")

RUBRICS = "0: плохо\n\n1: средне\n\n2: хорошо"
HEAD = 1.3721506595611572
FULL_TEXT = "[FEEDBACK] Ответ верный, хотя 2 детали упущены. [RESULT] 1 [END]"


class ScriptedJudge:
    """The verdict is chosen by the instruction: `head` → a -r verdict with a float head score,
    `noscore` → a text without `[RESULT]`, else a generative verdict scoring 1."""

    kind = "scripted"

    def __init__(self) -> None:
        self.seen: list[JudgeItem] = []

    def judge_many(self, batch: list[JudgeItem]) -> list[Verdict]:
        self.seen.extend(batch)
        return [self._one(it) for it in batch]

    def _one(self, item: JudgeItem) -> Verdict:
        if item.instruction == "head":
            return make_verdict(item, "Ответ на 2 из 10 вопросов", head_score=HEAD)
        if item.instruction == "noscore":
            return make_verdict(item, "[FEEDBACK] оценка 2 была бы", finish_reason="length")
        return make_verdict(item, FULL_TEXT, finish_reason="stop")


@contextmanager
def running(reply: str = "full", app: Any = None) -> Iterator[tuple[str, ScriptedJudge]]:
    judge = ScriptedJudge()
    app = app or create_app(judge, ServerConfig(model_name="j", batch_size=1, max_wait_ms=0, reply=reply))
    port = free_port()
    server = uvicorn.Server(uvicorn_config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="pollux-test-server", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, "the server started")
        yield f"http://127.0.0.1:{port}", judge
    finally:
        server.should_exit = True
        thread.join(30)


def prompt(instruction: str = "Сколько будет 2+2?", template: str | None = None) -> str:
    item = JudgeItem(instruction=instruction, answer="4", criteria_name="Правильность", rubrics=RUBRICS)
    return PromptTemplate(text=template).render(item) if template else PromptTemplate().render(item)


def chat(url: str, content: str, model: str = "j", **kw: Any) -> Any:
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}],
                                          temperature=0, max_tokens=512, **kw)


def test_score_mode_replies_with_the_score_alone() -> None:
    """`--reply score`: the content is the verdict's score and nothing else — an integer as an
    integer, a head's float exactly as the head gave it (it reads back to the same float); the
    rationale and the full text stay in the `pollux` object."""
    with running("score") as (url, _):
        generative, head = chat(url, prompt()), chat(url, prompt("head"))
    assert generative.choices[0].message.content == "1"
    assert float(head.choices[0].message.content) == HEAD and head.choices[0].message.content == repr(HEAD)
    side = generative.model_extra["pollux"]
    assert side["score"] == 1 and side["reply"] == "score" and side["raw_text"] == FULL_TEXT
    assert side["rationale"] == "Ответ верный, хотя 2 детали упущены."


def test_a_verdict_without_a_score_replies_nan_not_a_digit_of_its_text() -> None:
    """No score (here: the text was cut before `[RESULT]`): the content is `nan` — never a number
    a judge could give, never a digit of the rationale; the side object says why."""
    with running("score") as (url, _):
        r = chat(url, prompt("noscore"))
    assert r.choices[0].message.content == "nan"
    side = r.model_extra["pollux"]
    assert side["score"] is None and side["valid"] is False and side["invalid_reason"]
    assert r.choices[0].finish_reason == "length"


def test_the_mode_per_request_through_the_model_name() -> None:
    """`/v1/models` lists NAME (the server's mode), NAME:score and NAME:full; a client that sends
    only a model name picks the reply format with it."""
    with running("full") as (url, _):
        models = httpx.get(url + "/v1/models").json()["data"]
        assert [(m["id"], m["reply"]) for m in models] == [("j", "full"), ("j:score", "score"), ("j:full", "full")]
        assert chat(url, prompt()).choices[0].message.content == FULL_TEXT
        assert chat(url, prompt(), model="j:score").choices[0].message.content == "1"
        r = httpx.post(url + "/v1/chat/completions", json={"model": "j:nothing", "messages": [
            {"role": "user", "content": prompt()}]})
        assert r.status_code == 404 and "'j', 'j:score', 'j:full'" in r.json()["error"]["message"]


@pytest.mark.parametrize("variant", ["default", "trailing newline", "no blank lines", "card", "card no newline",
                                     "two trailing newlines"])
def test_every_prompt_variant_clients_send_is_read_as_the_same_item(variant: str) -> None:
    """The POLLUX template with or without blank lines between sections, with or without a
    trailing newline (MERA: blank lines and a trailing newline), and the card's template: all read
    back as the same item, which the judge then sees in the server's own template."""
    base = prompt()
    texts = {
        "default": base,
        "trailing newline": base + "\n",  # MERA's layout
        "no blank lines": base.replace("\n\n###", "\n###"),
        "card": prompt(template=MODEL_CARD_TEMPLATE),
        "card no newline": prompt(template=MODEL_CARD_TEMPLATE).rstrip("\n"),
        "two trailing newlines": base + "\n\n",
    }
    with running("score") as (url, judge):
        assert chat(url, texts[variant]).choices[0].message.content == "1"
    [seen] = judge.seen
    assert (seen.instruction, seen.reference_answer, seen.answer, seen.criteria_name, seen.rubrics) == (
        "Сколько будет 2+2?", "", "4", "Правильность", RUBRICS)


@pytest.mark.parametrize("content", ["Оцени ответ: 2+2=4", "### Задание для оценки:\nвопрос\n### Ответ для оценки:\n4",
                                     prompt().replace("### Критерий оценки:", "### Критерий:")])
def test_a_prompt_that_is_not_a_pollux_prompt_is_a_400(content: str) -> None:
    with running("score") as (url, judge), pytest.raises(openai.BadRequestError, match="not a POLLUX judge prompt"):
        chat(url, content)
    assert judge.seen == []


@pytest.mark.parametrize(("mode", "want"), [("score", "1"), ("full", FULL_TEXT)])
def test_stream_is_server_sent_events_the_sdk_reads(mode: str, want: str) -> None:
    """`stream=true`: chunks the OpenAI SDK consumes; their deltas make the same content as the
    non-streamed reply, and the last chunk carries the finish reason and the `pollux` object."""
    with running(mode) as (url, _):
        chunks = list(chat(url, prompt(), stream=True, stream_options={"include_usage": True}))
        whole = chat(url, prompt())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want == whole.choices[0].message.content
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == "stop"
    assert finals[0].model_extra["pollux"]["score"] == 1
    assert chunks[-1].usage is not None and not chunks[-1].choices  # include_usage: a last chunk with usage


class StreamingJudge(ScriptedJudge):
    """Has `astream`, as `pollux.judge.Judge`: one delta, then waits (the judge "generating") until
    the test lets it go; records whether its stream was closed before it finished."""

    def __init__(self) -> None:
        super().__init__()
        self.first_sent, self.closed, self.go = threading.Event(), threading.Event(), asyncio.Event()

    async def astream(self, item: JudgeItem) -> AsyncIterator[str | Verdict]:
        try:
            yield "[FEEDBACK] "
            self.first_sent.set()
            await self.go.wait()
            yield make_verdict(item, "[FEEDBACK] [RESULT] 1 [END]")
        finally:
            self.closed.set()


def test_a_client_that_leaves_a_stream_stops_the_judge() -> None:
    """A streamed full reply: a client that disconnects after the first delta closes the judge's
    stream (`Judge.astream` then stops its worker at the next token), the server stays up."""
    judge = StreamingJudge()
    app = create_app(judge, ServerConfig(model_name="j", batch_size=1, max_wait_ms=0))
    body = json.dumps({"model": "j", "stream": True, "messages": [{"role": "user", "content": prompt()}]}).encode()
    with running(app=app) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body) + body)
            received = b""
            while b"[FEEDBACK] " not in received:
                received += conn.recv(65536)
            assert judge.first_sent.is_set() and received.startswith(b"HTTP/1.1 200 ")
        wait_until(judge.closed.is_set, "the judge's stream was closed")
        assert httpx.get(url + "/healthz").status_code == 200


def test_stream_of_a_bad_prompt_is_a_plain_4xx() -> None:
    """Checks happen before the stream opens, so a client gets a status, not a broken stream."""
    with running("score") as (url, _), pytest.raises(openai.BadRequestError, match="not a POLLUX judge prompt"):
        chat(url, "привет", stream=True)


def test_a_spoofed_x_forwarded_for_is_not_the_client_address() -> None:
    """uvicorn trusts X-Forwarded-For from loopback by default: a local client could pose as any
    address (the web UI's sign-in throttle keys on the client address). `pollux serve` does not."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def client_address(request: Any) -> PlainTextResponse:
        return PlainTextResponse(request.client.host if request.client else "")

    app = Starlette(routes=[Route("/", client_address)])
    with running(app=app) as (url, _):
        r = httpx.get(url + "/", headers={"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"})
    assert r.text == "127.0.0.1"
