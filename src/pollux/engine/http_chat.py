"""One OpenAI-compatible chat-completions transport, shared by the judge engine and `pollux synth`.

Every caller that talks to a chat endpoint (the API judge, synth's generators, answer models and
teacher) needs the same things, so they live here once:

* at most `concurrency` requests in flight (an asyncio semaphore over one httpx client);
* retries with exponential backoff and jitter on 408/409/425/429/5xx, timeouts, connection errors
  and malformed replies, waiting at least what the server's `Retry-After` asks for;
* a one-time adaptation to hosted models that refuse `max_tokens` or a non-default temperature;
* token and request counts from each response's `usage`, summed into a shared `usage` dict.

A request that still fails raises `ApiError`; what to do with it (an error verdict, a counted drop)
is the caller's decision.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import httpx

log = logging.getLogger("pollux.http")

# Statuses worth another try: the request was fine, the server was not (or was busy).
RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})

# Connections per httpx pool (see `__aenter__`).
POOL_SHARD = 8

USAGE_KEYS = ("requests", "retries", "prompt_tokens", "completion_tokens")

T = TypeVar("T")


class ApiError(RuntimeError):
    """A request that failed for good (after retries, or with a status not worth retrying)."""


@dataclass
class ChatReply:
    """One chat completion: the text, its token counts and the whole decoded body (for extensions
    such as `pollux serve`'s `pollux.head_score`)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    data: dict[str, Any] = field(default_factory=dict)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a `Retry-After` header (seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class ChatClient:
    """Post chat-completion payloads to `{base_url}/chat/completions` with retries (see module doc).

    Use it as an async context manager (`async with ChatClient(...) as client:`): the httpx client
    and the semaphore belong to one event loop. `usage` and `adaptations` may be passed in so that an
    owner (an engine) keeps totals over many clients.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout: float = 60.0,
        max_retries: int = 6,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        retry_after_max: float = 120.0,
        name: str = "chat",
        usage: dict[str, int] | None = None,
        adaptations: set[str] | None = None,
    ):
        if concurrency < 1:
            raise ValueError("concurrency must be ≥ 1")
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        if max_retries < 0:
            raise ValueError("max_retries must be ≥ 0")
        self.url = f"{base_url.rstrip('/')}/chat/completions"
        self.api_key = api_key
        self.concurrency = concurrency
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.retry_after_max = retry_after_max
        self.name = name
        self.usage = usage if usage is not None else {}
        for key in USAGE_KEYS:
            self.usage.setdefault(key, 0)
        # Request parameters the server refused and we changed (see `_adapt`).
        self.adaptations = adaptations if adaptations is not None else set()
        self._rng = random.Random()
        self._clients: list[httpx.AsyncClient] = []
        self._free: list[int] = []  # free connections per pool
        self._semaphore: asyncio.Semaphore | None = None

    async def __aenter__(self) -> ChatClient:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        # Several small connection pools instead of one big one: httpcore's pool does work quadratic in
        # its size on every request (it cost ~45% of the client's CPU at 32 connections).
        shards = -(-self.concurrency // POOL_SHARD)
        sizes = [len(range(i, self.concurrency, shards)) for i in range(shards)]
        tls = httpx.create_ssl_context()  # loading the CA bundle takes ~0.1 s: once, not per pool
        self._clients = [httpx.AsyncClient(headers=headers, timeout=self.timeout, verify=tls,
                                           limits=httpx.Limits(max_connections=n, max_keepalive_connections=n))
                         for n in sizes]
        self._free = sizes
        self._semaphore = asyncio.Semaphore(self.concurrency)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for client in self._clients:
            await client.aclose()
        self._clients, self._free, self._semaphore = [], [], None

    @property
    def semaphore(self) -> asyncio.Semaphore:
        """The in-flight bound; a caller that makes several requests per item (re-asks) may hold a
        slot for the whole item instead of per request — then it calls `post(..., hold=False)`."""
        if self._semaphore is None:
            raise RuntimeError("ChatClient used outside `async with`")
        return self._semaphore

    async def post(self, payload: dict[str, Any], *, hold: bool = True) -> ChatReply:
        """One chat completion with retries; `hold=True` takes a concurrency slot for each attempt."""
        if not hold:
            return await self._post(payload)
        async with self.semaphore:
            return await self._post(payload)

    def apply_adaptations(self, payload: dict[str, Any]) -> None:
        """Rewrite a payload with what the server is known to accept."""
        if "max_completion_tokens" in self.adaptations and "max_tokens" in payload:
            payload["max_completion_tokens"] = payload.pop("max_tokens")
        if "no_temperature" in self.adaptations:
            payload.pop("temperature", None)

    def _adapt(self, payload: dict[str, Any], response: httpx.Response) -> bool:
        """Some hosted models (OpenAI's reasoning models) refuse `max_tokens` or any temperature but
        their default, and say so in a 400. Learn that once, fix the payload, and resend."""
        message = response.text.lower()
        learned: set[str] = set()
        if "max_completion_tokens" in message and "max_tokens" in payload:
            learned.add("max_completion_tokens")
        if "temperature" in message and "unsupported" in message and "temperature" in payload:
            learned.add("no_temperature")
        if not learned:  # only what this payload still has: a second refusal is a real error
            return False
        if learned - self.adaptations:
            log.warning("%s: the server refused a parameter; adapting: %s", self.name, sorted(learned))
        self.adaptations |= learned
        self.apply_adaptations(payload)
        return True

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter; never shorter than the server's Retry-After."""
        cap = min(self.backoff_max, self.backoff_base * 2**attempt)
        delay = cap / 2 + self._rng.uniform(0, cap / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.retry_after_max) + self._rng.uniform(0, 0.1 * cap))
        return delay

    async def _post(self, payload: dict[str, Any]) -> ChatReply:
        if not self._clients:
            raise RuntimeError("ChatClient used outside `async with`")
        self.apply_adaptations(payload)
        last = "no attempt made"
        attempt = adapted = 0
        while True:
            retry_after: float | None = None
            self.usage["requests"] += 1
            try:
                shard = self._free.index(max(self._free))  # the pool with the most free connections
                self._free[shard] -= 1
                try:
                    async with asyncio.timeout(self.timeout):  # a total deadline, not per read
                        response = await self._clients[shard].post(self.url, json=payload)
                finally:
                    self._free[shard] += 1
            except (TimeoutError, httpx.TimeoutException):
                last = f"timed out after {self.timeout:g} s"
            except httpx.TransportError as e:
                last = f"connection error: {type(e).__name__}: {e}"
            else:
                if response.status_code == 200:
                    try:
                        return self._parse(response)
                    except ValueError as e:
                        last = f"malformed response: {e}"
                elif response.status_code in RETRY_STATUSES or response.status_code >= 500:
                    last = f"HTTP {response.status_code}: {_snippet(response)}"
                    retry_after = parse_retry_after(response.headers.get("retry-after"))
                elif response.status_code == 400 and adapted < 2 and self._adapt(payload, response):
                    adapted += 1  # not a failure: resend at once with what the server accepts
                    continue
                else:
                    raise ApiError(f"HTTP {response.status_code} from {self.url}: {_snippet(response)}")
            if attempt == self.max_retries:
                break
            attempt += 1
            self.usage["retries"] += 1
            delay = self._backoff(attempt - 1, retry_after)
            log.info("%s: attempt %d failed (%s); retrying in %.2f s", self.name, attempt, last, delay)
            await asyncio.sleep(delay)
        raise ApiError(f"gave up after {self.max_retries + 1} attempt(s) at {self.url}; last error: {last}")

    def _parse(self, response: httpx.Response) -> ChatReply:
        try:
            data = response.json()
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
            raise ValueError(f"not a chat completion ({type(e).__name__}: {e}): {_snippet(response)}") from None
        usage = data.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        completion_tokens = int(usage.get("completion_tokens") or 0)
        self.usage["prompt_tokens"] += prompt_tokens
        self.usage["completion_tokens"] += completion_tokens
        return ChatReply(text=text, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                         finish_reason=choice.get("finish_reason"), data=data)


def run_coroutine(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion from synchronous code; inside a running event loop, in a private
    thread (so a synchronous API stays usable from notebooks and async servers)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = asyncio.run(coro)
        except BaseException as e:
            box["error"] = e

    thread = threading.Thread(target=target, name="pollux-http", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def _snippet(response: httpx.Response, limit: int = 300) -> str:
    text = response.text.strip().replace("\n", " ")
    return text[:limit] + ("…" if len(text) > limit else "")
