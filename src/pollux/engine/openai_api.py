"""A judge behind any OpenAI-compatible chat-completions endpoint (vLLM, `pollux serve`, hosted APIs).

Big judges run on GPU servers and reference judges (GPT-4o, DeepSeek-R1) are APIs, so an
evaluation run is thousands of HTTP calls, and some of them fail: rate limits (429), server
errors (5xx), timeouts, dropped connections. This engine makes each item one chat request and
keeps going through all of that:

* at most `concurrency` requests in flight (an asyncio semaphore over one httpx client);
* retries with exponential backoff and jitter on 408/429/5xx, timeouts and connection errors,
  waiting at least what the server's `Retry-After` asks for;
* a bounded re-ask (`max_reasks`) when the reply has no score in `[RESULT] n [END]`;
* token accounting from each response's `usage`, summed over retries and re-asks;
* an item that still fails becomes an `error_verdict` — the other items are unaffected, and an
  evaluation run re-judges it on resume.

Options left unset (concurrency, timeout, max_retries, max_reasks, prompt_style) are read from
`POLLUX_API_*` environment variables (`ENV_DEFAULTS`), the base URL from `OPENAI_BASE_URL` and the
key from `OPENAI_API_KEY`, so command-line verbs that only pass a spec string can use them all.

Prompt styles: "pollux" sends the judge prompt as is (a POLLUX judge reads exactly one user
message); "general" wraps it in Russian instructions that ask a general-purpose LLM to answer in
the POLLUX format `[FEEDBACK] … [RESULT] n [END]`.

A `pollux serve` server adds a non-standard `pollux` object to its chat-completion responses
with the regression head's score (`head_score`); when present it becomes the verdict's
`head_score`, so a `-r` judge behind HTTP scores exactly as in-process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from pollux.engine import OnVerdict, SamplingParams
from pollux.prompts import PromptTemplate
from pollux.records import JudgeItem
from pollux.verdicts import Verdict, error_verdict, make_verdict

log = logging.getLogger("pollux.openai")

# Statuses worth another try: the request was fine, the server was not (or was busy).
RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})

GENERAL_PROMPT = (
    "Ты — строгий и беспристрастный эксперт, который оценивает ответы языковых моделей. "
    "Ниже даны задание, эталонный ответ (может отсутствовать), ответ для оценки, ОДИН критерий "
    "и шкала оценивания по этому критерию. Оцени ответ только по этому критерию, строго по шкале.\n\n"
    "{prompt}\n\n"
    "Сначала кратко обоснуй оценку на русском языке, затем поставь один балл из шкалы. "
    "Ответь строго в формате:\n"
    "[FEEDBACK] <обоснование> [RESULT] <балл числом> [END]\n"
    "Ничего не пиши после [END]."
)

REASK_PROMPT = (
    "В твоём ответе нет оценки в требуемом формате. Повтори оценку строго в формате:\n"
    "[FEEDBACK] <обоснование> [RESULT] <балл числом> [END]"
)

# Temperature for re-asking a POLLUX judge: at temperature 0 the same prompt gives the same text.
POLLUX_REASK_TEMPERATURE = 0.3

PROMPT_STYLES = ("pollux", "general")

# Options a caller did not pass are read from these environment variables, so that every tool that
# builds a judge from a spec string (`pollux evaluate`, `pollux meta-eval`, scripts) can set them.
ENV_DEFAULTS: dict[str, tuple[str, Any]] = {
    "concurrency": ("POLLUX_API_CONCURRENCY", 8),
    "timeout": ("POLLUX_API_TIMEOUT", 60.0),
    "max_retries": ("POLLUX_API_MAX_RETRIES", 6),
    "max_reasks": ("POLLUX_API_MAX_REASKS", 1),
    "prompt_style": ("POLLUX_API_PROMPT_STYLE", "pollux"),
}


class ApiError(RuntimeError):
    """A request that failed for good (after retries, or with a status not worth retrying)."""


@dataclass
class _Reply:
    text: str
    head_score: float | None
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None


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


class OpenAIEngine:
    """Judge items through an OpenAI-compatible `/chat/completions` endpoint (see module doc)."""

    kind = "api"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        api_key_env: str | None = None,
        concurrency: int | None = None,
        timeout: float | None = None,
        max_retries: int | None = None,
        max_reasks: int | None = None,
        template: PromptTemplate | None = None,
        sampling: SamplingParams | None = None,
        prompt_style: str | None = None,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        retry_after_max: float = 120.0,
    ):
        if not model:
            raise ValueError("openai engine: the model name is empty (use openai:MODEL)")
        # Unset options come from POLLUX_API_* variables (see ENV_DEFAULTS), then the defaults.
        concurrency = _option(concurrency, "concurrency", int)
        timeout = _option(timeout, "timeout", float)
        max_retries = _option(max_retries, "max_retries", int)
        max_reasks = _option(max_reasks, "max_reasks", int)
        prompt_style = _option(prompt_style, "prompt_style", str)
        if prompt_style not in PROMPT_STYLES:
            raise ValueError(f"prompt_style must be one of {PROMPT_STYLES}, got {prompt_style!r}")
        if concurrency < 1:
            raise ValueError("concurrency must be ≥ 1")
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        if max_retries < 0 or max_reasks < 0:
            raise ValueError("max_retries and max_reasks must be ≥ 0")
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
        self.api_key = _resolve_key(api_key, api_key_env)
        self.concurrency = concurrency
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.max_reasks = max_reasks
        self.template = template or PromptTemplate()
        self.sampling = sampling or SamplingParams()
        self.prompt_style = prompt_style
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.retry_after_max = retry_after_max
        self.name = f"openai:{model}"
        # Totals over this engine's life (all judge_many calls): what the run cost and how bumpy it was.
        self.usage: dict[str, int] = dict.fromkeys(
            ("requests", "retries", "reasks", "failed_items", "prompt_tokens", "completion_tokens"), 0
        )
        self._rng = random.Random()
        # Request parameters the server refused and we changed (see `_adapt`).
        self.adaptations: set[str] = set()

    # -- the Engine protocol ------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """What changes verdicts. Not the base URL (a restarted server on another port, or a proxy,
        serves the same judge: a run must resume across that) nor timeouts/retries/concurrency."""
        return {
            "engine": "openai",
            "model": self.model,
            "prompt_style": self.prompt_style,
            "template": self.template.to_dict(),
            "sampling": self.sampling.to_dict(),
            "max_reasks": self.max_reasks,
        }

    def judge_many(self, items: Sequence[JudgeItem], on_verdict: OnVerdict | None = None) -> list[Verdict]:
        """Judge all items concurrently; `on_verdict(i, verdict)` runs as each one completes.

        Runs its own event loop in the calling thread, so callbacks (e.g. SQLite writes) stay in
        the caller's thread. Called from inside a running loop it uses a private thread instead.
        """
        if not items:
            return []
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._judge_all(items, on_verdict))
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["result"] = asyncio.run(self._judge_all(items, on_verdict))
            except BaseException as e:
                box["error"] = e

        thread = threading.Thread(target=target, name="pollux-openai", daemon=True)
        thread.start()
        thread.join()
        if "error" in box:
            raise box["error"]
        return box["result"]

    # -- internals ----------------------------------------------------------------------------

    def messages_for(self, item: JudgeItem) -> list[dict[str, str]]:
        prompt = self.template.render(item)
        if self.prompt_style == "general":
            prompt = GENERAL_PROMPT.format(prompt=prompt)
        return [{"role": "user", "content": prompt}]

    async def _judge_all(self, items: Sequence[JudgeItem], on_verdict: OnVerdict | None) -> list[Verdict]:
        results: list[Verdict | None] = [None] * len(items)
        semaphore = asyncio.Semaphore(self.concurrency)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        async with httpx.AsyncClient(headers=headers, timeout=self.timeout, limits=limits) as client:

            async def one(i: int) -> None:
                async with semaphore:
                    verdict = await self._judge_one(client, items[i])
                results[i] = verdict
                if on_verdict is not None:
                    on_verdict(i, verdict)

            try:
                async with asyncio.TaskGroup() as group:
                    for i in range(len(items)):
                        group.create_task(one(i))
            except BaseExceptionGroup as eg:  # a callback failed: surface its own exception
                raise eg.exceptions[0] from None
        return [v for v in results if v is not None]

    async def _judge_one(self, client: httpx.AsyncClient, item: JudgeItem) -> Verdict:
        started = time.perf_counter()
        messages = self.messages_for(item)
        prompt_tokens = completion_tokens = 0
        verdict: Verdict | None = None
        for ask in range(self.max_reasks + 1):
            if ask:
                self.usage["reasks"] += 1
            try:
                reply = await self._post(client, self._payload(messages, reask=ask > 0))
            except ApiError as e:
                self.usage["failed_items"] += 1
                log.warning("%s: item %s failed: %s", self.name, item.key, e)
                return error_verdict(item, str(e), judge=self.name, prompt_tokens=prompt_tokens)
            prompt_tokens += reply.prompt_tokens
            completion_tokens += reply.completion_tokens
            verdict = make_verdict(
                item,
                reply.text,
                head_score=reply.head_score,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                finish_reason=reply.finish_reason,
                time_s=time.perf_counter() - started,
                judge=self.name,
            )
            if verdict.score is not None:
                break
            if self.prompt_style == "general":  # a conversational model can be told what was wrong
                messages = [*messages, {"role": "assistant", "content": reply.text},
                            {"role": "user", "content": REASK_PROMPT}]
        assert verdict is not None
        return verdict

    def _payload(self, messages: list[dict[str, str]], *, reask: bool) -> dict[str, Any]:
        temperature = self.sampling.temperature
        if reask and self.prompt_style == "pollux":
            temperature = max(temperature, POLLUX_REASK_TEMPERATURE)
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": self.sampling.max_new_tokens,
            "temperature": temperature,
        }
        if self.sampling.top_p < 1:
            payload["top_p"] = self.sampling.top_p
        self._apply_adaptations(payload)
        return payload

    def _apply_adaptations(self, payload: dict[str, Any]) -> None:
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
        self._apply_adaptations(payload)
        return True

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter; never shorter than the server's Retry-After."""
        cap = min(self.backoff_max, self.backoff_base * 2**attempt)
        delay = cap / 2 + self._rng.uniform(0, cap / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.retry_after_max) + self._rng.uniform(0, 0.1 * cap))
        return delay

    async def _post(self, client: httpx.AsyncClient, payload: dict[str, Any]) -> _Reply:
        url = f"{self.base_url}/chat/completions"
        last = "no attempt made"
        attempt = adapted = 0
        while True:
            retry_after: float | None = None
            self.usage["requests"] += 1
            try:
                async with asyncio.timeout(self.timeout):  # a total deadline, not per read
                    response = await client.post(url, json=payload)
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
                    raise ApiError(f"HTTP {response.status_code} from {url}: {_snippet(response)}")
            if attempt == self.max_retries:
                break
            attempt += 1
            self.usage["retries"] += 1
            delay = self._backoff(attempt - 1, retry_after)
            log.info("%s: attempt %d failed (%s); retrying in %.2f s", self.name, attempt, last, delay)
            await asyncio.sleep(delay)
        raise ApiError(f"gave up after {self.max_retries + 1} attempt(s) at {url}; last error: {last}")

    def _parse(self, response: httpx.Response) -> _Reply:
        try:
            data = response.json()
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
            raise ValueError(f"not a chat completion ({type(e).__name__}: {e}): {_snippet(response)}") from None
        usage = data.get("usage") or {}
        extra = data.get("pollux") or {}
        head = extra.get("head_score") if isinstance(extra, dict) else None
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        completion_tokens = int(usage.get("completion_tokens") or 0)
        self.usage["prompt_tokens"] += prompt_tokens
        self.usage["completion_tokens"] += completion_tokens
        return _Reply(
            text=text,
            head_score=float(head) if head is not None else None,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            finish_reason=choice.get("finish_reason"),
        )


def _option(value: Any, name: str, kind: type) -> Any:
    """The passed value, else the option's environment variable, else its default."""
    if value is not None:
        return value
    env, default = ENV_DEFAULTS[name]
    raw = os.environ.get(env)
    if raw is None or not raw.strip():
        return default
    try:
        return kind(raw.strip())
    except ValueError:
        raise ValueError(f"environment variable {env}={raw!r} is not a valid {kind.__name__}") from None


def _resolve_key(api_key: str | None, api_key_env: str | None) -> str | None:
    """The key itself, else the named environment variable (which must exist), else OPENAI_API_KEY."""
    if api_key:
        return api_key
    if api_key_env:
        value = os.environ.get(api_key_env)
        if not value:
            raise ValueError(f"environment variable {api_key_env} (named for the API key) is not set or empty")
        return value
    return os.environ.get("OPENAI_API_KEY") or None


def _snippet(response: httpx.Response, limit: int = 300) -> str:
    text = response.text.strip().replace("\n", " ")
    return text[:limit] + ("…" if len(text) > limit else "")
