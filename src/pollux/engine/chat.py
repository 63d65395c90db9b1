"""Chat models: messages in, text replies out — the second thing an engine-registry entry loads.

A judge (`pollux.engine.Engine`) scores answers; a *chat model* writes text: synth's instruction
writers, answer models and teacher, and `pollux answer`'s evaluated model. Both are named by one
spec grammar and loaded by one registry (`pollux.engine.registry`): `openai:MODEL` (with
`base_url`), `vllm:PATH`, or a local checkpoint folder. Each entry's `chat_loader` builds one of
the classes below from the same options class its judges take (`OpenAIOptions`, `LocalOptions`,
`VLLMOptions`), so `--base-url`, `--concurrency`, `--dtype`, `--batch-size`, … mean the same thing
to a judge and to a chat model.

A *request* is a row with `key`, `messages` (chat), `temperature`, `max_tokens` and `seed`; a chat
model turns a batch of requests into replies: `key`, `text`, `error` (None, or why the request
failed for good), `prompt_tokens`, `completion_tokens`, `latency_s` and `reasoning` (what a
reasoning model returned beside its answer, where the server gives it apart: `reasoning_content` /
`reasoning`; None otherwise). `generate` returns the replies in request order; `stream` yields
them as they finish, so a caller can store each one at once (a run killed mid-batch loses only
the requests still in flight).

* `HttpChat` — any OpenAI-compatible `/chat/completions` endpoint, through pollux's own transport
  (`pollux.engine.http_chat.ChatClient`: bounded concurrency, retries with backoff and jitter,
  Retry-After, the endpoint's own auth, usage counts), on an event loop in its own thread, so any
  number of worker threads can share one client (`shared_chat`): the model's `concurrency` then
  bounds its in-flight requests in this process, connections are reused from batch to batch, and
  one thread's batch fills the connections while another's waits for its last replies.
* `LocalChat` — a checkpoint generating chat replies with plain transformers `generate` (pollux
  judges and plain causal LMs load alike). Greedy requests are batched (left padding); sampled
  requests run one by one, seeded by their seed, so a row's text does not depend on which rows
  happened to share its batch (a resumed run gets the same texts).
* `VllmChat` — vLLM's offline `LLM.chat` (imported lazily; needs the `vllm` extra and a GPU).
"""

from __future__ import annotations

import asyncio
import os
import queue
import re
import threading
import time
from collections.abc import Coroutine, Iterator
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from pollux.engine.http_chat import ApiError, ChatClient, ChatReply, EndpointAuth
from pollux.records import text_problem

if TYPE_CHECKING:
    from pollux.engine.registry import LocalOptions, OpenAIOptions, VLLMOptions

Row = dict[str, Any]


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
T = TypeVar("T")


class ChatModel(Protocol):
    """What every chat loader returns (see module doc)."""

    def generate(self, requests: list[Row]) -> list[Row]: ...

    def stream(self, requests: list[Row]) -> Iterator[Row]: ...

    def close(self) -> None: ...


def reasoning_of(reply: ChatReply) -> str | None:
    """The reasoning a server returned apart from the answer (DeepSeek's and vLLM's
    `reasoning_content`, OpenRouter's and newer vLLM's `reasoning`), or None."""
    choices = reply.data.get("choices") or [{}]
    message = choices[0].get("message") or {} if isinstance(choices[0], dict) else {}
    for key in ("reasoning_content", "reasoning"):
        value = message.get(key) if isinstance(message, dict) else None
        if isinstance(value, str) and value.strip():
            return value
    return None


class HttpChat:
    """An OpenAI-compatible endpoint: one `ChatClient` on an event loop in its own thread (see
    module doc). `model` is the server's model name (what follows `openai:`)."""

    def __init__(self, model: str, options: OpenAIOptions):
        from pollux.engine.openai_api import _option, _resolve_key

        # Unset options come from the environment, as for `openai:` judges (`openai_api.ENV_DEFAULTS`).
        o = options
        auth = EndpointAuth.build(
            headers=_option(o.headers, "headers", str), auth_scheme=_option(o.auth_scheme, "auth_scheme", str),
            api_key_command=_option(o.api_key_command, "api_key_command", str),
            api_key_ttl=_option(o.api_key_ttl, "api_key_ttl", float), ca_bundle=_option(o.ca_bundle, "ca_bundle", str))
        api_key = None if auth.api_key_command else _resolve_key(options.api_key, options.api_key_env)
        self.name = model
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=f"pollux-chat-{model}", daemon=True)
        self.thread.start()
        base_url = o.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        self.client = ChatClient(base_url, api_key=api_key, auth=auth,
                                 concurrency=_option(options.concurrency, "concurrency", int),
                                 timeout=_option(options.timeout, "timeout", float),
                                 max_retries=_option(options.max_retries, "max_retries", int),
                                 backoff_base=options.backoff_base, backoff_max=options.backoff_max,
                                 retry_after_max=options.retry_after_max, name=model)
        self.run(self.client.__aenter__())

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the client's loop and wait for it (from any thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def generate(self, requests: list[Row]) -> list[Row]:
        async def all_rows() -> list[Row]:
            return list(await asyncio.gather(*(self.one(r) for r in requests)))

        return self.run(all_rows())

    def stream(self, requests: list[Row]) -> Iterator[Row]:
        """The replies in the order they finish (a thread-safe queue fed from the client's loop)."""
        done: queue.Queue[Row] = queue.Queue()

        async def one(request: Row) -> None:
            try:
                done.put(await self.one(request))
            except Exception as e:  # anything else still answers the row, so the reader never hangs
                done.put({"key": request["key"], "text": None, "error": f"{type(e).__name__}: {e}"})

        async def all_rows() -> None:
            await asyncio.gather(*(one(r) for r in requests))

        future = asyncio.run_coroutine_threadsafe(all_rows(), self.loop)
        for _ in requests:
            yield done.get()
        future.result()

    async def one(self, request: Row) -> Row:
        payload = {"model": self.name, "messages": request["messages"], "max_tokens": request["max_tokens"],
                   "temperature": request["temperature"], "seed": request["seed"]}
        start = time.perf_counter()
        try:
            reply = await self.client.post(payload)
        except ApiError as e:
            return {"key": request["key"], "text": None, "error": str(e)}
        return {"key": request["key"], "text": reply.text, "error": None, "prompt_tokens": reply.prompt_tokens,
                "completion_tokens": reply.completion_tokens, "latency_s": time.perf_counter() - start,
                "reasoning": reasoning_of(reply)}

    def close(self) -> None:
        self.run(self.client.__aexit__())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


class LocalChat:
    """A local checkpoint with transformers `generate` (see module doc)."""

    def __init__(self, path: str, options: LocalOptions):
        from pollux.checkpoint import load_judge
        from pollux.engine import require_local_extra

        torch = require_local_extra()
        if options.threads is not None:  # process-wide, as for local judges
            torch.set_num_threads(options.threads)
        loaded = load_judge(path, dtype=options.dtype, device=options.device)
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        self.batch_size = options.batch_size
        self.name = path

    def generate(self, requests: list[Row]) -> list[Row]:
        greedy = [r for r in requests if r["temperature"] == 0]
        out: dict[str, Row] = {}
        for i in range(0, len(greedy), self.batch_size):
            out.update(self._generate(greedy[i:i + self.batch_size], sample=False))
        for r in requests:
            if r["temperature"] > 0:
                out.update(self._generate([r], sample=True))
        return [out[r["key"]] for r in requests]

    def stream(self, requests: list[Row]) -> Iterator[Row]:
        """Batch by batch: each batch's replies as soon as it is decoded."""
        for i in range(0, len(requests), self.batch_size):
            yield from self.generate(requests[i:i + self.batch_size])

    def _generate(self, requests: list[Row], *, sample: bool) -> dict[str, Row]:
        """One `generate` call. Every row's latency is the call's wall time (they were decoded together)."""
        import torch

        start = time.perf_counter()
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
        latency = time.perf_counter() - start
        out = {}
        for i, (r, ids) in enumerate(zip(requests, generated[:, width:], strict=True)):
            ids = ids[: r["max_tokens"]]
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            out[r["key"]] = {"key": r["key"], "text": text, "error": None,
                             "prompt_tokens": int(enc["attention_mask"][i].sum()),
                             "completion_tokens": int((ids != self.tokenizer.pad_token_id).sum()),
                             "latency_s": latency, "reasoning": None}
        return out

    def close(self) -> None:
        pass


class VllmChat:
    """vLLM's offline chat API (lazily imported; untested on CPU-only machines)."""

    def __init__(self, path: str, options: VLLMOptions):
        try:
            from vllm import LLM
        except ImportError as e:
            raise ValueError(f"vllm:{path}: needs vLLM installed (pip install vllm): {e}") from None
        self.llm = LLM(model=path, dtype=options.dtype, tensor_parallel_size=options.tensor_parallel_size,
                       gpu_memory_utilization=options.gpu_memory_utilization,
                       **({"max_model_len": options.max_model_len} if options.max_model_len else {}),
                       **options.llm_options)
        self.chunk_size = options.chunk_size

    def generate(self, requests: list[Row]) -> list[Row]:
        from vllm import SamplingParams

        params = [SamplingParams(temperature=r["temperature"], max_tokens=r["max_tokens"], seed=r["seed"])
                  for r in requests]
        start = time.perf_counter()
        outputs = self.llm.chat([r["messages"] for r in requests], sampling_params=params, use_tqdm=False)
        latency = time.perf_counter() - start
        return [{"key": r["key"], "text": o.outputs[0].text, "error": None, "prompt_tokens": len(o.prompt_token_ids),
                 "completion_tokens": len(o.outputs[0].token_ids), "latency_s": latency, "reasoning": None}
                for r, o in zip(requests, outputs, strict=True)]

    def stream(self, requests: list[Row]) -> Iterator[Row]:
        for i in range(0, len(requests), self.chunk_size):
            yield from self.generate(requests[i:i + self.chunk_size])

    def close(self) -> None:
        pass


_SHARED: dict[tuple[str, str], HttpChat] = {}
_SHARED_LOCK = threading.Lock()


def shared_chat(model: str, options: OpenAIOptions) -> HttpChat:
    """This process's one client for an endpoint model and its options (see `HttpChat`): worker
    threads that ask the same model share its connections and its concurrency bound."""
    key = (model, options.model_dump_json())
    with _SHARED_LOCK:
        chat = _SHARED.get(key)
        if chat is None:
            chat = _SHARED[key] = HttpChat(model, options)
        return chat
