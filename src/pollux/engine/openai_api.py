"""A judge behind any OpenAI-compatible chat-completions endpoint (vLLM, `pollux serve`, hosted APIs).

Big judges run on GPU servers and reference judges (GPT-4o, DeepSeek-R1) are APIs, so an
evaluation run is thousands of HTTP calls, and some of them fail: rate limits (429), server
errors (5xx), timeouts, dropped connections. This engine makes each item one chat request and
keeps going through all of that:

* at most `concurrency` requests in flight (an asyncio semaphore over one httpx client);
* retries with exponential backoff and jitter on 408/429/5xx, timeouts and connection errors,
  waiting at least what the server's `Retry-After` asks for;
* a bounded re-ask (`max_reasks`) when the reply has no score in `[RESULT] n [END]`; a re-ask
  always changes the request (an identical temperature-0 request gets the identical reply): the
  "general" style adds a follow-up message, the one-turn "pollux" and "prometheus" styles
  sample (`pollux.engine.reask`: the one re-ask policy, shared with synth's teacher);
* token accounting from each response's `usage`, summed over retries and re-asks;
* an item that still fails becomes an `error_verdict` — the other items are unaffected, and an
  evaluation run re-judges it on resume.

The options are declared, typed and documented in the engine registry
(`pollux.engine.registry.OpenAIOptions`, selected by an `openai:MODEL` spec), which checks them
before this constructor runs. Options left unset (concurrency, timeout, max_retries, max_reasks,
prompt_style and the endpoint's auth options) are read from `POLLUX_API_*` environment variables
(`ENV_DEFAULTS`), the base URL from `OPENAI_BASE_URL` and the key from `OPENAI_API_KEY`, so tools
that only pass a spec string can use them all.

Endpoints with their own auth (GigaChat's 30-minute access tokens, Yandex's `Api-Key` scheme and
`x-data-logging-enabled` header, corporate CA bundles) are handled by the transport's
`EndpointAuth`: `headers`, `auth_scheme`, `api_key_command` (+ `api_key_ttl`) and `ca_bundle` — the
same options synth's `[models.X]` take (docs/ecosystem.md). The key command's key is kept for the
engine's life, across `judge_many` calls, and renewed when it expires or is refused.

Prompt styles (how the model card's baseline judges can be run; `PROMPT_STYLES`):

* "pollux" sends the judge prompt as is (a POLLUX judge reads exactly one user message) and
  reads the score with the POLLUX judges' strict parser (`[RESULT] n [END]`).
* "general" (GPT-4o, DeepSeek-R1 and other general LLMs) wraps it in Russian instructions asking
  for `[FEEDBACK] … [RESULT] n [END]`. The wording is ours: the model card does not publish the
  prompt it gave GPT-4o and R1. The reply is read after removing a `<think>…</think>` block
  (R1's reasoning, which may hold draft scores) and `[END]` is not required
  (`pollux.scales.parse_result_open`).
* "prometheus" (M-Prometheus) follows the structure of the published Prometheus 2 absolute-grading
  prompt (prometheus-eval/prometheus-eval, docs/prompts.md: a system line, "###Task
  Description" with four numbered steps, "###The instruction to evaluate", "###Response to
  evaluate", "###Reference Answer", "###Score Rubrics", "###Feedback:") and its reply format
  `Feedback: … [RESULT] n`, which M-Prometheus was trained on. The sentences are our own
  wording modelled on it, with the score range taken from the POLLUX rubric instead of 1–5
  and the criterion and rubric in place of the five score descriptions. `[RESULT] n` without
  `[END]` is parsed (`parse_result_open`).

Every style's prompt is filled by `pollux.prompts.fill`, the judge template's own builder: one
pass (a value's `{answer}` is never filled), every item text neutralised against the sections of
the prompt it goes into — the judge's Russian `###` headers, or the prometheus prompt's English
ones (`PROMETHEUS_HEADERS`: an answer's `###Score Rubrics:` or `###Feedback:` line is escaped).

A `pollux serve` server adds a non-standard `pollux` object to its chat-completion responses
with the regression head's score (`head_score`); when present it becomes the verdict's
`head_score`, so a `-r` judge behind HTTP scores exactly as in-process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Sequence
from typing import Any

from pollux.engine import OnVerdict, SamplingParams
from pollux.engine.chat import reasoning_of
from pollux.engine.http_chat import RETRY_STATUSES as RETRY_STATUSES  # re-exported: the transport moved there
from pollux.engine.http_chat import ApiError, ChatClient, EndpointAuth, KeySource, run_coroutine
from pollux.engine.http_chat import parse_retry_after as parse_retry_after
from pollux.engine.reask import reask_sampling
from pollux.engine.tokens import probs_from_top_logprobs
from pollux.prompts import PromptTemplate, fill
from pollux.records import JudgeItem
from pollux.scales import parse_result_open, parse_scale
from pollux.verdicts import Verdict, error_verdict, make_verdict

log = logging.getLogger("pollux.openai")

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

# Our wording modelled on the Prometheus 2 absolute-grading prompt (see the module docstring).
PROMETHEUS_SYSTEM = (
    "You are a fair evaluator: you give clear, objective feedback on a response against one "
    "criterion and score it by the absolute standard its rubric sets."
)
PROMETHEUS_PROMPT = (
    "###Task Description:\n"
    "You are given an instruction, a response to evaluate, {reference_note}and a score rubric for "
    "one evaluation criterion.\n"
    "1. Write detailed feedback that assesses the response strictly by the given score rubric, not "
    "in general.\n"
    "2. After the feedback, give a score that is a number between {low} and {high}, as the rubric "
    "defines it.\n"
    "3. Use exactly this output format: \"Feedback: (feedback on the criterion) [RESULT] (a number "
    "between {low} and {high})\"\n"
    "4. Do not write any other opening, closing or explanation.\n\n"
    "###The instruction to evaluate:\n{instruction}\n\n"
    "###Response to evaluate:\n{answer}\n\n"
    "{reference_block}"
    "###Score Rubrics:\n[{criterion}]\n{rubrics}\n\n"
    "###Feedback: "
)
PROMETHEUS_REFERENCE = "###Reference Answer (Score {high}):\n{reference}\n\n"
# The prometheus prompt's own sections: what no item text may forge there (`pollux.prompts.fill`).
PROMETHEUS_HEADERS = ("Task Description", "The instruction to evaluate", "Response to evaluate",
                      "Reference Answer", "Score Rubrics", "Feedback")

PROMPT_STYLES = ("pollux", "general", "prometheus")

# Options a caller did not pass are read from these environment variables, so that every tool that
# builds a judge from a spec string (`pollux evaluate`, `pollux meta-eval`, scripts) can set them.
ENV_DEFAULTS: dict[str, tuple[str, Any]] = {
    "concurrency": ("POLLUX_API_CONCURRENCY", 8),
    "timeout": ("POLLUX_API_TIMEOUT", 60.0),
    "max_retries": ("POLLUX_API_MAX_RETRIES", 6),
    "max_reasks": ("POLLUX_API_MAX_REASKS", 1),
    "prompt_style": ("POLLUX_API_PROMPT_STYLE", "pollux"),
    "api_key_command": ("POLLUX_API_KEY_COMMAND", None),
    "api_key_ttl": ("POLLUX_API_KEY_TTL", None),
    "auth_scheme": ("POLLUX_API_AUTH_SCHEME", None),
    "headers": ("POLLUX_API_HEADERS", None),  # a JSON object
    "ca_bundle": ("POLLUX_API_CA_BUNDLE", None),
}


def _limits(concurrency: int | None, timeout: float | None, max_retries: int | None, max_reasks: int | None,
            prompt_style: str | None) -> tuple[int, float, int, int, str]:
    """The engine's limits and prompt style: unset ones from POLLUX_API_* variables (see
    ENV_DEFAULTS), then the defaults; each checked, so a bad value fails before any request."""
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
    return concurrency, float(timeout), max_retries, max_reasks, prompt_style


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
        expected_score: bool = False,
        top_logprobs: int = 20,
        headers: dict[str, Any] | str | None = None,
        auth_scheme: str | None = None,
        api_key_command: str | list[str] | None = None,
        api_key_ttl: float | None = None,
        ca_bundle: str | None = None,
    ):
        if not model:
            raise ValueError("openai engine: the model name is empty (use openai:MODEL)")
        concurrency, timeout, max_retries, max_reasks, prompt_style = _limits(
            concurrency, timeout, max_retries, max_reasks, prompt_style)
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
        # The endpoint's auth (see http_chat.EndpointAuth): a key command wins over a static key.
        self.auth = EndpointAuth.build(
            headers=_option(headers, "headers", str), auth_scheme=_option(auth_scheme, "auth_scheme", str),
            api_key_command=_option(api_key_command, "api_key_command", str),
            api_key_ttl=_option(api_key_ttl, "api_key_ttl", float), ca_bundle=_option(ca_bundle, "ca_bundle", str))
        self.api_key = None if self.auth.api_key_command else _resolve_key(api_key, api_key_env)
        self._keys: KeySource | None = None  # made on first use (a lock: not at construction)
        self.concurrency = concurrency
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.max_reasks = max_reasks
        self.template = template or PromptTemplate()
        self.sampling = (sampling or SamplingParams()).resolve()  # no checkpoint config here
        self.prompt_style = prompt_style
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.retry_after_max = retry_after_max
        # G-Eval-style expected scores from the reply's top logprobs (`pollux.engine.tokens`)
        self.expected_score = expected_score
        self.top_logprobs = top_logprobs
        self.name = f"openai:{model}"
        # Totals over this engine's life (all judge_many calls): what the run cost and how bumpy it was.
        self.usage: dict[str, int] = dict.fromkeys(
            ("requests", "retries", "reasks", "failed_items", "prompt_tokens", "completion_tokens",
             "auth_resends"), 0
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
            # only when on: runs created without it keep their configuration (and resume)
            **({"expected_score": True, "top_logprobs": self.top_logprobs} if self.expected_score else {}),
        }

    def judge_many(self, items: Sequence[JudgeItem], on_verdict: OnVerdict | None = None) -> list[Verdict]:
        """Judge all items concurrently; `on_verdict(i, verdict)` runs as each one completes.

        Runs its own event loop in the calling thread, so callbacks (e.g. SQLite writes) stay in
        the caller's thread. Called from inside a running loop it uses a private thread instead.
        """
        if not items:
            return []
        return run_coroutine(self._judge_all(items, on_verdict))

    # -- internals ----------------------------------------------------------------------------

    def messages_for(self, item: JudgeItem) -> list[dict[str, str]]:
        if self.prompt_style == "prometheus":
            return prometheus_messages(item)
        prompt = self.template.render(item)
        if self.prompt_style == "general":  # the judge's prompt, rendered and neutralised: trusted here
            prompt = fill(GENERAL_PROMPT, {}, trusted={"prompt": prompt})
        return [{"role": "user", "content": prompt}]

    def parse_reply(self, text: str) -> float | None:
        """The text score of a reply: POLLUX judges' strict `[RESULT] n [END]`; baseline styles
        without `[END]` and after removing `<think>…</think>`."""
        return self.template.parse(text) if self.prompt_style == "pollux" else parse_result_open(text)

    async def _judge_all(self, items: Sequence[JudgeItem], on_verdict: OnVerdict | None) -> list[Verdict]:
        results: list[Verdict | None] = [None] * len(items)
        # The transport (retries, backoff, Retry-After, adaptations) is `http_chat.ChatClient`; it
        # counts into this engine's `usage` and `adaptations`, and an item holds its slot across re-asks.
        if self.auth.api_key_command is not None and self._keys is None:
            self._keys = KeySource(self.auth.api_key_command, ttl=self.auth.api_key_ttl, timeout=self.timeout,
                                   name=self.name)
        chat = ChatClient(self.base_url, api_key=self.api_key, auth=self.auth, keys=self._keys,
                          concurrency=self.concurrency, timeout=self.timeout,
                          max_retries=self.max_retries, backoff_base=self.backoff_base,
                          backoff_max=self.backoff_max, retry_after_max=self.retry_after_max, name=self.name,
                          usage=self.usage, adaptations=self.adaptations)
        async with chat as client:

            async def one(i: int) -> None:
                async with client.semaphore:
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

    async def _judge_one(self, client: ChatClient, item: JudgeItem) -> Verdict:
        started = time.perf_counter()
        messages = self.messages_for(item)
        prompt_tokens = completion_tokens = 0
        verdict: Verdict | None = None
        for ask in range(self.max_reasks + 1):
            if ask:
                self.usage["reasks"] += 1
            try:
                reply = await client.post(self._payload(messages, reask=ask > 0), hold=False)
            except ApiError as e:
                self.usage["failed_items"] += 1
                log.warning("%s: item %s failed: %s", self.name, item.key, e)
                return error_verdict(item, str(e), judge=self.name, prompt_tokens=prompt_tokens)
            prompt_tokens += reply.prompt_tokens
            completion_tokens += reply.completion_tokens
            verdict = make_verdict(
                item,
                reply.text,
                head_score=_head_score(reply.data),
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                finish_reason=reply.finish_reason,
                time_s=time.perf_counter() - started,
                judge=self.name,
                parse=self.parse_reply,
                score_probs=self._score_probs(reply.data, item) if self.expected_score else None,
            )
            reasoning = reasoning_of(reply)  # a reasoning parser's field (Qwen3, R1): stored, never scored
            if reasoning is not None:
                verdict.meta["reasoning"] = reasoning
            if verdict.score is not None:
                break
            if self.prompt_style == "general":  # a conversational model can be told what was wrong
                messages = [*messages, {"role": "assistant", "content": reply.text},
                            {"role": "user", "content": REASK_PROMPT}]
        assert verdict is not None
        return verdict

    def _payload(self, messages: list[dict[str, str]], *, reask: bool) -> dict[str, Any]:
        # `self.sampling` was resolved in __init__, so its fields are set; the `or`s only say so to mypy.
        temperature = self.sampling.temperature or 0.0
        if reask and self.prompt_style != "general":  # "general" re-asks with a follow-up message instead
            temperature, _ = reask_sampling(temperature, None, attempt=1)
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": self.sampling.max_new_tokens,
            "temperature": temperature,
        }
        top_p = self.sampling.top_p or 1.0
        if top_p < 1:
            payload["top_p"] = top_p
        if self.expected_score:
            payload["logprobs"] = True
            payload["top_logprobs"] = self.top_logprobs
        return payload

    def _score_probs(self, data: dict[str, Any], item: JudgeItem) -> dict[str, float] | str:
        """The scale distribution at the score position from the reply's `logprobs.content`, or
        why there is none (a server that returns no logprobs is not an error)."""
        try:
            content = data["choices"][0]["logprobs"]["content"]
        except (KeyError, IndexError, TypeError):
            content = None
        if not isinstance(content, list):
            return "the server returned no logprobs"
        reply = self.template.reply if self.prompt_style == "pollux" else "result"
        return probs_from_top_logprobs(content, parse_scale(item.rubrics), reply)


def prometheus_messages(item: JudgeItem) -> list[dict[str, str]]:
    """The "prometheus" style's chat: system line and absolute-grading prompt for one criterion.
    The item's texts are neutralised against the prompt's English sections (`PROMETHEUS_HEADERS`):
    an answer's line `###Score Rubrics:` or `###Feedback:` cannot open one."""
    scale = parse_scale(item.rubrics)
    low, high = (f"{scale.min:g}", f"{scale.max:g}") if scale else ("the lowest", "the highest score")
    reference = item.reference_answer.strip()
    block = fill(PROMETHEUS_REFERENCE, {"reference": reference}, headers=PROMETHEUS_HEADERS,
                 trusted={"high": high}) if reference else ""
    prompt = fill(PROMETHEUS_PROMPT, {"instruction": item.instruction, "answer": item.answer,
                                      "criterion": item.criteria_name, "rubrics": item.rubrics},
                  headers=PROMETHEUS_HEADERS, trusted={
                      "reference_note": "a reference answer that gets the highest score, " if reference else "",
                      "low": low, "high": high, "reference_block": block})
    return [{"role": "system", "content": PROMETHEUS_SYSTEM}, {"role": "user", "content": prompt}]


def _head_score(data: dict[str, Any]) -> float | None:
    """`pollux serve`'s non-standard `pollux.head_score` (the regression head's score), if present."""
    extra = data.get("pollux") or {}
    head = extra.get("head_score") if isinstance(extra, dict) else None
    return float(head) if head is not None else None


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
