"""The GGUF engine (`gguf:PATH`): POLLUX judges on llama.cpp (llama-cpp-python), e.g. a 4-bit 7B
judge on a laptop CPU. `pollux convert` (pollux.convert) makes the files it reads.

What it computes is the in-process engine's (docs/engine.md), item by item:

* **Prompt.** The POLLUX prompt rendered with the GGUF's own chat template (the checkpoint's,
  copied by llama.cpp's converter) and tokenised by llama.cpp's tokenizer — the same ids as the
  checkpoint's tokenizer (tested on Russian text). A prompt that leaves no room for one new token
  in the context gets an error verdict naming its size (`pollux.engine.jobs`).
* **Decoding.** Greedy (or temperature / top-k / top-p with a seed), the repetition penalty and
  `min_new_tokens` as `generate` applies them (`choose_token`), until an end-of-turn id
  (`generation_config.eos_token_id` ∪ the tokenizer's EOS), `max_new_tokens` or the context's end
  (`finish_reason: "length"`).
* **The head score** (`-r` judges). As in-process, the last chosen token is fed once more, with
  llama.cpp's embeddings switched on for that one step (`llama_set_embeddings`): the context
  returns that position's hidden state after the final RMSNorm — the state the model card's
  `regr_output` reads at the last token of prompt + rationale — and pollux applies the head
  (`OUT.head.safetensors`, float32). Embeddings are read with `llama_get_embeddings_ith` (no
  pooling, no normalisation; llama-cpp-python's `embed()` would truncate at `n_batch` and
  normalise), so rationale and score come from one KV cache.
* **Prefix reuse.** Items are run grouped by prompt (sorted by token ids, so an answer's criteria
  are neighbours); the KV cache keeps the previous sequence, and a new prompt evaluates only the
  tokens after the longest common prefix (for POLLUX prompts: everything after
  `### Критерий оценки:\n`). `stats["prompt_tokens_evaluated"]` counts them.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from pollux.engine import OnVerdict, SamplingParams, check_score_only, end_of_turn_ids
from pollux.engine.jobs import Delivery, Job, caller_errors_unwrapped, prepare_jobs, run_isolating_failures
from pollux.prompts import PromptTemplate
from pollux.records import JudgeItem
from pollux.verdicts import Verdict, make_verdict

log = logging.getLogger(__name__)

INSTALL_HINT = "gguf: judges need llama-cpp-python: pip install 'pollux[gguf]' (it compiles llama.cpp: a few minutes)"
REGRESSION_MARK = "regression"


class GGUFError(RuntimeError):
    """A GGUF judge cannot be loaded as asked; the message says what is missing."""


def import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:
        raise GGUFError(f"{INSTALL_HINT} ({exc})") from exc
    return llama_cpp


def read_sidecar(path: Path) -> dict[str, Any]:
    """`PATH.pollux.json` (written by `pollux convert`), or a generative judge's defaults when a
    plain GGUF has none."""
    from pollux.convert import sidecar_path

    file = sidecar_path(path)
    if not file.is_file():
        return {"kind": "generative", "head": None, "generation_config": None}
    return dict(json.loads(file.read_text(encoding="utf-8")))


def load_head(path: Path, sidecar: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The regression head (weight [1, hidden], bias [1]) from its safetensors sidecar."""
    from safetensors.numpy import load_file

    from pollux.checkpoint import HEAD_KEYS
    from pollux.convert import head_path

    file = path.parent / sidecar["head"] if sidecar.get("head") else head_path(path)
    if not file.is_file():
        raise GGUFError(f"{path}: a regression (-r) judge, but its head {file} is missing; `pollux convert` writes "
                        "it beside the .gguf — copy it along with the model")
    tensors = load_file(str(file))
    missing = [k for k in HEAD_KEYS if k not in tensors]
    if missing:
        raise GGUFError(f"{file}: lacks {', '.join(missing)}")
    return tensors[HEAD_KEYS[0]].astype(np.float32), tensors[HEAD_KEYS[1]].astype(np.float32)


class GGUFTokenizer:
    """llama.cpp's tokenizer and the GGUF's chat template, with the small part of a transformers
    tokenizer's interface that `pollux.prompts.chat_text` and `pollux.engine.jobs` use."""

    def __init__(self, llm: Any, chat_template: str):
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        self.llm = llm
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)  # as transformers renders
        env.globals["raise_exception"] = _raise
        self._template = env.from_string(chat_template)
        self.eos_token_id = int(llm.token_eos())
        self.pad_token_id = self.eos_token_id
        self.chat_template = chat_template

    def apply_chat_template(self, messages: list[dict[str, str]], *, tokenize: bool = False,
                            add_generation_prompt: bool = True) -> str:
        assert not tokenize, "GGUFTokenizer renders text only"
        return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                     eos_token=self.token_text(self.eos_token_id))

    def __call__(self, texts: Sequence[str]) -> dict[str, list[list[int]]]:
        # add_bos=True: llama.cpp adds BOS only where the model's vocabulary says so (not Qwen's)
        return {"input_ids": [self.llm.tokenize(t.encode("utf-8"), add_bos=True, special=True) for t in texts]}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return bytes(self.llm.detokenize(list(ids), special=not skip_special_tokens)).decode("utf-8", "replace")

    def token_text(self, token: int) -> str:
        return self.decode([token], skip_special_tokens=False)


def _raise(message: str) -> None:
    raise ValueError(message)


def choose_token(logits: np.ndarray, sampling: SamplingParams, rng: np.random.Generator | None, *,
                 seen: set[int] | None, generated: int, eos_ids: Sequence[int]) -> int:
    """The next token as `pollux.engine.sampling.next_tokens` picks it, for one row in numpy:
    repetition penalty, end-of-turn suppression below `min_new_tokens`, then greedy or
    temperature / top-k / top-p sampling. `logits` (float32 [vocab]) is modified in place."""
    if seen and sampling.repetition_penalty not in (None, 1.0):
        idx = np.fromiter(seen, dtype=np.int64)
        values = logits[idx]
        penalty = float(sampling.repetition_penalty)
        logits[idx] = np.where(values < 0, values * penalty, values / penalty)
    if generated < sampling.min_new_tokens and eos_ids:
        logits[list(eos_ids)] = -np.inf
    if sampling.greedy or rng is None:
        return int(np.argmax(logits))
    assert sampling.temperature is not None and sampling.top_p is not None and sampling.top_k is not None
    scaled = logits.astype(np.float64) / sampling.temperature
    if sampling.top_k > 0:
        kth = np.partition(scaled, -min(sampling.top_k, scaled.size))[-min(sampling.top_k, scaled.size)]
        scaled[scaled < kth] = -np.inf
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if sampling.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cum = np.cumsum(probs[order])
        drop = order[(cum - probs[order]) > sampling.top_p]
        probs[drop] = 0.0
        probs /= probs.sum()
    return int(rng.choice(probs.size, p=probs))


_PARAMS_LOCK = threading.Lock()


def extra_buffers_default() -> bool:
    """`$POLLUX_GGUF_EXTRA_BUFFERS` (0/false: off), else on (llama.cpp's default)."""
    return os.environ.get("POLLUX_GGUF_EXTRA_BUFFERS", "1").strip().lower() not in ("0", "false", "no", "off")


@contextmanager
def _model_params(extra_buffers: bool | None) -> Iterator[None]:
    """While a `Llama` is built: llama.cpp's model parameter `use_extra_bufts` (its extra weight
    buffer types: AMX tiles, repacked weights) as asked. Why: on a VM whose hypervisor does not
    enable AMX although the CPU and kernel report it (this project's Firecracker machines), llama.cpp's
    AMX matmul of quantised weights dies with SIGILL (`tileloadd`); f16 weights never use it.
    `Llama` takes no such argument, so its default-parameters function is wrapped for the call."""
    if extra_buffers is None:
        extra_buffers = extra_buffers_default()
    if extra_buffers:
        yield
        return
    import llama_cpp.llama_cpp as lib  # the module `Llama` calls

    with _PARAMS_LOCK:
        original = lib.llama_model_default_params

        def without_extra() -> Any:
            params = original()
            params.use_extra_bufts = False
            return params

        lib.llama_model_default_params = without_extra
        try:
            yield
        finally:
            lib.llama_model_default_params = original


class GGUFEngine:
    """Judges items with llama.cpp (see the module docstring)."""

    def __init__(self, path: str | Path, *, template: PromptTemplate | None = None,
                 sampling: SamplingParams | None = None, n_ctx: int | None = None, threads: int | None = None,
                 n_batch: int = 512, share_prefix: bool = True, expected_score: bool = False,
                 extra_buffers: bool | None = None):
        llama_cpp = import_llama_cpp()
        self.path = Path(path)
        if not self.path.is_file():
            raise GGUFError(f"{self.path}: no such GGUF file (make one with `pollux convert CKPT OUT.gguf`)")
        sidecar = read_sidecar(self.path)
        self.kind = str(sidecar.get("kind") or "generative")
        self.head = load_head(self.path, sidecar) if self.kind == REGRESSION_MARK else None
        self.name = f"gguf:{self.path}"
        self.quant = sidecar.get("quant")
        self.template = template or PromptTemplate()
        self.sampling = (sampling or SamplingParams()).resolve(sidecar.get("generation_config"))
        check_score_only(self.sampling, self.kind, self.name)
        self.share_prefix = share_prefix
        self.expected_score = expected_score and self.kind != REGRESSION_MARK
        with _model_params(extra_buffers):
            self.llm = llama_cpp.Llama(
                model_path=str(self.path), n_ctx=n_ctx or 0, n_batch=n_batch, n_ubatch=n_batch,
                n_threads=threads, n_threads_batch=threads, embeddings=False, logits_all=False,
                verbose=False)  # pooling: the model's (none for a causal LM): per-token hidden states
        # llama.cpp may pad the context it allocates; llama-cpp-python's token buffer is what was asked
        self.context = min(int(self.llm.n_ctx()), len(self.llm.input_ids))
        template_text = self.llm.metadata.get("tokenizer.chat_template")
        if not template_text:
            raise GGUFError(f"{self.path}: the GGUF has no chat template (tokenizer.chat_template); POLLUX judges "
                            "read ChatML — convert the checkpoint with `pollux convert`")
        self.tokenizer = GGUFTokenizer(self.llm, template_text)
        self.eos_ids = end_of_turn_ids((sidecar.get("generation_config") or {}).get("eos_token_id"),
                                       self.tokenizer.eos_token_id)
        self.threads = threads
        self._lib = llama_cpp
        # prompt tokens evaluated (after prefix reuse) and in total, decode steps, head reads
        self.stats = {"prompt_tokens": 0, "prompt_tokens_evaluated": 0, "decode_steps": 0, "head_reads": 0}

    def describe(self) -> dict[str, Any]:
        return {
            "engine": "gguf",
            "judge": self.name,
            "kind": self.kind,
            "quant": self.quant,
            "context": self.context,
            "template": self.template.to_dict(),
            "sampling": self.sampling.to_dict(),
        }

    def judge_many(self, items: Sequence[JudgeItem], on_verdict: OnVerdict | None = None) -> list[Verdict]:
        """Verdicts in input order; each reaches `on_verdict` once (`pollux.engine.jobs`). Prompts
        run sorted by their token ids, so an answer's criteria reuse each other's KV prefix."""
        done = Delivery(len(items), on_verdict)
        with caller_errors_unwrapped():
            jobs = prepare_jobs(items, tokenizer=self.tokenizer, template=self.template, context=self.context,
                                max_new_tokens=self.sampling.max_new_tokens, judge=self.name, done=done)
            for job in sorted(jobs, key=lambda j: j.ids):
                run_isolating_failures([job], partial(self._run, job, done), partial(self._run, done=done),
                                       done, judge=self.name)
        return done.all()

    # ---- one item ---------------------------------------------------------------------------

    def _run(self, job: Job, done: Delivery) -> None:
        started = time.perf_counter()
        try:
            generated, reason, score = self._generate(job)
        except Exception:
            self.llm.n_tokens = 0  # the KV cache's state is unknown: reuse nothing next time
            raise
        text = self.tokenizer.decode(generated, skip_special_tokens=True)
        done(job.index, make_verdict(
            job.item, text, head_score=score, prompt_tokens=len(job.ids), completion_tokens=len(generated),
            finish_reason=reason, time_s=time.perf_counter() - started, judge=self.name, parse=self.template.parse,
            score_probs="the gguf: engine does not compute expected scores" if self.expected_score else None))

    def _eval_prompt(self, ids: list[int]) -> None:
        """Evaluate `ids`, keeping the cached KV of their longest common prefix with the previous
        sequence (at least the last prompt token is evaluated: its logits choose the first token)."""
        keep = 0
        if self.share_prefix:
            cached = self.llm.input_ids[: self.llm.n_tokens]
            limit = min(len(cached), len(ids) - 1)
            diff = np.nonzero(cached[:limit] != np.asarray(ids[:limit]))[0]
            keep = int(diff[0]) if diff.size else limit
        self.llm.n_tokens = keep  # Llama.eval drops the KV cache from here on
        self.llm.eval(ids[keep:])
        self.stats["prompt_tokens"] += len(ids)
        self.stats["prompt_tokens_evaluated"] += len(ids) - keep

    def _generate(self, job: Job) -> tuple[list[int], str, float | None]:
        """Decode one job; returns its generated ids, finish reason and head score."""
        rng = None if self.sampling.greedy else np.random.default_rng(_item_seed(self.sampling.seed, job.item.key))
        return self.decode(job.ids, job.max_new, self.sampling, rng)

    def decode(self, ids: list[int], max_new: int, sampling: SamplingParams,
               rng: np.random.Generator | None) -> tuple[list[int], str, float | None]:
        """Evaluate the prompt `ids` (prefix reuse) and decode up to `max_new` tokens (which the
        caller has capped by the context); the head's score is read after the last one, or at the
        prompt's last token when `max_new` is 0 (score-only)."""
        from pollux.engine.sampling import stop_reason

        if max_new == 0:  # score-only: the head reads the prompt's last token, fed with embeddings on
            self._eval_prompt(ids[:-1])
            return [], "length", self._head_score(ids[-1])
        self._eval_prompt(ids)
        seen = set(ids) if sampling.repetition_penalty != 1.0 else None
        generated: list[int] = []
        while True:
            logits = self._last_logits()
            token = choose_token(logits, sampling, rng, seen=seen, generated=len(generated), eos_ids=self.eos_ids)
            generated.append(token)
            if seen is not None:
                seen.add(token)
            reason = stop_reason(token, len(generated), max_new, self.eos_ids)
            if reason:
                return generated, reason, self._head_score(token)
            self.llm.eval([token])
            self.stats["decode_steps"] += 1

    def _last_logits(self) -> np.ndarray:
        ptr = self._lib.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.llm.n_vocab(),)).astype(np.float32, copy=True)

    def _head_score(self, last: int) -> float | None:
        """-r judges: feed the last token once more with embeddings on; the head reads the
        post-norm hidden state of that step (as the model card's `regr_output` at the last token)."""
        if self.head is None:
            return None
        self._lib.llama_set_embeddings(self.llm.ctx, True)
        try:
            self.llm.eval([last])
            ptr = self._lib.llama_get_embeddings_ith(self.llm.ctx, -1)
            if not ptr:
                raise GGUFError("llama.cpp returned no hidden state for the head")
            hidden = np.ctypeslib.as_array(ptr, shape=(self.llm.n_embd(),)).astype(np.float32)
        finally:
            self._lib.llama_set_embeddings(self.llm.ctx, False)
        self.stats["head_reads"] += 1
        weight, bias = self.head
        return float(hidden @ weight[0] + bias[0])

    def close(self) -> None:
        self.llm.close()


def _item_seed(seed: int, key: str) -> int:
    """Per item, so that a sample does not depend on what else is judged (as the vLLM engine)."""
    import hashlib

    return int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:8], 16)


class GGUFChat:
    """A GGUF model writing chat replies (`pollux answer`, synth's models): the registry's chat
    loader for `gguf:PATH` (`pollux.engine.chat` describes requests and replies). Requests run
    one by one on one llama.cpp context, greedy or sampled with the request's seed; consecutive
    requests reuse their common prompt prefix's KV."""

    def __init__(self, path: str, *, n_ctx: int | None = None, threads: int | None = None, n_batch: int = 512,
                 extra_buffers: bool | None = None):
        self.engine = GGUFEngine(path, n_ctx=n_ctx, threads=threads, n_batch=n_batch, extra_buffers=extra_buffers)
        self.engine.head = None  # replies need no score
        self.name = path

    def generate(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [self._reply(r) for r in requests]

    def stream(self, requests: list[dict[str, Any]]) -> Any:
        for r in requests:
            yield self._reply(r)

    def _reply(self, r: dict[str, Any]) -> dict[str, Any]:
        start = time.perf_counter()
        tok = self.engine.tokenizer
        ids = tok([tok.apply_chat_template(r["messages"], add_generation_prompt=True)])["input_ids"][0]
        row = {"key": r["key"], "text": "", "error": None, "prompt_tokens": len(ids), "completion_tokens": 0,
               "latency_s": 0.0, "reasoning": None}
        room = self.engine.context - len(ids)
        if room < 1:
            return {**row, "error": f"prompt has {len(ids)} tokens but the context is {self.engine.context}"}
        temperature = float(r.get("temperature") or 0.0)
        sampling = SamplingParams(max_new_tokens=max(1, int(r["max_tokens"])), temperature=temperature, top_p=1.0,
                                  top_k=0, repetition_penalty=1.0, seed=int(r.get("seed") or 0))
        rng = np.random.default_rng(sampling.seed) if temperature > 0 else None
        try:
            generated, _, _ = self.engine.decode(ids, min(sampling.max_new_tokens, room), sampling, rng)
        except Exception as exc:
            self.engine.llm.n_tokens = 0
            return {**row, "error": f"engine error: {exc!r}"}
        return {**row, "text": tok.decode(generated), "completion_tokens": len(generated),
                "latency_s": time.perf_counter() - start}

    def close(self) -> None:
        self.engine.close()
