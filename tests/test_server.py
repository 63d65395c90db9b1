"""`pollux serve` as a real process on loopback with a tiny checkpoint.

Covers the judge API, the OpenAI-compatible route (through `OpenAIEngine`, compared with the
in-process judge), the bearer key, request limits and malformed input (4xx with a clear message,
server still up), metrics, micro-batching, the bounded queue (429 + Retry-After) and graceful
shutdown on SIGTERM.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from pollux.engine import SamplingParams
from pollux.engine.openai_api import OpenAIEngine
from pollux.judge import Judge
from pollux.prompts import PromptTemplate
from pollux.records import JudgeItem
from pollux.server.launch import free_port, start_serve, stop

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
RUBRICS = "0: плохо\n\n1: средне\n\n2: хорошо"
# uvicorn re-raises the SIGTERM it caught once shutdown is complete, so a clean stop reads -15.
GRACEFUL_EXIT = (0, -signal.SIGTERM)


def wait_until(condition: Any, what: str, timeout: float = 20.0) -> None:
    """Poll `condition()` until it holds: wait on what the test needs, never for a fixed time."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        time.sleep(0.005)


def metric(text: str, name: str) -> float:
    """A sample's value in a Prometheus text exposition (0 when absent)."""
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def item(i: int, **over: Any) -> dict[str, Any]:
    row = {"instruction": f"Вопрос номер {i}: сколько будет {i}+{i}?", "answer": f"Ответ: {2 * i}",
           "criteria_name": "Правильность ответа", "rubrics": RUBRICS}
    row.update(over)
    return row


class Server:
    def __init__(self, proc: Any, port: int, model_name: str):
        self.proc, self.port, self.model_name = proc, port, model_name
        self.url = f"http://127.0.0.1:{port}"

    def post(self, path: str, auth: bool = True, **kw: Any) -> httpx.Response:
        headers = {**(AUTH if auth else {}), **kw.pop("headers", {})}
        return httpx.post(self.url + path, headers=headers, timeout=60, **kw)

    def get(self, path: str, auth: bool = True) -> httpx.Response:
        return httpx.get(self.url + path, headers=AUTH if auth else {}, timeout=30)


@pytest.fixture(scope="module")
def server(tiny_judge_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = free_port()
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    proc = start_serve(tiny_judge_path, port, [
        "--max-new-tokens", "8", "--dtype", "float32", "--device", "cpu", "--max-body-bytes", "20000",
        "--max-items", "8", "--model-name", "tiny-r", "--max-header-bytes", "32768", "--body-timeout", "20",
    ], env={"POLLUX_API_KEY": KEY}, log_path=log)
    yield Server(proc, port, "tiny-r")
    assert stop(proc) in GRACEFUL_EXIT, log.read_text()


@pytest.fixture(scope="module")
def in_process(tiny_judge_path: Path) -> Judge:
    return Judge.from_pretrained(str(tiny_judge_path), dtype="float32", device="cpu",
                                 sampling=SamplingParams(max_new_tokens=8))


def test_health_models_and_key(server: Server) -> None:
    health = httpx.get(server.url + "/healthz").json()  # no key needed
    assert health["status"] == "ok" and health["model"] == "tiny-r"
    models = server.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["tiny-r", "tiny-r:score", "tiny-r:full"]
    assert models["data"][0]["kind"] == "regression" and models["data"][0]["reply"] == "full"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        r = httpx.post(server.url + "/v1/judge", json=item(1), headers=headers)
        assert r.status_code == 401, r.text
        assert r.headers["www-authenticate"] == "Bearer"
        assert "API key" in r.json()["error"]["message"]
    assert httpx.get(server.url + "/metrics").status_code == 401
    assert httpx.get(server.url + "/v1/models").status_code == 401


def test_judge_single_and_batch_match_in_process(server: Server, in_process: Judge) -> None:
    rows = [item(i) for i in range(4)]
    expected = in_process.judge_many(rows)
    single = server.post("/v1/judge", json=rows[0])
    assert single.status_code == 200, single.text
    [v] = single.json()["verdicts"]
    assert v["head_score"] == pytest.approx(expected[0].head_score, abs=1e-3)
    assert v["raw_text"] == expected[0].raw_text
    wrapped = server.post("/v1/judge", json={"item": rows[0]}).json()["verdicts"][0]
    assert wrapped["head_score"] == pytest.approx(v["head_score"], abs=1e-3)

    batch = server.post("/v1/judge", json={"items": rows}).json()
    assert [x["head_score"] for x in batch["verdicts"]] == pytest.approx([e.head_score for e in expected], abs=1e-3)
    assert [x["key"] for x in batch["verdicts"]] == [_key(r) for r in rows]
    assert batch["usage"]["prompt_tokens"] == sum(e.prompt_tokens for e in expected)
    assert batch["usage"]["completion_tokens"] == sum(e.completion_tokens for e in expected)


def _key(row: dict[str, Any]) -> str:
    from pollux.records import JudgeItem

    return JudgeItem.from_dict(row).key


def test_bad_item_in_a_batch_does_not_lose_the_others(server: Server) -> None:
    rows = [item(1), {"instruction": "x", "answer": "y"}, "not an object", item(2)]
    r = server.post("/v1/judge", json={"items": rows})
    assert r.status_code == 200, r.text
    verdicts = r.json()["verdicts"]
    assert verdicts[0]["error"] is None and verdicts[3]["error"] is None
    assert verdicts[0]["head_score"] is not None
    assert verdicts[1]["error"] == "items[1]: missing field(s) criteria_name, rubrics"
    assert verdicts[2]["error"] == "items[2]: expected a JSON object, got str"


def test_openai_engine_against_pollux_serve(server: Server, in_process: Judge) -> None:
    rows = [item(i) for i in range(6)]
    expected = in_process.judge_many(rows)
    engine = OpenAIEngine(server.model_name, base_url=server.url + "/v1", api_key=KEY, concurrency=6,
                          sampling=SamplingParams(max_new_tokens=8))
    verdicts = Judge(engine).judge_many(rows)
    assert all(v.error is None for v in verdicts), [v.error for v in verdicts]
    assert [v.head_score for v in verdicts] == pytest.approx([e.head_score for e in expected], abs=1e-3)
    assert [v.raw_text for v in verdicts] == [e.raw_text for e in expected]
    assert [v.prompt_tokens for v in verdicts] == [e.prompt_tokens for e in expected]
    assert engine.usage["completion_tokens"] == sum(e.completion_tokens for e in expected)
    # the raw HTTP shape, as any OpenAI client sees it
    prompt = engine.messages_for(in_process_item(rows[0]))[0]["content"]
    r = server.post("/v1/chat/completions", json={"model": "tiny-r", "messages": [{"role": "user", "content": prompt}],
                                                  "max_tokens": 8, "temperature": 0})
    body = r.json()
    assert r.status_code == 200 and body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == expected[0].raw_text
    assert body["pollux"]["head_score"] == pytest.approx(expected[0].head_score, abs=1e-3)
    assert body["usage"]["prompt_tokens"] == expected[0].prompt_tokens


def in_process_item(row: dict[str, Any]):
    from pollux.records import JudgeItem

    return JudgeItem.from_dict(row)


@pytest.mark.parametrize(("kwargs", "status", "message"), [
    ({"content": b"{not json"}, 400, "not valid JSON"),
    ({"content": b""}, 400, "empty request body"),
    ({"content": b"\xff\xfe{}"}, 400, "not UTF-8"),
    ({"json": [1, 2]}, 422, "expected a JSON object"),
    ({"json": {"instruction": "x"}}, 422, "item: missing field(s) answer, criteria_name, rubrics"),
    ({"json": {"items": []}}, 422, "'items' is empty"),
    ({"json": {"items": "abc"}}, 422, "'items' must be a list"),
    ({"json": {"items": [item(i) for i in range(9)]}}, 413, "9 items in one request exceeds the limit of 8"),
    ({"json": item(1, answer="ы" * 20_000)}, 413, "exceeds the limit of 20000 bytes"),
    ({"json": item(1, rubrics="без шкалы", criteria_name="  ")}, 422, "criteria_name' is empty"),
    ({"json": item(1, answer=42)}, 422, "field 'answer' must be a string"),
    ({"json": item(1, meta=5)}, 422, "item: field 'meta' must be a JSON object, got int"),
    ({"json": item(1, meta=[1])}, 422, "item: field 'meta' must be a JSON object, got list"),
    ({"json": item(1, answer="")}, 422, "item: field 'answer' is empty"),
    ({"json": item(1, answer=" \n ")}, 422, "item: field 'answer' is empty"),
    ({"json": item(1, instruction="")}, 422, "item: field 'instruction' is empty"),
    ({"content": json.dumps(item(1, answer="\ud800")).encode()}, 422,
     "item: field 'answer': invalid text: a lone surrogate U+D800 at character 1"),
    ({"content": json.dumps(item(1, meta={"id": "q\udfff"})).encode()}, 422, "item: field 'meta': invalid text: a lone surrogate U+DFFF"),
    ({"json": {"items": [item(1, rubrics="0: x\x00")]}}, 422, "items[0]: field 'rubrics': invalid text: a NUL"),
    ({"content": b"[" * 19_000}, 400, "nested too deeply"),
])
def test_bad_judge_requests_get_clear_4xx(server: Server, kwargs: dict[str, Any], status: int, message: str) -> None:
    r = server.post("/v1/judge", **kwargs)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]["message"]
    assert httpx.get(server.url + "/healthz").status_code == 200


def test_chunked_oversized_body_is_refused(server: Server) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: the server must count while reading
        yield b'{"instruction": "'
        for _ in range(30):
            yield b"x" * 1000
        yield b'"}'

    r = server.post("/v1/judge", content=chunks())
    assert r.status_code == 413 and "exceeds the limit" in r.json()["error"]["message"]


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"model": "other", "messages": [{"role": "user", "content": "x"}]}, 404, "not served here"),
    ({"messages": [{"role": "user", "content": "x"}]}, 422, "missing field 'model'"),
    ({"model": "tiny-r"}, 422, "missing field 'messages'"),
    ({"model": "tiny-r", "messages": []}, 422, "field 'messages' is empty"),
    ({"model": "tiny-r", "messages": "x"}, 422, "field 'messages' must be a list, got str"),
    ({"model": 7, "messages": [{"role": "user", "content": "x"}]}, 422, "field 'model' must be a string, got int"),
    ({"model": "tiny-r", "messages": [{"content": "x"}]}, 422, "missing field 'messages.0.role'"),
    ({"model": "tiny-r", "messages": [{"role": "user", "content": 5}]}, 422, "'content' must be a string"),
    ({"model": "tiny-r", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400,
     "only text content parts"),
    ({"model": "tiny-r", "n": 2, "messages": [{"role": "user", "content": "x"}]}, 400, "only n=1"),
    ({"model": "tiny-r", "messages": [{"role": "user", "content": "Привет!"}]}, 400, "not a POLLUX judge prompt"),
    ({"model": "tiny-r", "messages": [{"role": "system", "content": "a"}, {"role": "user", "content": "b"}]},
     400, "exactly one user message"),
    ({"model": "tiny-r", "stream": True, "messages": [{"role": "user", "content": "x"}]}, 400,
     "not a POLLUX judge prompt"),
    ({"model": "tiny-r:score", "logprobs": True, "messages": [{"role": "user", "content": "x"}]}, 400,
     "ask the full reply"),
    ({"model": "tiny-r", "stream": True, "logprobs": True, "messages": [{"role": "user", "content": "x"}]}, 400,
     "logprobs are not streamed"),
])
def test_bad_chat_requests_get_clear_4xx(server: Server, body: dict[str, Any], status: int, message: str) -> None:
    r = server.post("/v1/chat/completions", json=body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]["message"]


def test_streamed_reply_is_the_whole_reply_token_by_token(server: Server) -> None:
    """`stream: true` with the real engine (`Judge.astream`): the OpenAI SDK reads the chunks; the
    deltas make the non-streamed content, the last chunk carries the same scores."""
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    messages = [{"role": "user", "content": PromptTemplate().render(JudgeItem.from_dict(item(3)))}]
    whole = client.chat.completions.create(model="tiny-r", messages=messages)
    chunks = list(client.chat.completions.create(model="tiny-r", messages=messages, stream=True))
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) > 1 and "".join(deltas) == whole.choices[0].message.content
    assert chunks[-1].model_extra["pollux"]["head_score"] == whole.model_extra["pollux"]["head_score"]
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_unknown_endpoint_and_method(server: Server) -> None:
    assert server.get("/v1/nothing").status_code == 404
    r = server.get("/v1/judge")
    assert r.status_code == 405 and "not allowed" in r.json()["error"]["message"]


def test_concurrent_requests_are_batched_and_metered(server: Server) -> None:
    before = server.get("/metrics").text
    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda i: server.post("/v1/judge", json=item(100 + i)).status_code, range(16)))
    assert codes == [200] * 16
    after = server.get("/metrics").text
    batches = metric(after, "pollux_batch_size_count") - metric(before, "pollux_batch_size_count")
    judged = metric(after, "pollux_batch_size_sum") - metric(before, "pollux_batch_size_sum")
    assert judged == 16
    assert batches < 16  # several requests shared an engine call
    assert metric(after, 'pollux_requests_total{endpoint="/v1/judge",status="200"}') >= 16
    outcomes = [f'pollux_judgements_total{{outcome="{o}"}}' for o in ("valid", "invalid", "error")]
    assert sum(metric(after, o) - metric(before, o) for o in outcomes) == 16
    assert metric(after, outcomes[2]) == metric(before, outcomes[2])  # none failed
    assert "pollux_queue_depth" in after and "pollux_request_latency_seconds_bucket" in after


def _raw_json(body: Any) -> bytes:
    """JSON as a client sends it: a lone surrogate becomes the escape `\\ud800`, valid UTF-8."""
    return json.dumps(body).encode("ascii")


def test_one_bad_item_fails_alone_among_concurrent_clients(server: Server) -> None:
    """Issue 11, defect 1: a lone surrogate in one client's answer must not fail the items of the
    clients whose requests share its micro-batch, and it gets a JSON 422 naming the field."""
    bad_body = _raw_json(item(1, answer="\ud800"))
    assert b'"\\ud800"' in bad_body
    clients = 9
    barrier = threading.Barrier(clients)

    def send(i: int) -> httpx.Response:
        barrier.wait()  # all at once, so they land in the same micro-batch
        if i == 0:
            return server.post("/v1/judge", content=bad_body, headers={"Content-Type": "application/json"})
        return server.post("/v1/judge", json=item(300 + i))

    with ThreadPoolExecutor(clients) as pool:
        bad, *good = pool.map(send, range(clients))
    for r in good:
        assert r.status_code == 200, r.text
        [v] = r.json()["verdicts"]
        assert v["error"] is None and v["head_score"] is not None, v
    assert bad.status_code == 422, bad.text
    assert bad.headers["content-type"].startswith("application/json")
    assert bad.json()["error"]["message"] == (
        "item: field 'answer': invalid text: a lone surrogate U+D800 at character 1 (not valid Unicode)")

    # within one batch request: the bad items get error verdicts naming them, the others real ones
    rows = [item(310), item(311, answer="\ud800", criteria_name="\udc00"), item(312, meta={"k\ud801": 1}), item(313)]
    r = server.post("/v1/judge", content=_raw_json({"items": rows}), headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    verdicts = r.json()["verdicts"]
    assert [v["error"] is None for v in verdicts] == [True, False, False, True]
    assert all(v["head_score"] is not None for v in (verdicts[0], verdicts[3]))
    assert verdicts[1]["error"].startswith("items[1]: field 'answer': invalid text: a lone surrogate U+D800")
    assert verdicts[1]["criteria_name"] == ""  # the unusable text is not echoed back
    assert verdicts[2]["error"].startswith("items[2]: field 'meta': invalid text: a lone surrogate U+D801")


def test_chat_prompt_with_unusable_text_gets_422_naming_the_field(server: Server) -> None:
    prompt = PromptTemplate().render(JudgeItem.from_dict(item(1, answer="ANSWER"))).replace("ANSWER", "\ud800")
    body = {"model": "tiny-r", "messages": [{"role": "user", "content": prompt}]}
    r = server.post("/v1/chat/completions", content=_raw_json(body), headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["message"] == ("messages[0].content: judge prompt: field 'answer': invalid text: "
                                            "a lone surrogate U+D800 at character 1 (not valid Unicode)")
    empty = PromptTemplate().render(JudgeItem.from_dict(item(1, answer="")))
    r = server.post("/v1/chat/completions", json={**body, "messages": [{"role": "user", "content": empty}]})
    assert r.status_code == 422 and r.json()["error"]["message"] == "messages[0].content: field 'answer' is empty"


def test_client_gone_mid_body_is_counted_as_499_not_as_a_server_error(server: Server) -> None:
    """Issue 11, defect 9: a client that disconnects before its body is complete is not a 500."""
    def count(status: str) -> float:
        return metric(server.get("/metrics").text, f'pollux_requests_total{{endpoint="/v1/judge",status="{status}"}}')

    closed, errors = count("499"), count("500")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
        conn.sendall(b"POST /v1/judge HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     + f"Authorization: Bearer {KEY}\r\nContent-Length: 5000\r\n\r\n".encode()
                     + b'{"instruction": "half a body')
    wait_until(lambda: count("499") == closed + 1, "the disconnect shows in /metrics")
    assert count("500") == errors
    assert httpx.get(server.url + "/healthz").status_code == 200


# --- a deliberately small, slow server: overload and shutdown -----------------------------------

@pytest.fixture()
def slow_server(tiny_judge_path: Path, tmp_path: Path) -> Iterator[Server]:
    port = free_port()
    proc = start_serve(tiny_judge_path, port, [
        "--max-new-tokens", "64", "--dtype", "float32", "--device", "cpu", "--batch-size", "2",
        "--max-queue", "3", "--model-name", "slow",
    ], log_path=tmp_path / "serve.log")
    yield Server(proc, port, "slow")
    stop(proc)


@pytest.mark.slow
def test_overload_gets_429_with_retry_after_and_shutdown_is_graceful(slow_server: Server) -> None:
    # 1. overload: far more concurrent requests than the queue holds
    def post(i: int) -> httpx.Response:
        return slow_server.post("/v1/judge", json=item(i))

    with ThreadPoolExecutor(24) as pool:
        responses = list(pool.map(post, range(24)))
    codes = Counter(r.status_code for r in responses)
    assert set(codes) <= {200, 429}, codes
    assert codes[429] > 0 and codes[200] > 0, codes
    refused = next(r for r in responses if r.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1
    err = refused.json()["error"]
    assert "queue is full" in err["message"] and err["max_queue"] == 3

    # 2. SIGTERM while a request is in flight: it still gets its answer, then the process exits 0
    result: dict[str, httpx.Response] = {}
    thread = threading.Thread(target=lambda: result.update(r=slow_server.post(
        "/v1/judge", json={"items": [item(200), item(201), item(202)]})))
    thread.start()
    def busy() -> bool:
        h = httpx.get(slow_server.url + "/healthz").json()
        return bool(h["in_flight"] or h["queue_depth"])

    wait_until(busy, "the request reaches the engine")
    code = stop(slow_server.proc)
    thread.join(30)
    assert code in GRACEFUL_EXIT
    assert result["r"].status_code == 200, result["r"].text
    assert len(result["r"].json()["verdicts"]) == 3
    assert all(v["error"] is None for v in result["r"].json()["verdicts"])
    with pytest.raises(httpx.TransportError):
        httpx.get(slow_server.url + "/healthz", timeout=2)


@pytest.mark.slow
def test_generative_judge_served_and_reasked(tiny_generative_path: Path, tmp_path: Path) -> None:
    """A judge without a regression head: no head score over HTTP, and a reply without
    `[RESULT] n [END]` is re-asked once (both asks' tokens counted)."""
    port = free_port()
    proc = start_serve(tiny_generative_path, port, ["--max-new-tokens", "6", "--dtype", "float32",
                                                    "--device", "cpu", "--model-name", "gen"],
                       log_path=tmp_path / "serve.log")
    try:
        rows = [item(i) for i in range(3)]
        expected = Judge.from_pretrained(str(tiny_generative_path), dtype="float32", device="cpu",
                                         sampling=SamplingParams(max_new_tokens=6)).judge_many(rows)
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models").json()
        assert models["data"][0]["kind"] == "generative"
        engine = OpenAIEngine("gen", base_url=f"http://127.0.0.1:{port}/v1", max_reasks=1,
                              sampling=SamplingParams(max_new_tokens=6))
        verdicts = engine.judge_many([in_process_item(r) for r in rows])
    finally:
        assert stop(proc) in GRACEFUL_EXIT
    assert [v.raw_text for v in verdicts] == [e.raw_text for e in expected]
    assert all(v.head_score is None and v.error is None for v in verdicts)
    unscored = [e for e in expected if e.text_score is None]
    assert engine.usage["reasks"] == len(unscored)
    assert engine.usage["requests"] == len(rows) + len(unscored)
    assert sum(v.completion_tokens for v in verdicts) == sum(
        e.completion_tokens * (2 if e.text_score is None else 1) for e in expected)


def test_serve_with_a_bad_checkpoint_exits_with_a_clear_message(tmp_path: Path) -> None:
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", "from pollux.cli import main; main()", "serve", "--model",
                          str(tmp_path / "missing"), "--port", str(free_port())],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "not a local checkpoint folder" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize("depth", [500, 900])
def test_deeply_nested_meta_fails_alone(server: Server, depth: int) -> None:
    """Issue 23, item 4: an item whose `meta` is nested hundreds of levels used to fail the whole
    batch with a 500 (RecursionError in the text check); it fails alone, naming item and field."""
    deep = '{"k": ' * depth + '"x"' + "}" * depth
    rows = [json.dumps(item(401)), '{"instruction": "q", "answer": "a", "criteria_name": "c", '
            f'"rubrics": "{RUBRICS}", "meta": {deep}}}'.replace("\n", "\\n"), json.dumps(item(402))]
    r = server.post("/v1/judge", content=('{"items": [' + ", ".join(rows) + "]}").encode(),
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    good, bad, other = r.json()["verdicts"]
    assert good["error"] is None and other["error"] is None and good["head_score"] is not None
    assert bad["error"].startswith("items[1]: field 'meta': nested deeper than "), bad["error"]
    single = server.post("/v1/judge", content=rows[1].encode(), headers={"Content-Type": "application/json"})
    assert single.status_code == 422, single.text
    assert single.json()["error"]["message"].startswith("item: field 'meta': nested deeper than ")


def test_serve_flags_limit_headers(server: Server) -> None:
    """Issue 23, item 15, through `pollux serve --max-header-bytes`: a 1 MB header gets a 431 the
    client can read (not a reset), and the server goes on."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n")
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 431 "), reply[:200]
    assert b"request headers exceed the limit of 32768 bytes" in reply
    assert httpx.get(server.url + "/healthz").status_code == 200
