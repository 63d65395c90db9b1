"""`pollux.engine.http_chat.ChatClient` — the transport synth's endpoints use — against the fake server
in its own process: the concurrency bound holds and is reached with the connections split over pools."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from pollux.engine.http_chat import ApiError, ChatClient
from synth_fakes import FakeServer


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
