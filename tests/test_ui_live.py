"""Judge live over real HTTP (uvicorn on loopback, an httpx client): an abandoned stream stops
generating and frees the judge; queued live judgements are bounded (429 beyond) and never starve
the pages.

Each test asserts on state — the engine's decode-step counter, the judge's lock, the stream's
worker threads — never on how long something took."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from pollux.engine import SamplingParams
from pollux.judge import Judge
from pollux.server.launch import free_port
from pollux.ui.app import create_ui_app
from pollux.ui.queries import Explorer
from test_ui_web import KEY, R2, make_ui_db

BODY = {"instruction": "Сколько будет 2+2?", "answer": "4", "reference": "",
        "criteria_name": "Правильность ответа", "rubrics": R2}
SAFETY_S = 120  # only a bound so a broken build fails instead of hanging; nothing is timed


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_ui_db(tmp_path_factory.mktemp("ui-live") / "run.db")


def load_judge(path: Path, tokens: int) -> Judge:
    """A tiny judge that always writes exactly `tokens` tokens (a long judgement on demand)."""
    return Judge.from_pretrained(str(path), dtype="float32", device="cpu",
                                 sampling=SamplingParams(max_new_tokens=tokens, min_new_tokens=tokens))


@contextmanager
def serve_ui(db: Path, judge: Judge, **options: Any) -> Iterator[str]:
    """`create_ui_app` served by uvicorn on loopback in a thread; yields its base URL."""
    port = free_port()
    with Explorer([db]) as explorer:
        app = create_ui_app(explorer, judge=judge, key=KEY, **options)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + SAFETY_S
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the UI server did not start"
            time.sleep(0.02)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(SAFETY_S)


@contextmanager
def signed_in(url: str, **client: Any) -> Iterator[tuple[httpx.Client, dict[str, str]]]:
    """A client with a session cookie, and the headers a live POST needs (Origin, CSRF token)."""
    with httpx.Client(base_url=url, timeout=SAFETY_S, **client) as c:
        assert c.post("/ui/signin", data={"key": KEY}, headers={"Origin": url}).status_code == 303
        token = re.search(r'name="csrf-token" content="([^"]+)"', c.get("/ui/live").text)
        assert token
        yield c, {"Origin": url, "X-CSRF-Token": token.group(1)}


def wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + SAFETY_S
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.02)


def stream_threads() -> int:
    return sum(t.name == "pollux-stream" for t in threading.enumerate())


def test_closing_the_tab_mid_stream_stops_the_judgement(db: Path, tiny_generative_path: Path) -> None:
    """Issue 23 item 1: the client goes after the first delta; the judgement stops at its next
    token and the judge's lock is free again — it does not run on to `max_new_tokens`."""
    tokens = 1000
    judge = load_judge(tiny_generative_path, tokens)
    with serve_ui(db, judge) as url:
        with signed_in(url) as (c, headers):
            before = judge.engine.stats["decode_steps"]  # type: ignore[attr-defined]
            with c.stream("POST", "/ui/live", json=BODY, headers=headers) as r:
                assert r.status_code == 200
                first = json.loads(next(r.iter_lines()))
                assert first["type"] == "delta"
            # the response is closed with its body unread: httpx drops the connection (a closed tab)
            assert judge._lock.acquire(timeout=SAFETY_S), "the judge's lock was never released"
            judge._lock.release()
            wait_for(lambda: stream_threads() == 0, "the stream's worker thread to end")
            steps = judge.engine.stats["decode_steps"] - before  # type: ignore[attr-defined]
            assert steps < tokens // 2, f"the abandoned judgement ran on to {steps} of {tokens} tokens"
            # the judge still serves the next caller
            with c.stream("POST", "/ui/live", json=BODY, headers=headers) as again:
                assert again.status_code == 200 and json.loads(next(again.iter_lines()))["type"] == "delta"
        wait_for(lambda: stream_threads() == 0, "the second stream's worker thread to end")


def test_a_stream_abandoned_while_queued_generates_nothing(db: Path, tiny_generative_path: Path) -> None:
    """A live judgement waiting its turn (a `/v1/judge` batch holds the judge) whose client leaves
    never reaches the engine once the judge is free."""
    judge = load_judge(tiny_generative_path, 200)
    with serve_ui(db, judge) as url, signed_in(url) as (c, headers):
        with judge._lock:  # what the server's micro-batcher holds while it judges a batch
            before = dict(judge.engine.stats)  # type: ignore[attr-defined]
            with c.stream("POST", "/ui/live", json=BODY, headers=headers) as r:
                assert r.status_code == 200
            # the server has seen the client go: its place among the live judgements is free
            wait_for(lambda: c.get("/ui/api/live").json()["in_progress"] == 0, "the server to see the client go")
        wait_for(lambda: stream_threads() == 0, "the queued stream's worker thread to end")
        after = judge.engine.stats  # type: ignore[attr-defined]
        assert after["batches"] == before["batches"], "an abandoned queued judgement reached the engine"
        assert after["decode_steps"] == before["decode_steps"]


def test_queued_live_judgements_are_bounded_and_pages_stay_up(db: Path, tiny_generative_path: Path) -> None:
    """Issue 23 item 2: with more queued live judgements than the server's thread pool (40), pages
    still answer; one more than the limit is a 429 with a message and Retry-After."""
    judge = load_judge(tiny_generative_path, 2)
    limit = 45
    with serve_ui(db, judge, max_live=limit) as url:
        with signed_in(url, limits=httpx.Limits(max_connections=limit + 10)) as (c, headers), \
                ExitStack() as stack:
            with judge._lock:  # every live judgement waits its turn behind a batch
                queued = [stack.enter_context(c.stream("POST", "/ui/live", json=BODY, headers=headers))
                          for _ in range(limit)]
                assert all(r.status_code == 200 for r in queued)
                page = c.get("/ui/", timeout=30)
                assert page.status_code == 200 and "judge-a" in page.text
                assert c.get("/ui/api/runs", timeout=30).status_code == 200
                refused = c.post("/ui/live", json=BODY, headers=headers, timeout=30)
                assert refused.status_code == 429, refused.text[:300]
                assert "live judgements" in refused.json()["error"]["message"]
                assert int(refused.headers["retry-after"]) > 0
                assert refused.headers["content-security-policy"]
            # the judge is free: every queued judgement ends with its verdict, and frees its place
            for r in queued:
                assert json.loads(list(r.iter_lines())[-1])["type"] == "verdict"
        wait_for(lambda: stream_threads() == 0, "the queued streams' worker threads to end")
        with signed_in(url) as (c2, headers2):
            done = c2.post("/ui/live", json=BODY, headers=headers2)
            assert done.status_code == 200 and json.loads(done.text.splitlines()[-1])["type"] == "verdict"
