"""One OpenAI-compatible chat-completions transport, shared by the judge engine and `pollux synth`.

Every caller that talks to a chat endpoint (the API judge, synth's generators, answer models and
teacher) needs the same things, so they live here once:

* at most `concurrency` requests in flight (an asyncio semaphore over one httpx client);
* retries with exponential backoff and jitter on 408/409/425/429/5xx, timeouts, connection errors
  and malformed replies, waiting at least what the server's `Retry-After` asks for;
* a one-time adaptation to hosted models that refuse `max_tokens` or a non-default temperature;
* token and request counts from each response's `usage`, summed into a shared `usage` dict;
* the endpoint's own auth (`EndpointAuth`): extra headers, an `Authorization` scheme other than
  `Bearer` (Yandex's `Api-Key`), a CA bundle for corporate TLS, and a key printed by a command
  (`KeySource`) that is rerun when its declared lifetime passes or the server answers 401 — hosted
  APIs such as GigaChat hand out access tokens that expire after 30 minutes, and a run must outlive
  them. A 401 is then resent with the fresh key and is not a failed attempt; requests that hit the
  same expired key share one rerun of the command.

A request that still fails raises `ApiError`; what to do with it (an error verdict, a counted drop)
is the caller's decision.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import ssl
import subprocess
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx

log = logging.getLogger("pollux.http")

# Statuses worth another try: the request was fine, the server was not (or was busy).
RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})

# Connections per httpx pool (see `__aenter__`).
POOL_SHARD = 8

USAGE_KEYS = ("requests", "retries", "prompt_tokens", "completion_tokens", "auth_resends")

# Resends of one request after a 401 with a fresh key; a key the server refuses again is an error.
AUTH_RESENDS = 2

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110): header names, auth schemes

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


def parse_headers(value: Any) -> tuple[tuple[str, str], ...]:
    """Extra request headers from a mapping or a JSON object string (the command line's `-o
    headers='{"x-data-logging-enabled": "false"}'`), as sorted (name, value) pairs. TOML and JSON
    booleans and numbers become their JSON text (`false`), which is what such headers expect."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as e:
            raise ValueError(f"headers: not a JSON object ({e.msg}): e.g. '{{\"x-name\": \"value\"}}'") from None
    if isinstance(value, tuple) and all(isinstance(p, tuple) and len(p) == 2 for p in value):
        value = dict(value)  # pairs, as `EndpointAuth.headers` keeps them
    if not isinstance(value, dict):
        raise ValueError(f"headers: expected a table of name = value, got {value!r}")
    pairs = []
    for name, raw in value.items():
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise ValueError(f"headers: {name!r} is not a valid header name")
        if isinstance(raw, bool | int | float):
            raw = json.dumps(raw)
        if not isinstance(raw, str) or "\r" in raw or "\n" in raw:
            raise ValueError(f"headers.{name}: the value must be one line of text")
        pairs.append((name, raw))
    return tuple(sorted(pairs))


@dataclass(frozen=True)
class EndpointAuth:
    """How to reach an endpoint that wants more than one static Bearer key (see module doc).

    Frozen and hashable: synth keys its shared backends by the model's config, which holds one.
    Build it with `EndpointAuth.build(...)`, which checks every field and names the bad one.
    """

    api_key_command: str | tuple[str, ...] | None = None  # a shell line, or an argv (no shell)
    api_key_ttl: float | None = None  # seconds a key from the command is used before it is rerun
    auth_scheme: str = "Bearer"
    headers: tuple[tuple[str, str], ...] = ()
    ca_bundle: str | None = None

    @classmethod
    def build(cls, *, api_key_command: Any = None, api_key_ttl: Any = None, auth_scheme: Any = None,
              headers: Any = None, ca_bundle: str | Path | None = None) -> EndpointAuth:
        """Check and normalise the options (as a TOML file or a command line gives them); a
        `ValueError` names the option and what is wrong."""
        command = _command(api_key_command)
        if api_key_ttl is not None:
            if command is None:
                raise ValueError("api_key_ttl: only means something with api_key_command")
            if isinstance(api_key_ttl, bool) or not isinstance(api_key_ttl, int | float) or not api_key_ttl > 0:
                raise ValueError(f"api_key_ttl: must be a number of seconds > 0, got {api_key_ttl!r}")
        scheme = "Bearer" if auth_scheme is None else auth_scheme
        if not isinstance(scheme, str) or not _TOKEN.fullmatch(scheme.strip()):
            raise ValueError(f"auth_scheme: {auth_scheme!r} is not one word such as Bearer or Api-Key")
        bundle = None
        if ca_bundle is not None and str(ca_bundle).strip():
            path = Path(ca_bundle).expanduser()
            if not path.exists():
                raise ValueError(f"ca_bundle: {str(path)!r} does not exist (a PEM file or a folder of CA certificates)")
            bundle = str(path.resolve())
        return cls(api_key_command=command, api_key_ttl=None if api_key_ttl is None else float(api_key_ttl),
                   auth_scheme=scheme.strip(), headers=parse_headers(headers or {}), ca_bundle=bundle)

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS verification: the CA bundle's certificates instead of the default ones, if set."""
        if self.ca_bundle is None:
            return httpx.create_ssl_context()
        try:
            if Path(self.ca_bundle).is_dir():
                return ssl.create_default_context(capath=self.ca_bundle)
            return ssl.create_default_context(cafile=self.ca_bundle)
        except (OSError, ssl.SSLError) as e:
            raise ValueError(f"ca_bundle: cannot load {self.ca_bundle!r}: {e}") from None


def _command(value: Any) -> str | tuple[str, ...] | None:
    """`api_key_command` as a shell line (a string) or an argv (a list of strings, no shell)."""
    if value is None:
        return None
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("api_key_command: empty")
        return value.strip()
    if isinstance(value, list | tuple) and value and all(isinstance(a, str) and a for a in value):
        return tuple(value)
    raise ValueError(f"api_key_command: expected a shell command or a non-empty list of arguments, got {value!r}")


class KeySource:
    """An API key printed by a command, rerun when the key's lifetime (`ttl`) passes or when the
    server refuses it (`key(stale=generation)`). Thread-safe and loop-free, so one source can serve
    several `ChatClient`s (an engine's successive runs) and threads; the lock makes requests that
    need a new key at the same time share one run of the command. The key is never logged."""

    def __init__(self, command: str | tuple[str, ...], *, ttl: float | None = None, timeout: float = 60.0,
                 name: str = "chat"):
        self.command = command
        self.ttl = ttl
        self.timeout = timeout
        self.name = name
        self.runs = 0  # times the command ran (successfully or not)
        self._state: tuple[str, int, float] | None = None  # key, generation, when fetched (monotonic)
        self._lock = threading.Lock()
        self._failure: tuple[int, ApiError] | None = None  # the run number that failed, and how

    def peek(self) -> tuple[str, int] | None:
        """The current key and its generation if it is still within its lifetime (no lock, no run)."""
        state = self._state  # one read: the tuple is replaced whole
        if state is None or (self.ttl is not None and time.monotonic() - state[2] >= self.ttl):
            return None
        return state[0], state[1]

    def key(self, stale: int | None = None) -> tuple[str, int]:
        """A usable key and its generation. `stale`: the generation the server just refused — the
        command is rerun unless another caller already replaced that key. Blocking (runs the
        command): from async code call it in a thread."""
        runs_before = self.runs
        with self._lock:
            current = self.peek()
            if current is not None and current[1] != stale:
                return current
            if self._failure is not None and self._failure[0] > runs_before:
                raise self._failure[1]  # it failed while we waited for the lock: don't run it again at once
            return self._run()

    def _run(self) -> tuple[str, int]:
        self.runs += 1
        try:
            key = self._output()
        except ApiError as e:
            self._failure = (self.runs, e)
            raise
        generation = self._state[1] + 1 if self._state else 1
        self._state = (key, generation, time.monotonic())
        log.info("%s: api_key_command gave key #%d", self.name, generation)
        return key, generation

    def _output(self) -> str:
        shell = isinstance(self.command, str)
        what = f"{self.name}: api_key_command"
        try:
            done = subprocess.run(self.command, shell=shell, capture_output=True, text=True, timeout=self.timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise ApiError(f"{what} did not finish in {self.timeout:g} s") from None
        except OSError as e:
            raise ApiError(f"{what} could not start: {e}") from None
        if done.returncode != 0:
            err = done.stderr.strip().replace("\n", " ")[-300:]
            raise ApiError(f"{what} exited with status {done.returncode}: {err or '(no stderr)'}")
        key = done.stdout.strip()
        if not key:
            raise ApiError(f"{what} printed nothing (it must print the key on stdout)")
        if any(c.isspace() for c in key):  # a header value must be one token; the text is not echoed
            raise ApiError(f"{what} printed more than one word (it must print only the key)")
        return key


class ChatClient:
    """Post chat-completion payloads to `{base_url}/chat/completions` with retries (see module doc).

    Use it as an async context manager (`async with ChatClient(...) as client:`): the httpx client
    and the semaphore belong to one event loop. `usage` and `adaptations` may be passed in so that an
    owner (an engine) keeps totals over many clients, and so may `keys` (a `KeySource`), so that
    its key outlives one client; otherwise `auth.api_key_command` gets a source of this client's own.
    A key from a command wins over a static `api_key`.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        auth: EndpointAuth | None = None,
        keys: KeySource | None = None,
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
        self.auth = auth or EndpointAuth()
        if keys is None and self.auth.api_key_command is not None:
            keys = KeySource(self.auth.api_key_command, ttl=self.auth.api_key_ttl, timeout=timeout, name=name)
        self.keys = keys
        if (api_key or keys) and any(k.lower() == "authorization" for k, _ in self.auth.headers):
            raise ValueError("headers: an Authorization header and an API key (or api_key_command) both set it")
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
        headers = dict(self.auth.headers)
        if self.api_key and self.keys is None:
            headers["Authorization"] = f"{self.auth.auth_scheme} {self.api_key}"
        elif self.keys is not None and self.keys.peek() is None:
            await asyncio.to_thread(self.keys.key)  # a command that cannot give a key stops the run here
        # Several small connection pools instead of one big one: httpcore's pool does work quadratic in
        # its size on every request (it cost ~45% of the client's CPU at 32 connections).
        shards = -(-self.concurrency // POOL_SHARD)
        sizes = [len(range(i, self.concurrency, shards)) for i in range(shards)]
        tls = self.auth.ssl_context()  # loading the CA bundle takes ~0.1 s: once, not per pool
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
        attempt = adapted = resent = 0
        while True:
            retry_after: float | None = None
            self.usage["requests"] += 1
            response, generation, last = await self._send(payload)
            if response is not None:
                status = response.status_code
                if status == 200:
                    try:
                        return self._parse(response)
                    except ValueError as e:
                        last = f"malformed response: {e}"
                elif status in RETRY_STATUSES or status >= 500:
                    last = f"HTTP {status}: {_snippet(response)}"
                    retry_after = parse_retry_after(response.headers.get("retry-after"))
                elif status == 400 and adapted < 2 and self._adapt(payload, response):
                    adapted += 1  # not a failure: resend at once with what the server accepts
                    continue
                elif status == 401 and self.keys is not None and generation and resent < AUTH_RESENDS:
                    resent += 1  # an expired key is not a failure: resend at once with a fresh one
                    await self._renew_key(generation)
                    continue
                else:
                    raise ApiError(f"HTTP {status} from {self.url}: {_snippet(response)}")
            if attempt == self.max_retries:
                break
            attempt += 1
            self.usage["retries"] += 1
            delay = self._backoff(attempt - 1, retry_after)
            log.info("%s: attempt %d failed (%s); retrying in %.2f s", self.name, attempt, last, delay)
            await asyncio.sleep(delay)
        raise ApiError(f"gave up after {self.max_retries + 1} attempt(s) at {self.url}; last error: {last}")

    async def _send(self, payload: dict[str, Any]) -> tuple[httpx.Response | None, int, str]:
        """One HTTP request: the response (any status), the generation of the command's key it
        carried (0: a static key or none), or no response and why."""
        headers: dict[str, str] | None = None
        generation = 0
        if self.keys is not None:  # the key is per request: it changes during a run
            current = self.keys.peek()
            if current is None:
                current = await asyncio.to_thread(self.keys.key)
            key, generation = current
            headers = {"Authorization": f"{self.auth.auth_scheme} {key}"}
        shard = self._free.index(max(self._free))  # the pool with the most free connections
        self._free[shard] -= 1
        try:
            async with asyncio.timeout(self.timeout):  # a total deadline, not per read
                response = await self._clients[shard].post(self.url, json=payload, headers=headers)
        except (TimeoutError, httpx.TimeoutException):
            return None, generation, f"timed out after {self.timeout:g} s"
        except httpx.TransportError as e:
            return None, generation, f"connection error: {type(e).__name__}: {e}"
        finally:
            self._free[shard] += 1
        return response, generation, ""

    async def _renew_key(self, generation: int) -> None:
        """After a 401 with key `generation`: a new key from the command (one run shared by every
        request that was refused the same key)."""
        assert self.keys is not None
        self.usage["auth_resends"] += 1
        log.info("%s: HTTP 401 with key #%d; getting a fresh key and resending", self.name, generation)
        await asyncio.to_thread(self.keys.key, generation)

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
