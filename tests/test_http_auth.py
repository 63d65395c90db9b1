"""Endpoints with their own auth (`pollux.engine.http_chat.EndpointAuth`, `KeySource`) against a real
threaded HTTP server on 127.0.0.1 that issues expiring tokens.

`AuthServer` is a chat-completions endpoint with a token endpoint beside it, as GigaChat has: `POST
/token` hands out a new token valid for `lifetime` seconds; a chat request with a missing, unknown,
revoked or expired token (or another auth scheme) gets 401; every answered request is counted per
item on the server's side, so "judged exactly once" is the server's count, not the client's belief.
The key command is a real subprocess (`token_command`) that calls `/token`, as `curl … | jq` would.
synth's models reuse this server in tests/test_synth_http.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shlex
import shutil
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pollux.engine.http_chat import ApiError, ChatClient, EndpointAuth, KeySource, parse_headers
from pollux.engine.registry import OptionsError, load_engine
from pollux.records import JudgeItem

RUBRICS = "0: плохо\n\n1: средне\n\n2: хорошо"
ITEM = re.compile(r"item-\d+")


class AuthServer:
    """A chat endpoint that wants a fresh token (see module doc). `hold_401s=n` keeps each 401
    unanswered until n of them arrived, so that n requests are refused the same key at once."""

    def __init__(self, *, lifetime: float | None = None, scheme: str = "Bearer", delay: float = 0.0,
                 hold_401s: int = 0, tls: ssl.SSLContext | None = None):
        self.lifetime = lifetime
        self.scheme = scheme
        self.delay = delay
        self.hold = threading.Barrier(hold_401s) if hold_401s else None
        self.lock = threading.Lock()
        self.tokens: dict[str, float] = {}  # token -> expiry (monotonic)
        self.judged: Counter[str] = Counter()  # item -> answered requests
        self.rejected = 0
        self.requests: list[dict[str, Any]] = []  # headers (lower-case) and body of each chat request
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, address: None  # type: ignore[method-assign]  # refused TLS
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True, do_handshake_on_connect=False)
        self.scheme_name = "https" if tls is not None else "http"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"{self.scheme_name}://127.0.0.1:{self.httpd.server_address[1]}/v1"

    @property
    def token_url(self) -> str:
        return self.url.removesuffix("/v1") + "/token"

    @property
    def issued(self) -> int:
        return len(self.tokens)

    def __enter__(self) -> AuthServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)

    def revoke(self) -> None:
        """Every token issued so far stops working (a server-side expiry the client cannot foresee)."""
        with self.lock:
            self.tokens = dict.fromkeys(self.tokens, 0.0)

    def issue(self) -> str:
        with self.lock:
            token = f"tok-{len(self.tokens) + 1}"
            self.tokens[token] = time.monotonic() + self.lifetime if self.lifetime else float("inf")
        return token

    def chat(self, headers: Mapping[str, str], body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        scheme, _, token = (headers.get("authorization") or "").partition(" ")
        with self.lock:
            self.requests.append({"headers": {k.lower(): v for k, v in headers.items()}, "body": body})
            valid = scheme == self.scheme and time.monotonic() < self.tokens.get(token, 0.0)
            self.rejected += not valid
        if not valid:
            if self.hold is not None:
                self.hold.wait(timeout=30)
            return 401, {"error": {"message": "Token has expired", "code": 401}}
        time.sleep(self.delay)
        content = body["messages"][-1]["content"]
        match = ITEM.search(content)
        with self.lock:
            self.judged[match.group(0) if match else content] += 1
        return 200, {"id": "x", "object": "chat.completion", "model": body.get("model"),
                     "choices": [{"index": 0, "finish_reason": "stop", "message": {
                         "role": "assistant", "content": "[FEEDBACK] Ответ по делу. [RESULT] 2 [END]"}}],
                     "usage": {"prompt_tokens": 10, "completion_tokens": 5}}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.path == "/token":
                    self._send(200, server.issue().encode(), "text/plain")
                elif self.path == "/v1/chat/completions":
                    status, payload = server.chat(self.headers, json.loads(raw))
                    self._send(status, json.dumps(payload).encode(), "application/json")
                else:
                    self._send(404, b"{}", "application/json")

            def _send(self, status: int, data: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


TOKEN_SCRIPT = """\
import sys, urllib.request
request = urllib.request.Request(sys.argv[1], method="POST", data=b"scope=GIGACHAT_API_PERS")
print(urllib.request.urlopen(request, timeout=10).read().decode())
"""


def token_command(tmp_path: Path, server: AuthServer) -> list[str]:
    """An argv that prints a fresh token from the server, as `curl -s … | jq -r .access_token` would."""
    script = tmp_path / "get_token.py"
    script.write_text(TOKEN_SCRIPT)
    return [sys.executable, str(script), server.token_url]


def items(n: int) -> list[JudgeItem]:
    return [JudgeItem(instruction="Напиши стихотворение о весне.", answer=f"item-{i}",
                      criteria_name="Полезность", rubrics=RUBRICS) for i in range(n)]


def judge(spec: str, options: dict[str, Any], n: int) -> tuple[Any, list[Any]]:
    engine = load_engine(spec, {"timeout": 20, "backoff_base": 0.05, **options})
    return engine, engine.judge_many(items(n))


# -- the done-when: a run longer than the token lifetime ----------------------------------------


@pytest.mark.parametrize("ttl", [None, 0.3], ids=["renewed-on-401", "renewed-before-expiry"])
def test_a_run_longer_than_the_token_lifetime_judges_every_item_exactly_once(tmp_path: Path, ttl: float | None) -> None:
    # 60 items, 2 in flight, the server takes ≥ 0.05 s each: the run lasts ≥ 1.5 s; tokens live 0.5 s.
    with AuthServer(lifetime=0.5, delay=0.05) as server:
        options = {"base_url": server.url, "api_key_command": token_command(tmp_path, server), "concurrency": 2}
        if ttl is not None:
            options["api_key_ttl"] = ttl
        engine, verdicts = judge("openai:GigaChat-Max", options, 60)
    assert server.judged == Counter({f"item-{i}": 1 for i in range(60)})  # the server's count: once each
    assert [v.score for v in verdicts] == [2.0] * 60 and not any(v.error for v in verdicts)
    assert server.issued >= 3  # the run outlived several tokens …
    assert engine._keys.runs == server.issued  # … and each came from one run of the command
    assert engine.usage["failed_items"] == 0 and engine.usage["retries"] == 0  # a 401 is not a failure
    assert engine.usage["auth_resends"] == server.rejected
    if ttl is None:
        assert server.rejected >= server.issued - 1  # every renewal was asked for by a 401


def test_pollux_evaluate_outlives_its_tokens_and_stores_every_judgement_once(tmp_path: Path) -> None:
    """The same through the command line and the run database: `-o api_key_command=…` (a shell line)."""
    from typer.testing import CliRunner

    from pollux.cli import app
    from pollux.store import read_verdicts

    src = tmp_path / "answers.jsonl"
    src.write_text("".join(json.dumps({"id": f"q{i}", "model_id": "m", "instruction": "Напиши стихотворение.",
                                       "answer": f"item-{i}", "criteria_name": "Полезность", "rubrics": RUBRICS},
                                      ensure_ascii=False) + "\n" for i in range(30)), encoding="utf-8")
    db = tmp_path / "run.db"
    with AuthServer(lifetime=0.5, delay=0.05) as server:
        command = " ".join(shlex.quote(a) for a in token_command(tmp_path, server))
        result = CliRunner().invoke(app, [
            "evaluate", str(src), "--judge", "openai:GigaChat-Max", "--db", str(db), "--base-url", server.url,
            "--concurrency", "2", "--no-progress", "-o", f"api_key_command={command}",
            "-o", 'headers={"x-data-logging-enabled": false}'])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["judged"] == 30 and summary["failed"] == 0
    assert server.judged == Counter({f"item-{i}": 1 for i in range(30)}) and server.issued >= 2
    verdicts = read_verdicts(db)
    assert sorted(verdicts["record_id"]) == sorted(f"q{i}" for i in range(30)) and set(verdicts["score"]) == {2.0}


def test_requests_refused_the_same_key_at_once_share_one_run_of_the_command(tmp_path: Path) -> None:
    async def post_all(client: ChatClient, server: AuthServer) -> None:
        async with client:
            server.revoke()  # the key fetched on entry expires before any request is sent
            await asyncio.gather(*(client.post({"model": "m", "messages": [
                {"role": "user", "content": f"item-{i}"}]}) for i in range(8)))

    # each 401 is held until all 8 arrived: 8 requests refused key #1 at the same time
    with AuthServer(hold_401s=8) as server:
        keys = KeySource(token_command(tmp_path, server), name="gigachat")
        client = ChatClient(server.url, keys=keys, concurrency=8, max_retries=0)
        asyncio.run(post_all(client, server))
    assert server.rejected == 8
    assert keys.runs == server.issued == 2  # one run on entry, one for all eight 401s
    assert server.judged == Counter({f"item-{i}": 1 for i in range(8)})
    assert client.usage["auth_resends"] == 8 and client.usage["retries"] == 0
    # every resend carried the new key
    assert {r["headers"]["authorization"] for r in server.requests[8:]} == {"Bearer tok-2"}


def test_the_key_outlives_one_judge_many_call_and_is_not_part_of_the_configuration(tmp_path: Path) -> None:
    with AuthServer() as server:
        command = token_command(tmp_path, server)
        engine = load_engine("openai:m", {"base_url": server.url, "api_key_command": command,
                                          "headers": {"x-data-logging-enabled": "false"}})
        first, second = engine.judge_many(items(2)), engine.judge_many(items(3))
    assert [v.score for v in first + second] == [2.0] * 5
    assert server.issued == 1 and engine._keys.runs == 1  # no expiry, no 401: one key for both calls
    # how the endpoint authenticates does not change verdicts: a run resumes across a new key or command
    assert "api_key_command" not in json.dumps(engine.describe()) and "headers" not in engine.describe()


def test_a_key_the_server_keeps_refusing_is_an_error_not_a_loop(tmp_path: Path) -> None:
    with AuthServer(scheme="Api-Key") as server:  # the client says Bearer: every key is refused
        engine, verdicts = judge("openai:m", {"base_url": server.url,
                                              "api_key_command": token_command(tmp_path, server)}, 2)
    assert all(v.score is None and "HTTP 401" in (v.error or "") for v in verdicts)
    assert server.rejected == 2 * 3  # the first try and two resends with fresh keys, per item
    assert engine.usage["failed_items"] == 2


def test_a_shell_command_and_the_key_never_in_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with AuthServer(lifetime=0.3, delay=0.05) as server:
        command = " ".join(shlex.quote(a) for a in token_command(tmp_path, server))  # a shell line
        with caplog.at_level(logging.DEBUG):
            _, verdicts = judge("openai:m", {"base_url": server.url, "api_key_command": command,
                                             "concurrency": 1}, 12)
    assert [v.score for v in verdicts] == [2.0] * 12 and server.issued >= 2
    assert "api_key_command gave key #1" in caplog.text
    assert not re.search(r"tok-\d", caplog.text)  # the keys themselves are never logged


def test_a_failing_key_command_stops_the_run_with_its_reason(tmp_path: Path) -> None:
    failing = [sys.executable, "-c", "import sys; print('SECRET-ON-STDOUT'); sys.exit('bad client secret')"]
    with AuthServer() as server:
        engine = load_engine("openai:m", {"base_url": server.url, "api_key_command": failing})
        with pytest.raises(ApiError, match=r"api_key_command exited with status 1: bad client secret") as err:
            engine.judge_many(items(3))
    assert "SECRET" not in str(err.value) and not server.requests  # nothing was sent
    empty = load_engine("openai:m", {"base_url": server.url, "api_key_command": [sys.executable, "-c", "pass"]})
    with pytest.raises(ApiError, match="printed nothing"):
        empty.judge_many(items(1))


# -- static keys, other schemes, headers ---------------------------------------------------------


def test_api_key_scheme_headers_and_a_model_uri_reach_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """YandexGPT: `Authorization: Api-Key …`, a gpt:// model URI, `x-data-logging-enabled: false`."""
    monkeypatch.setenv("YC_API_KEY", "AQVN-secret")
    with AuthServer(scheme="Api-Key") as server:
        server.tokens["AQVN-secret"] = float("inf")
        _, verdicts = judge("openai:gpt://b1g-folder/yandexgpt/latest", {
            "base_url": server.url, "api_key_env": "YC_API_KEY", "auth_scheme": "Api-Key",
            "headers": '{"x-data-logging-enabled": false, "OpenAI-Project": "b1g-folder"}'}, 3)
    assert [v.score for v in verdicts] == [2.0] * 3
    for request in server.requests:
        assert request["headers"]["authorization"] == "Api-Key AQVN-secret"
        assert request["headers"]["x-data-logging-enabled"] == "false"
        assert request["headers"]["openai-project"] == "b1g-folder"
        assert request["body"]["model"] == "gpt://b1g-folder/yandexgpt/latest"


def test_auth_options_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tools that pass only a spec string get the options from POLLUX_API_* variables."""
    with AuthServer(lifetime=0.3) as server:
        monkeypatch.setenv("POLLUX_API_KEY_COMMAND", " ".join(map(shlex.quote, token_command(tmp_path, server))))
        monkeypatch.setenv("POLLUX_API_KEY_TTL", "600")
        monkeypatch.setenv("POLLUX_API_HEADERS", '{"x-client": "pollux"}')
        engine, verdicts = judge("openai:m", {"base_url": server.url}, 2)
    assert [v.score for v in verdicts] == [2.0, 2.0]
    assert engine.auth.api_key_ttl == 600 and dict(engine.auth.headers) == {"x-client": "pollux"}
    assert all(r["headers"]["x-client"] == "pollux" for r in server.requests)


@pytest.mark.parametrize(("options", "message"), [
    ({"headers": "{not json"}, "option 'headers' of openai: judges: headers: not a JSON object"),
    ({"headers": {"bad name": "x"}}, "'bad name' is not a valid header name"),
    ({"headers": {"x-a": "one\r\ntwo"}}, "headers.x-a: the value must be one line"),
    ({"headers": '["x-a", "1"]'}, "headers: expected a table of name = value, got ['x-a', '1']"),
    ({"api_key_ttl": 0}, "option 'api_key_ttl' of openai: judges: Input should be greater than 0"),
])
def test_bad_auth_options_are_named_before_anything_runs(options: dict[str, Any], message: str) -> None:
    with pytest.raises(OptionsError, match=re.escape(message)):
        load_engine("openai:m", {"base_url": "http://127.0.0.1:9/v1", **options})


def test_endpoint_auth_checks_each_field(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="api_key_ttl: only means something with api_key_command"):
        EndpointAuth.build(api_key_ttl=60)
    with pytest.raises(ValueError, match="auth_scheme: 'Api Key' is not one word"):
        EndpointAuth.build(auth_scheme="Api Key")
    with pytest.raises(ValueError, match="api_key_command: empty"):
        EndpointAuth.build(api_key_command="  ")
    with pytest.raises(ValueError, match=r"ca_bundle: .*missing\.pem' does not exist"):
        EndpointAuth.build(ca_bundle=tmp_path / "missing.pem")
    with pytest.raises(ValueError, match="an Authorization header and an API key"):
        ChatClient("http://127.0.0.1:9/v1", api_key="k", auth=EndpointAuth.build(headers={"Authorization": "x"}))
    auth = EndpointAuth.build(api_key_command=["get-token", "--scope", "x"], headers={"b": 1, "a": True})
    assert auth.headers == (("a", "true"), ("b", "1")) and hash(auth) == hash(EndpointAuth.build(
        api_key_command=("get-token", "--scope", "x"), headers={"a": "true", "b": "1"}))
    assert parse_headers("") == ()


# -- a custom CA bundle -------------------------------------------------------------------------


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made with `cryptography` if installed, else `openssl`."""
    cert, key = folder / "server.pem", folder / "server.key"
    try:
        _cryptography_cert(cert, key)
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("neither the cryptography package nor the openssl command is available to make a "
                        "self-signed certificate")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                        "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


def _cryptography_cert(cert_path: Path, key_path: Path) -> None:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))


def test_a_ca_bundle_verifies_a_server_the_default_cas_do_not_know(tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    with AuthServer(tls=tls) as server:
        server.tokens["corp-key"] = float("inf")
        options = {"base_url": server.url, "api_key": "corp-key", "max_retries": 0}
        _, untrusted = judge("openai:m", options, 2)
        _, trusted = judge("openai:m", {**options, "ca_bundle": str(cert)}, 2)
    assert all(v.score is None and "CERTIFICATE_VERIFY_FAILED" in (v.error or "") for v in untrusted)
    assert [v.score for v in trusted] == [2.0, 2.0]
    assert server.judged == Counter({"item-0": 1, "item-1": 1})  # only the trusted run got through
