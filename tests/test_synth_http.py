"""`pollux.engine.http_chat.ChatClient` — the transport synth's endpoints use — against the fake server
in its own process: the concurrency bound holds and is reached with the connections split over pools.
Endpoints with their own auth (expiring tokens, Api-Key, headers, a CA bundle) use tests/test_http_auth.py's
token-issuing server through synth's `[models.X]` config and the registry's chat model (`load_chat`)."""

from __future__ import annotations

import asyncio
import json
import re
import ssl
from collections import Counter
from pathlib import Path

import httpx
import pytest

from pollux.engine.http_chat import ApiError, ChatClient
from pollux.engine.registry import load_chat
from pollux.synth.config import SynthConfigError, load_config
from synth_fakes import FakeServer
from test_http_auth import AuthServer, self_signed_cert, token_command


async def _post_all(url: str, n: int, concurrency: int) -> ChatClient:
    async with ChatClient(url, concurrency=concurrency, max_retries=0) as client:
        replies = await asyncio.gather(*(client.post({"model": "m", "seed": i, "messages": [
            {"role": "user", "content": f"Расскажи про вопрос {i}"}]}) for i in range(n)))
    assert all(r.text and r.completion_tokens > 0 for r in replies)
    return client


@pytest.mark.parametrize("concurrency", [3, 20])
def test_in_flight_requests_reach_but_never_exceed_the_concurrency(concurrency: int) -> None:
    with FakeServer("--delay", "0.3") as server:
        client = asyncio.run(_post_all(server.url, 3 * concurrency, concurrency))
        health = httpx.get(server.url.removesuffix("/v1") + "/health").json()
    assert health["max_active"] == concurrency
    assert client.usage["requests"] == 3 * concurrency and client.usage["retries"] == 0
    assert client.usage["prompt_tokens"] > 0


def test_a_refusing_server_raises_api_error_after_the_retries() -> None:
    async def post(url: str) -> None:
        async with ChatClient(url, max_retries=2, backoff_base=0.01) as client:
            try:
                await client.post({"model": "m", "messages": [{"role": "user", "content": "привет"}]})
            finally:
                assert client.usage["requests"] == 3 and client.usage["retries"] == 2

    with FakeServer("--refuse") as server, pytest.raises(ApiError, match=r"gave up after 3 attempt\(s\).*HTTP 503"):
        asyncio.run(post(server.url))


# -- endpoints with their own auth: the same EndpointAuth options and transport as the openai: judge --------


def _config(tmp_path: Path, models: str) -> Path:
    path = tmp_path / "synth.toml"
    path.write_text(f'[run]\ndir = "run"\n\n{models}', encoding="utf-8")
    return path


def test_a_synth_model_outlives_its_tokens_and_sends_its_headers(tmp_path: Path) -> None:
    """[models.X] api_key_command / api_key_ttl / headers reach the server through the registry's chat
    model: a batch longer than the token lifetime gets every request answered exactly once."""
    with AuthServer(lifetime=0.5, delay=0.05) as server:
        command = token_command(tmp_path, server)
        path = _config(tmp_path, f"""[models.teacher]
model = "GigaChat-Max"
base_url = "{server.url}"
api_key_command = {json.dumps(command)}
api_key_ttl = 0.3
concurrency = 2
headers = {{ x-data-logging-enabled = false }}
""")
        model = load_config(path).models["teacher"]
        assert model.auth.headers == (("x-data-logging-enabled", "false"),) and model.auth.api_key_ttl == 0.3
        backend = load_chat(model.model, model.chat_options())
        try:
            rows = backend.generate([{"key": f"k{i}", "messages": [{"role": "user", "content": f"item-{i}"}],
                                      "temperature": 0.0, "max_tokens": 16, "seed": 0} for i in range(40)])
        finally:
            backend.close()
    assert server.judged == Counter({f"item-{i}": 1 for i in range(40)})  # the server's count
    assert all(r["error"] is None and r["text"] for r in rows)
    assert server.issued >= 3 and backend.client.keys is not None and backend.client.keys.runs == server.issued
    assert all(r["headers"]["x-data-logging-enabled"] == "false" for r in server.requests)


def test_a_synth_model_with_the_api_key_scheme_and_a_ca_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = self_signed_cert(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    monkeypatch.setenv("YC_KEY", "AQVN-secret")
    with AuthServer(scheme="Api-Key", tls=tls) as server:
        server.tokens["AQVN-secret"] = float("inf")
        path = _config(tmp_path, f"""[models.yandex]
model = "gpt://b1g/yandexgpt/latest"
base_url = "{server.url}"
api_key_env = "YC_KEY"
auth_scheme = "Api-Key"
ca_bundle = "{cert.name}"
""")
        model = load_config(path).models["yandex"]
        backend = load_chat(model.model, model.chat_options())  # ca_bundle: relative to the config's folder
        try:
            rows = backend.generate([{"key": "k", "messages": [{"role": "user", "content": "item-0"}],
                                      "temperature": 0.0, "max_tokens": 16, "seed": 0}])
        finally:
            backend.close()
    assert rows[0]["error"] is None and server.judged == Counter({"item-0": 1})
    assert server.requests[0]["headers"]["authorization"] == "Api-Key AQVN-secret"
    assert server.requests[0]["body"]["model"] == "gpt://b1g/yandexgpt/latest"


@pytest.mark.parametrize(("lines", "message"), [
    ('api_key_env = "K"\napi_key_command = "get-token"', "models.m: api_key_env and api_key_command both"),
    ('api_key_ttl = 60', "models.m.api_key_ttl: only means something with api_key_command"),
    ('api_key_command = "t"\napi_key_ttl = "soon"', "models.m.api_key_ttl: must be a number of seconds > 0"),
    ('auth_scheme = "Api Key"', "models.m.auth_scheme: 'Api Key' is not one word"),
    ('headers = { "bad name" = "x" }', "models.m.headers: 'bad name' is not a valid header name"),
    ('headers = "x"', "models.m.headers: not a JSON object"),
    ('ca_bundle = "missing.pem"', "models.m.ca_bundle: "),
])
def test_bad_auth_keys_in_a_synth_config_name_the_model_and_key(tmp_path: Path, lines: str, message: str) -> None:
    path = _config(tmp_path, f'[models.m]\nmodel = "m"\nbase_url = "http://127.0.0.1:9/v1"\n{lines}\n')
    with pytest.raises(SynthConfigError, match=re.escape(message)):
        load_config(path)
