"""The LLMs synth talks to — endpoints, local checkpoints, vLLM — behind one batch call, and the
executor workers built on them.

A *request* is a row with `key`, `messages` (chat), `temperature`, `max_tokens` and `seed`; a
backend turns a batch of requests into replies (`text`, token counts, or an `error`). Backends:

* `openai` — any OpenAI-compatible `/chat/completions` endpoint, through pollux's own transport
  (`pollux.engine.http_chat.ChatClient`: bounded concurrency, retries with backoff and jitter,
  Retry-After, usage counts). One client per model per process, on its own event-loop thread and
  shared by all worker threads: the model's `concurrency` bounds its in-flight requests in this
  process, connections are reused from batch to batch, and one thread's batch fills the connections
  while another's waits for its last replies.
* `local:PATH` — a checkpoint generating chat replies with plain transformers `generate` (pollux
  judges and plain causal LMs load alike). Greedy requests are batched (left padding); sampled
  requests run one by one, seeded by their key, so a row's text does not depend on which rows
  happened to share its batch (a resumed run gets the same texts).
* `vllm:PATH` — vLLM's offline `LLM.chat` (imported lazily; needs the `vllm` extra and a GPU).

`ChatWorker` is the executor's worker factory (picklable: a dataclass of plain values): it builds a
backend once per worker thread / Ray actor. With `validate="verdict"` it checks each reply with
pollux's own parser against the row's rubric scale and asks again (up to `max_attempts`), so the
teacher's retries happen where the client lives, not in the driver.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from pollux.engine.http_chat import ApiError, ChatClient
from pollux.records import text_problem
from pollux.scales import check_level, check_score, parse_feedback, parse_result, parse_scale, result_problem
from pollux.synth.config import ModelConfig

Row = dict[str, Any]
T = TypeVar("T")

# Temperature for asking again after a broken reply: at temperature 0 the same prompt gives the same text.
RETRY_TEMPERATURE = 0.3


class HttpBackend:
    """An OpenAI-compatible endpoint: one `ChatClient` on an event loop in its own thread, shared by
    every worker thread of this process (`shared_http_backend`). The client's semaphore then bounds the
    model's in-flight requests across threads, and while one thread's batch waits for its last
    replies, another thread's batch keeps the connections busy."""

    def __init__(self, model: ModelConfig):
        api_key = model.api_key()  # checked before the run started; read again here (a Ray actor's environment)
        self.model = model
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=f"pollux-synth-{model.name}", daemon=True)
        self.thread.start()
        self.client = ChatClient(model.base_url or "", api_key=api_key, auth=model.auth, concurrency=model.concurrency,
                                 timeout=model.timeout, max_retries=model.max_retries, name=model.name)
        self.run(self.client.__aenter__())

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the backend's loop and wait for it (from any thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def generate(self, requests: list[Row]) -> list[Row]:
        return self.run(self._all(requests))

    async def _all(self, requests: list[Row]) -> list[Row]:
        return list(await asyncio.gather(*(self.one(r) for r in requests)))

    async def one(self, request: Row) -> Row:
        payload = {"model": self.model.model, "messages": request["messages"],
                   "max_tokens": request["max_tokens"], "temperature": request["temperature"],
                   "seed": request["seed"]}
        try:
            reply = await self.client.post(payload)
        except ApiError as e:
            return {"key": request["key"], "text": None, "error": str(e)}
        return {"key": request["key"], "text": reply.text, "error": None,
                "prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens}

    def close(self) -> None:
        self.run(self.client.__aexit__())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


_SHARED: dict[ModelConfig, HttpBackend] = {}
_SHARED_LOCK = threading.Lock()


def shared_http_backend(model: ModelConfig) -> HttpBackend:
    """This process's one backend for an endpoint model (see `HttpBackend`)."""
    with _SHARED_LOCK:
        backend = _SHARED.get(model)
        if backend is None:
            backend = _SHARED[model] = HttpBackend(model)
        return backend


class LocalBackend:
    """A local checkpoint with transformers `generate` (see module doc)."""

    def __init__(self, model: ModelConfig):
        from pollux.checkpoint import load_judge

        loaded = load_judge(model.path, dtype=model.dtype, device=model.device)
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        self.batch_size = model.batch_size
        self.name = model.name

    def generate(self, requests: list[Row]) -> list[Row]:
        greedy = [r for r in requests if r["temperature"] == 0]
        out: dict[str, Row] = {}
        for i in range(0, len(greedy), self.batch_size):
            out.update(self._generate(greedy[i:i + self.batch_size], sample=False))
        for r in requests:
            if r["temperature"] > 0:
                out.update(self._generate([r], sample=True))
        return [out[r["key"]] for r in requests]

    def _generate(self, requests: list[Row], *, sample: bool) -> dict[str, Row]:
        import torch

        texts = [self.tokenizer.apply_chat_template(r["messages"], tokenize=False, add_generation_prompt=True)
                 for r in requests]
        self.tokenizer.padding_side = "left"
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(self.model.device) for k, v in enc.items()}
        kwargs: dict[str, Any] = {"max_new_tokens": max(r["max_tokens"] for r in requests), "do_sample": sample,
                                  "pad_token_id": self.tokenizer.pad_token_id}
        if sample:
            torch.manual_seed(requests[0]["seed"])
            kwargs.update(temperature=requests[0]["temperature"], top_k=0, top_p=1.0)
        with torch.no_grad():
            generated = self.model.generate(**enc, **kwargs)
        width = enc["input_ids"].shape[1]
        out = {}
        for i, (r, ids) in enumerate(zip(requests, generated[:, width:], strict=True)):
            ids = ids[: r["max_tokens"]]
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            out[r["key"]] = {"key": r["key"], "text": text, "error": None,
                             "prompt_tokens": int(enc["attention_mask"][i].sum()),
                             "completion_tokens": int((ids != self.tokenizer.pad_token_id).sum())}
        return out

    def close(self) -> None:
        pass


class VllmBackend:
    """vLLM's offline chat API (lazily imported; untested on CPU-only machines)."""

    def __init__(self, model: ModelConfig):
        try:
            from vllm import LLM
        except ImportError as e:
            raise ValueError(f"models.{model.name}: model = 'vllm:…' needs vLLM installed (pip install vllm): {e}") from None
        self.llm = LLM(model=model.path, dtype=model.dtype)

    def generate(self, requests: list[Row]) -> list[Row]:
        from vllm import SamplingParams

        params = [SamplingParams(temperature=r["temperature"], max_tokens=r["max_tokens"], seed=r["seed"])
                  for r in requests]
        outputs = self.llm.chat([r["messages"] for r in requests], sampling_params=params, use_tqdm=False)
        return [{"key": r["key"], "text": o.outputs[0].text, "error": None, "prompt_tokens": len(o.prompt_token_ids),
                 "completion_tokens": len(o.outputs[0].token_ids)} for r, o in zip(requests, outputs, strict=True)]

    def close(self) -> None:
        pass


Backend = HttpBackend | LocalBackend | VllmBackend


def make_backend(model: ModelConfig) -> Backend:
    if model.kind == "local":
        return LocalBackend(model)
    if model.kind == "vllm":
        return VllmBackend(model)
    return shared_http_backend(model)


def check_verdict(text: str, rubrics: str) -> tuple[float | None, str | None]:
    """(score, None) for a reply with a rationale and one complete `[RESULT] n [END]` whose score is one
    of the rubric's levels, else (None, reason) — pollux's own parser and scale check, as for judge
    verdicts. Reasons: invalid_text, unparseable, several_results, out_of_scale, not_a_level,
    no_rationale."""
    if text_problem(text):  # NUL / lone surrogate: unusable for storage and training
        return None, "invalid_text"
    score = parse_result(text)
    if score is None:
        return None, "several_results" if result_problem(text) else "unparseable"
    scale = parse_scale(rubrics)
    if not check_score(score, scale)[0]:
        return None, "out_of_scale"
    if not check_level(score, scale)[0]:  # between the rubric's levels (1.5 on 0/1/2): no rating it defines
        return None, "not_a_level"
    if not parse_feedback(text):  # `pollux train` needs a rationale to learn from
        return None, "no_rationale"
    return score, None


@dataclass(frozen=True)
class ChatWorker:
    """Worker factory for `pollux.executor.map_batches` (see module doc)."""

    model: ModelConfig
    validate: str | None = None  # None: any text; "verdict": [FEEDBACK] … [RESULT] n [END] within the row's scale
    max_attempts: int = 1

    def __call__(self) -> Callable[[list[Row]], list[Row]]:
        backend = make_backend(self.model)
        if self.validate == "verdict":
            return lambda batch: [checked_text(r) for r in _verdicts(backend, batch, self.max_attempts)]
        return lambda batch: [checked_text({**r, "attempts": 1}) for r in backend.generate(batch)]


_SURROGATE = re.compile("[\ud800-\udfff]")


def checked_text(reply: Row) -> Row:
    """An LLM's text is untrusted: one with a NUL or a lone surrogate (which SQLite, tokenizers, Arrow
    and `pollux train` refuse) is repaired (U+FFFD in their place) and marked `invalid_text`, and later
    stages leave it out. Done in the worker, so that a reply like that crosses no process boundary
    (a Ray actor's results are UTF-8 Arrow strings) before it is repaired."""
    text = reply.get("text")
    problem = text_problem(text) if isinstance(text, str) else None
    if text is None or problem is None:
        return {**reply, "invalid_text": None}
    return {**reply, "text": _SURROGATE.sub("\ufffd", text.replace("\x00", "\ufffd")), "invalid_text": problem}


def _verdicts(backend: Backend, batch: list[Row], max_attempts: int) -> list[Row]:
    """Ask the teacher; ask again (new seed, some temperature) while a reply is unparseable or out of
    scale; after `max_attempts`, the row comes back with `drop` = the last reason. Over HTTP each row
    retries on its own (no round waits for the slowest row); local models retry in rounds (batches)."""
    if isinstance(backend, HttpBackend):
        async def all_rows() -> list[Row]:
            return list(await asyncio.gather(*(_verdict_http(backend, r, max_attempts) for r in batch)))

        return backend.run(all_rows())
    done: list[Row] = []
    pending = batch
    for attempt in range(max_attempts):
        retry = []
        requests = [_attempt(r, attempt) for r in pending]
        for request, reply in zip(pending, backend.generate(requests), strict=True):
            result = _judged(request, reply, attempt, max_attempts)
            if result is None:
                retry.append(request)
            else:
                done.append(result)
        pending = retry
        if not pending:
            break
    return done


async def _verdict_http(backend: HttpBackend, request: Row, max_attempts: int) -> Row:
    for attempt in range(max_attempts):
        result = _judged(request, await backend.one(_attempt(request, attempt)), attempt, max_attempts)
        if result is not None:
            return result
    raise AssertionError("unreachable: the last attempt always gives a result")


def _attempt(request: Row, attempt: int) -> Row:
    """The request for attempt n: after the first, a new seed and some temperature."""
    if attempt == 0:
        return request
    return {**request, "seed": request["seed"] + attempt, "temperature": max(request["temperature"], RETRY_TEMPERATURE)}


def _judged(request: Row, reply: Row, attempt: int, max_attempts: int) -> Row | None:
    """The finished row for this reply, or None to ask again."""
    if reply["error"] is not None:  # the endpoint failed for good: not the teacher's fault, not retried here
        return {**reply, "attempts": attempt + 1, "drop": None}
    score, reason = check_verdict(reply["text"], request["rubrics"])
    if score is not None:
        return {**reply, "attempts": attempt + 1, "drop": None, "score": score,
                "rationale": parse_feedback(reply["text"])}
    if attempt + 1 == max_attempts:
        return {**reply, "attempts": attempt + 1, "drop": reason, "score": None, "rationale": None}
    return None
