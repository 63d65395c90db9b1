"""`pollux serve` at its connection edges: clients that go away, slow clients, huge headers,
hostile nesting, and the OpenAPI description of the request bodies.

A real uvicorn server on 127.0.0.1 — built by `pollux.server.run.uvicorn_config`, as `pollux serve`
builds it — runs in a thread; clients are raw sockets where the test is about bytes on the wire.
The judge behind it is a scripted one that can be held (a gate), because what is under test is
the server around the engine: which items reach the engine at all. The real engine behind the
real server process is covered in tests/test_server.py.
"""

from __future__ import annotations

import json
import re
import select
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import uvicorn

from pollux.prompts import PromptTemplate
from pollux.records import JudgeItem
from pollux.server.app import ServerConfig, create_app
from pollux.server.launch import free_port
from pollux.server.run import uvicorn_config
from pollux.verdicts import Verdict, make_verdict

RUBRICS = "0: плохо\n\n1: хорошо"


class GatedJudge:
    """Judges only while its gate is open; records every item that reached the engine."""

    kind = "scripted"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered: list[str] = []

    def judge_many(self, batch: list[JudgeItem]) -> list[Verdict]:
        self.entered.extend(it.instruction for it in batch)
        assert self.gate.wait(30), "the test never opened the gate"
        return [make_verdict(it, "[FEEDBACK] ok [RESULT] 1 [END]") for it in batch]


def row(name: str) -> dict[str, Any]:
    return {"instruction": name, "answer": "ответ", "criteria_name": "Полнота", "rubrics": RUBRICS}


def wait_until(condition: Any, what: str, timeout: float = 20.0) -> None:
    """Poll until `condition()` holds: the test waits on what it needs, never for a fixed time."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        time.sleep(0.01)


class Running:
    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def metric(self, name: str) -> float:
        text = httpx.get(self.url + "/metrics", timeout=10).text
        m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        return float(m.group(1)) if m else 0.0

    def closed(self, endpoint: str) -> float:
        return self.metric(f'pollux_requests_total{{endpoint="{endpoint}",status="499"}}')


@contextmanager
def running(judge: Any, **limits: Any) -> Iterator[Running]:
    """A real server on loopback in a thread, with `limits` for `uvicorn_config` / `ServerConfig`."""
    server_keys = {"header_timeout_s", "max_header_bytes"}
    app = create_app(judge, ServerConfig(model_name="scripted", batch_size=1, max_wait_ms=0,
                                         **{k: v for k, v in limits.items() if k not in server_keys}))
    port = free_port()
    server = uvicorn.Server(uvicorn_config(app, host="127.0.0.1", port=port, log_level="warning",
                                           **{k: v for k, v in limits.items() if k in server_keys}))
    thread = threading.Thread(target=server.run, name="pollux-test-server", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, "the server started")
        yield Running(port)
    finally:
        judge.gate.set()
        server.should_exit = True
        thread.join(30)


def post_and_close(port: int, path: str, body: bytes) -> None:
    """A client that sends its whole request and goes away without reading the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)


def read_all(conn: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    return data


def judge_body(names: list[str]) -> bytes:
    return json.dumps({"items": [row(n) for n in names]}).encode()


def chat_body(name: str) -> bytes:
    prompt = PromptTemplate().render(JudgeItem.from_dict(row(name)))
    return json.dumps({"model": "scripted", "messages": [{"role": "user", "content": prompt}]}).encode()


@pytest.mark.parametrize("endpoint", ["/v1/judge", "/v1/chat/completions"])
def test_items_of_a_client_that_went_away_are_not_judged(endpoint: str) -> None:
    """Issue 23, item 3: a client that sends its whole body and closes used to get its items
    judged anyway (12 of 12); its queued items are dropped once the server sees it gone."""
    judge = GatedJudge()
    with ThreadPoolExecutor(1) as pool, running(judge) as srv:
        held = pool.submit(httpx.post, srv.url + "/v1/judge", json=row("held"), timeout=60)
        wait_until(lambda: judge.entered == ["held"], "the engine is busy with a live client's item")
        closed = srv.closed(endpoint)
        if endpoint == "/v1/judge":
            post_and_close(srv.port, endpoint, judge_body([f"gone {i}" for i in range(12)]))
        else:
            for i in range(3):
                post_and_close(srv.port, endpoint, chat_body(f"gone {i}"))
        wait_until(lambda: srv.closed(endpoint) == closed + (1 if endpoint == "/v1/judge" else 3),
                   "the server saw the clients go")
        judge.gate.set()
        assert held.result().status_code == 200
        after = httpx.post(srv.url + "/v1/judge", json=row("after"), timeout=60)
        assert after.status_code == 200, after.text
    assert judge.entered == ["held", "after"]  # nothing of the clients that went away


def test_a_huge_header_gets_431_not_a_reset() -> None:
    """Issue 23, item 15: a 1 MB header used to be answered with a connection reset; it gets a
    431 the client can read (the server reads and drops the rest of the header before closing)."""
    with running(GatedJudge(), max_header_bytes=32 * 1024) as srv, \
            socket.create_connection(("127.0.0.1", srv.port), timeout=30) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n")
        reply = read_all(conn)
        assert reply.startswith(b"HTTP/1.1 431 "), reply[:200]
        body = json.loads(reply.split(b"\r\n\r\n", 1)[1])
        assert body["error"]["code"] == 431
        assert "request headers exceed the limit of 32768 bytes" in body["error"]["message"]
        assert httpx.get(srv.url + "/healthz", headers={"X-Fine": "b" * 20_000}).status_code == 200


def test_a_client_that_drips_its_headers_is_cut_off_with_408() -> None:
    """Issue 23, item 15: a slow client (one header byte at a time) used to hold its connection
    for ever; the header read timeout ends it with a 408, however steadily the bytes drip."""
    with running(GatedJudge(), header_timeout_s=1.0) as srv, \
            socket.create_connection(("127.0.0.1", srv.port), timeout=30) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for i in range(300):  # one byte per 0.1 s for up to 30 s: far past the 1 s header timeout
            conn.sendall(b"X-Slow: 1\r\n"[i % 11:i % 11 + 1])
            if select.select([conn], [], [], 0.1)[0]:  # the server answered (or closed)
                break
        reply = read_all(conn)
        assert reply.startswith(b"HTTP/1.1 408 "), reply[:200]
        assert "request headers not received within 1 s" in json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]["message"]


def test_a_client_that_never_finishes_its_body_gets_408() -> None:
    """Issue 23, item 15: a body that stops half way used to hold the request for ever."""
    with running(GatedJudge(), body_timeout_s=1.0) as srv, \
            socket.create_connection(("127.0.0.1", srv.port), timeout=30) as conn:
        conn.sendall(b"POST /v1/judge HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"instruction\": ")
        reply = read_all(conn)
        assert reply.startswith(b"HTTP/1.1 408 "), reply[:200]
        assert "request body not received within 1 s" in json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]["message"]
        assert srv.metric('pollux_requests_total{endpoint="/v1/judge",status="408"}') == 1


def test_openapi_describes_the_request_bodies() -> None:
    """Issue 24, item 3: the server's routes declare their request bodies (pydantic models), so
    `/openapi.json` describes what `/v1/judge` and `/v1/chat/completions` take."""
    with running(GatedJudge()) as srv:
        spec = httpx.get(srv.url + "/openapi.json", timeout=10).json()
    judge = spec["paths"]["/v1/judge"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    refs = {option["$ref"].rsplit("/", 1)[-1] for option in judge["anyOf"]}
    assert refs == {"JudgeItemBody", "JudgeOne", "JudgeBatch"}
    schemas = spec["components"]["schemas"]
    assert set(schemas["JudgeItemBody"]["required"]) == {"instruction", "answer", "criteria_name", "rubrics"}
    assert schemas["JudgeBatch"]["properties"]["items"]["items"] == {"$ref": "#/components/schemas/JudgeItemBody"}
    chat = spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert chat == {"$ref": "#/components/schemas/ChatRequest"}
    assert {"model", "messages"} <= set(schemas["ChatRequest"]["required"])
    for path in ("/healthz", "/metrics", "/v1/models"):
        assert "get" in spec["paths"][path]
