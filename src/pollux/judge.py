"""The Python API: `Judge.from_pretrained(path)` and `judge.judge(item)` / `judge.judge_many(items)`.

`Judge` is a thin shell over an engine (see `pollux.engine`): it accepts items as `JudgeItem`s
or as dicts with POLLUX column names, and returns `Verdict`s in input order.
"""

from __future__ import annotations

import asyncio
import inspect
import queue
import threading
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator, Mapping
from typing import Any

from pollux.engine import Engine, OnVerdict, SamplingParams
from pollux.engine.registry import CommonOptions, get_engine, load_engine
from pollux.prompts import PromptTemplate
from pollux.records import JudgeItem
from pollux.verdicts import Verdict

ItemLike = JudgeItem | Mapping[str, Any]


class _StreamClosed(Exception):
    """Raised in the engine's worker thread by the text hook once the stream's consumer is gone."""


def as_item(item: ItemLike, where: str = "item") -> JudgeItem:
    return item if isinstance(item, JudgeItem) else JudgeItem.from_dict(dict(item), where=where)


class Judge:
    """A judge: an engine behind the POLLUX item/verdict API.

    One engine call at a time per `Judge` (a lock): engines are not safe to call from two threads
    at once (vLLM's `LLM`, the in-process engine's counters), and a server's micro-batcher and its
    web UI's judge-live page share one judge. Parallel work uses one `Judge` per worker
    (`pollux.executor`)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._lock = threading.RLock()

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        *,
        dtype: str = "auto",
        device: str = "auto",
        template: PromptTemplate | str | None = None,
        sampling: SamplingParams | None = None,
        batch_size: int = 32,
        max_batch_tokens: int = 65_536,
        share_prefix: bool = True,
        threads: int | None = None,
        expected_score: bool = False,
    ) -> Judge:
        """Load a judge checkpoint from a local folder into the in-process engine (the simple API;
        `from_spec` is the general one). Options are `pollux.engine.registry.LocalOptions`."""
        local = get_engine("local")
        options: dict[str, Any] = {
            "dtype": dtype, "device": device, "template": template, "batch_size": batch_size,
            "max_batch_tokens": max_batch_tokens, "share_prefix": share_prefix, "threads": threads,
            "expected_score": expected_score,
        }
        if sampling is not None:
            options["sampling"] = sampling
        return cls(local.load(path, local.validate(options)))

    @classmethod
    def from_spec(cls, spec: str, options: Mapping[str, Any] | CommonOptions | None = None, /,
                  **kwargs: Any) -> Judge:
        """A judge from a spec — `openai:MODEL`, `vllm:PATH` or a local checkpoint folder — and one
        options object (a dict, keyword arguments, or the engine's options class; see
        `pollux.engine.registry`). An option the engine does not take, or a bad value, raises
        `OptionsError` (a ValueError) naming the option and the engine, before anything loads."""
        if kwargs:
            if isinstance(options, CommonOptions):
                raise TypeError("give options as one object or as keyword arguments, not both")
            options = {**(options or {}), **kwargs}
        return cls(load_engine(spec, options))

    @property
    def name(self) -> str:
        return self.engine.name

    @property
    def kind(self) -> str:
        return self.engine.kind

    def describe(self) -> dict[str, Any]:
        return self.engine.describe()

    def judge(self, item: ItemLike) -> Verdict:
        return self.judge_many([item])[0]

    def judge_many(self, items: Iterable[ItemLike], on_verdict: OnVerdict | None = None,
                   **hooks: Any) -> list[Verdict]:
        """Judge all items (batched inside the engine); verdicts come back in input order.
        `hooks` go to the engine as they are (`on_text`, `top_logprobs` + `on_logprobs` of the
        in-process engine): only those it `accepts`."""
        prepared = [as_item(it, where=f"item {i}") for i, it in enumerate(items)]
        engine: Any = self.engine  # hooks are not part of the `Engine` protocol: see `accepts`
        with self._lock:
            return engine.judge_many(prepared, on_verdict=on_verdict, **hooks)

    def accepts(self, hook: str) -> bool:
        """Whether the engine's `judge_many` takes the keyword `hook` (e.g. `on_text`, `on_logprobs`)."""
        return hook in inspect.signature(self.engine.judge_many).parameters

    def stream(self, item: ItemLike) -> Iterator[str | Verdict]:
        """Judge one item, yielding the judge's raw output as it is generated — text deltas
        (`str`, whole characters) — then exactly one `Verdict`, the one `judge(item)` gives. The
        deltas concatenate to `verdict.raw_text`.

        The engine runs in a worker thread and hands text over through a queue. Engines with a
        text hook (`on_text`: the in-process engine) stream step by step; others (`openai:`,
        `vllm:`) yield the whole text in one delta, then the verdict. Closing the generator early
        stops the worker at its next decode step (its hook raises), so no thread is left behind
        generating for nobody; an engine without a hook finishes its one call, then ends. A stream
        closed while it waits for its turn (another call holds the judge) never calls the engine."""
        events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        closed = self._stream_worker(as_item(item), lambda kind, value: events.put((kind, value)))
        deltas = _Deltas()
        try:
            while True:
                kind, value = events.get()
                yield from deltas.parts(kind, value)
                if kind == "verdict":
                    return
        finally:
            closed.set()

    async def astream(self, item: ItemLike) -> AsyncGenerator[str | Verdict, None]:
        """`stream` for an event loop: the same parts, awaited without holding a thread of the
        loop's pool while the judgement waits its turn or generates (a web server's pages share
        that pool). Cancelling or closing it stops the worker as closing `stream` does."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def put(kind: str, value: Any) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, (kind, value))
            except RuntimeError:  # the loop is closed: nobody is listening any more
                closed.set()

        closed = self._stream_worker(as_item(item), put)
        deltas = _Deltas()
        try:
            while True:
                kind, value = await events.get()
                for part in deltas.parts(kind, value):
                    yield part
                if kind == "verdict":
                    return
        finally:
            closed.set()

    def _stream_worker(self, item: JudgeItem, put: Callable[[str, Any], None]) -> threading.Event:
        """Start judging `item` in a worker thread that reports `("text", so_far)`, then
        `("verdict", v)` or `("error", e)` through `put`; setting the returned event stops it:
        before its engine call if it is still waiting for the judge, else at its next token."""
        closed = threading.Event()

        def on_text(index: int, text: str) -> None:
            if closed.is_set():
                raise _StreamClosed()
            put("text", text)

        def work() -> None:
            try:
                with self._lock:
                    if closed.is_set():
                        return  # the consumer left while this judgement waited its turn
                    hooks: dict[str, Any] = {"on_text": on_text} if self.accepts("on_text") else {}
                    verdicts = self.judge_many([item], **hooks)
                put("verdict", verdicts[0])
            except _StreamClosed:
                pass
            except BaseException as e:  # handed to the consumer, raised there
                put("error", e)

        threading.Thread(target=work, name="pollux-stream", daemon=True).start()
        return closed


class _Deltas:
    """Turns a stream worker's events into the parts a stream yields: the new text since the last
    delta, then the verdict (its `raw_text` completes the deltas); an error is raised."""

    def __init__(self) -> None:
        self.sent = ""

    def parts(self, kind: str, value: Any) -> list[str | Verdict]:
        if kind == "error":
            raise value
        out: list[str | Verdict] = []
        text = value.raw_text if kind == "verdict" else value
        if text.startswith(self.sent) and len(text) > len(self.sent):
            out.append(text[len(self.sent):])
            self.sent = text
        if kind == "verdict":
            out.append(value)
        return out
