"""The in-process engine: batched, prefix-shared judging with transformers weights.

Why not `model.generate`? Three costs dominate a POLLUX evaluation (see docs/engine.md): the
model card's loop generates one item at a time, re-runs a second full forward over prompt +
rationale just to read the regression head, and re-encodes the long shared part of every prompt
(instruction + reference + answer) once per criterion. This engine removes all three:

1. **Score in the generation pass.** After a sequence's last token is chosen it is fed once
   more; the head reads that step's final hidden state — exactly the state the model card's
   second forward reads at the last position (causal attention makes them equal).
2. **Shared prefix.** The longest common token prefix of an answer's prompts is encoded once and
   every member's own tokens attend to it (`pollux.engine.plan` groups and packs the prompts,
   `pollux.engine.kv` is the cache and attention the model's own layers run with).
3. **Batched decode with preallocated KV.** All sequences of a batch decode together; own-part
   KV buffers are allocated once per batch; finished rows are dropped from the batch.

This module composes them: the decode loop, what a row's trace reads (`pollux.engine.tokens`),
the next token (`pollux.engine.sampling`) and delivery (`pollux.engine.jobs`). Models of other
architectures fall back to batched `generate` (generative judges only).

Context policy: a prompt that does not fit the model's context (with room for at least one new
token) gets an error verdict naming the sizes; generation stops with `finish_reason="length"`
when prompt + generated text reaches the context. Other items of the batch are unaffected.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from pollux.engine import OnLogprobs, OnText, OnVerdict, SamplingParams, check_score_only, end_of_turn_ids
from pollux.engine.fallback import generate
from pollux.engine.jobs import Delivery, Job, caller_errors_unwrapped, prepare_jobs, run_isolating_failures
from pollux.engine.kv import PrefixSharedCache, forward_rows, prefill_prefix, shared_attention
from pollux.engine.plan import Group, alone, make_groups, pack_batches
from pollux.engine.sampling import next_tokens, sampling_generator, seen_tokens, stop_reason
from pollux.engine.tokens import LogprobFormatter, ScaleTokens, TokenTrace, scale_tokens
from pollux.prompts import PromptTemplate
from pollux.records import JudgeItem
from pollux.scales import Scale, parse_scale
from pollux.verdicts import EXPECTED_SCORE_ON_REGRESSION, Verdict, make_verdict

log = logging.getLogger(__name__)

# The `generate` fallback's bound on the raw logits it keeps when expected scores or logprobs need
# them (`generate` holds every step's [rows, vocab] logits until it returns).
GENERATE_LOGITS_BYTES = 1 << 30


@dataclass
class _Row:
    """One sequence being decoded."""

    job: Job
    group: int  # index of its group within the batch
    own_len: int = 0  # tokens in its own KV part (prompt suffix + fed generated tokens)
    generated: list[int] = field(default_factory=list)
    finishing: bool = False  # its last token is chosen; the next step only reads the head
    finish_reason: str | None = None
    head_score: float | None = None
    trace: TokenTrace | None = None  # streaming, expected score, logprobs: only when asked
    score_note: str | None = None  # why this row cannot have an expected score


class TransformersEngine:
    """Judges items with an in-process transformers model (see the module docstring)."""

    def __init__(
        self,
        model: Any,  # a Qwen2-family (or, for the fallback, any) transformers causal LM
        tokenizer: Any,
        *,
        kind: str,
        name: str,
        template: PromptTemplate | None = None,
        sampling: SamplingParams | None = None,
        batch_size: int = 32,
        max_batch_tokens: int = 65_536,
        share_prefix: bool = True,
        prefill_chunk: int = 1024,
        expected_score: bool = False,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.kind = kind
        self.name = name
        self.template = template or PromptTemplate()
        # explicit values > the checkpoint's generation_config.json > pollux's defaults
        self.sampling = (sampling or SamplingParams()).resolve(getattr(model, "generation_config", None))
        check_score_only(self.sampling, kind, name)
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.share_prefix = share_prefix
        self.prefill_chunk = prefill_chunk
        # G-Eval-style expected scores for generative judges (`pollux.engine.tokens`)
        self.expected_score = expected_score and kind != "regression"
        self.expected_score_note = EXPECTED_SCORE_ON_REGRESSION if expected_score and kind == "regression" else None
        self._scale_tokens: dict[Scale | None, ScaleTokens | str] = {}
        self._formatter = LogprobFormatter(tokenizer)
        self.device = next(model.parameters()).device
        cfg = model.config
        self.context = int(getattr(cfg, "max_position_embeddings", 32768))
        self.eos_ids = end_of_turn_ids(getattr(getattr(self.model, "generation_config", None), "eos_token_id", None),
                                       self.tokenizer.eos_token_id)
        self.custom_forward = getattr(cfg, "model_type", "") == "qwen2" and not getattr(
            cfg, "use_sliding_window", False
        )
        # counters for benchmarks and tests: prompt tokens encoded, decode steps, batches run,
        # and the largest KV allocation of a batch (in token positions)
        self.stats = {"prefill_tokens": 0, "decode_steps": 0, "batches": 0, "peak_kv_tokens": 0}

    @classmethod
    def from_pretrained(cls, path: str, *, dtype: str = "auto", device: str = "auto", **kwargs: Any):
        from pollux.checkpoint import load_judge

        loaded = load_judge(path, dtype=dtype, device=device)
        return cls(loaded.model, loaded.tokenizer, kind=loaded.kind, name=str(path), **kwargs)

    def describe(self) -> dict[str, Any]:
        cfg = self.model.config
        return {
            "engine": "transformers",
            "judge": self.name,
            "kind": self.kind,
            "architecture": (getattr(cfg, "architectures", None) or ["?"])[0],
            "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
            "template": self.template.to_dict(),
            "sampling": self.sampling.to_dict(),
            # only when on: runs created without it keep their configuration (and resume)
            **({"expected_score": True} if self.expected_score else {}),
        }

    # ---- public ---------------------------------------------------------------------------

    def judge_many(self, items: Sequence[JudgeItem], on_verdict: OnVerdict | None = None, *,
                   on_text: OnText | None = None, top_logprobs: int | None = None,
                   on_logprobs: OnLogprobs | None = None) -> list[Verdict]:
        """Judge `items`; verdicts in input order. Hooks, each optional and free when unused:
        `on_verdict(i, verdict)` as each completes; `on_text(i, text_so_far)` after each decode step
        that added whole characters to a row still generating; with `top_logprobs=K`,
        `on_logprobs(i, content)` before item i's verdict, with OpenAI-format logprobs of each
        generated token (raw log-softmax at temperature 1, the K most likely alternatives)."""
        done = Delivery(len(items), on_verdict, on_text=on_text, on_logprobs=on_logprobs, top_logprobs=top_logprobs)
        with caller_errors_unwrapped():
            jobs = prepare_jobs(items, tokenizer=self.tokenizer, template=self.template, context=self.context,
                                max_new_tokens=self.sampling.max_new_tokens, judge=self.name, done=done)
            groups = make_groups(jobs, self.share_prefix, self.batch_size, self.max_batch_tokens)
            for batch in pack_batches(groups, self.batch_size, self.max_batch_tokens):
                # a failed batch (e.g. out of memory) is rerun item by item, without prefix sharing
                run_isolating_failures([j for g in batch for j in g.jobs], partial(self._run_batch, batch, done),
                                       partial(self._run_alone, done=done), done, judge=self.name)
        return done.all()

    # ---- running a batch --------------------------------------------------------------------

    def _run_alone(self, job: Job, done: Delivery) -> None:
        self._run_batch([alone(job)], done)

    @torch.inference_mode()
    def _run_batch(self, batch: list[Group], done: Delivery) -> None:
        self.stats["batches"] += 1
        if not self.custom_forward:
            return self._run_batch_generate(batch, done)
        with shared_attention(self.model):
            self._decode_batch(batch, done)

    def _decode_batch(self, batch: list[Group], done: Delivery) -> None:
        """Prefill, then decode every row of the batch until each has its verdict."""
        started = time.perf_counter()
        generator = sampling_generator(self.device, self.sampling)
        rows = [_Row(job=j, group=gi) for gi, g in enumerate(batch) for j in g.jobs]
        for r in rows:
            r.trace, r.score_note = self._trace(r.job.item, done)
        cache, final = self._prefill(batch, rows)
        for r in rows:
            if r.job.max_new == 0:  # score-only: the head reads the prompt's last token, nothing is generated
                r.finish_reason, r.finishing = "length", self.kind == "regression"
        seen = seen_tokens([r.job.ids for r in rows], self.model.lm_head.out_features, self.device, self.sampling)
        while True:
            # `final` holds each row's hidden state after its latest fed token.
            self._read_head(rows, final)
            self._choose_next(rows, final, generator, seen, done)
            for r in rows:
                if r.finish_reason and not r.finishing:
                    self._finish(r, done, started)
            keep = [i for i, r in enumerate(rows) if not (r.finish_reason and not r.finishing)]
            if not keep:
                return
            if len(keep) < len(rows):
                index = torch.tensor(keep, device=self.device)
                seen = seen.index_select(0, index) if seen is not None else None
                cache.keep(keep)
                rows, final = [rows[i] for i in keep], final.index_select(0, index)
            feed = torch.tensor([[r.generated[-1]] for r in rows], device=self.device)
            final = forward_rows(self.model, feed, cache, [r.own_len for r in rows])[:, 0]
            for r in rows:
                r.own_len += 1
            self.stats["decode_steps"] += 1

    def _prefill(self, batch: list[Group], rows: list[_Row]) -> tuple[PrefixSharedCache, torch.Tensor]:
        """Encode each group's prefix once, then every row's own prompt tokens at once
        (right-padded). Returns the batch's cache and each row's hidden state [B, hidden] after its
        last prompt token."""
        prefixes = [prefill_prefix(self.model, g.prefix, self.prefill_chunk) for g in batch]
        cache = PrefixSharedCache(self.model, prefixes, [g.prefix_len for g in batch], [r.group for r in rows],
                                  capacity=max(g.own_capacity() for g in batch))
        self.stats["peak_kv_tokens"] = max(self.stats["peak_kv_tokens"], cache.kv_tokens())
        suffixes = [r.job.ids[batch[r.group].prefix_len :] for r in rows]
        longest = max(len(s) for s in suffixes)
        pad = self.tokenizer.pad_token_id or 0
        tokens = torch.tensor([s + [pad] * (longest - len(s)) for s in suffixes], device=self.device)
        self.stats["prefill_tokens"] += sum(g.prefix_len for g in batch) + sum(len(s) for s in suffixes)
        hidden = forward_rows(self.model, tokens, cache, [0] * len(rows))
        last = torch.tensor([len(s) - 1 for s in suffixes], device=self.device)
        for r, s in zip(rows, suffixes, strict=True):
            r.own_len = len(s)
        return cache, hidden[torch.arange(len(rows), device=self.device), last]

    def _read_head(self, rows: list[_Row], final: torch.Tensor) -> None:
        """Regression judges: the head's score of each row whose last token was just fed."""
        if self.kind != "regression":
            return
        reading = [i for i, r in enumerate(rows) if r.finishing]
        if reading:
            scores = self.model.regression_head(final[reading]).squeeze(-1).float().tolist()
            for i, score in zip(reading, scores, strict=True):
                rows[i].head_score = score
                rows[i].finishing = False

    def _trace(self, item: JudgeItem, done: Delivery) -> tuple[TokenTrace | None, str | None]:
        """A row's `TokenTrace` when the caller or the options ask for what it reads (else None:
        the default loop stays as it was), and why the row cannot have an expected score."""
        scale: ScaleTokens | None = None
        note: str | None = None
        if self.expected_score:
            key = parse_scale(item.rubrics)
            if key not in self._scale_tokens:
                self._scale_tokens[key] = scale_tokens(self.tokenizer, key)
            found = self._scale_tokens[key]
            scale, note = (None, found) if isinstance(found, str) else (found, None)
        if scale is None and done.on_text is None and done.top_logprobs is None:
            return None, note
        return TokenTrace(self.tokenizer, scale=scale, top_logprobs=done.top_logprobs,
                          formatter=self._formatter, reply=self.template.reply), note

    def _observe(self, r: _Row, token: int, logprobs: torch.Tensor | None, done: Delivery) -> None:
        """Feed a row's chosen token to its trace; stream its text when whole characters came."""
        if r.trace is not None and r.trace.step(token, logprobs):
            done.text(r.job.index, r.trace.text.text)

    def _choose_next(self, rows: list[_Row], final: torch.Tensor, generator: torch.Generator | None,
                     seen: torch.Tensor | None, done: Delivery) -> None:
        """Pick the next token of every row still generating (`pollux.engine.sampling`). A row
        whose text is now complete is marked `finishing` when its last token must still be fed to
        read the head. Traces read the raw logits (before any processing)."""
        active = [i for i, r in enumerate(rows) if r.finish_reason is None]
        if not active:
            return
        logits = self.model.lm_head(final[active]).float()
        reading = [rows[i].trace is not None and rows[i].trace.wants_logprobs() for i in active]  # type: ignore[union-attr]
        raw = logits.log_softmax(dim=-1) if any(reading) else None  # before any processor
        active_seen = seen.index_select(0, torch.tensor(active, device=seen.device)) if seen is not None else None
        chosen = next_tokens(logits, self.sampling, generator, seen=active_seen,
                             generated=[len(rows[i].generated) for i in active], eos_ids=self.eos_ids)
        for k, (i, tok) in enumerate(zip(active, chosen, strict=True)):
            r = rows[i]
            r.generated.append(tok)
            self._observe(r, tok, raw[k] if raw is not None and reading[k] else None, done)
            if seen is not None:
                seen[i, tok] = True
            r.finish_reason = stop_reason(tok, len(r.generated), r.job.max_new, self.eos_ids)
            r.finishing = bool(r.finish_reason) and self.kind == "regression"

    def _finish(self, r: _Row, done: Delivery, started: float) -> None:
        self._deliver(r.job, r.generated, r.finish_reason, r.trace, r.score_note, done, started, r.head_score)

    def _deliver(self, job: Job, generated: list[int], finish_reason: str | None, trace: TokenTrace | None,
                 note: str | None, done: Delivery, started: float, head_score: float | None = None) -> None:
        """A finished row's verdict (with its logprobs first, when asked)."""
        text = self.tokenizer.decode(generated, skip_special_tokens=True)
        probs: dict[str, float] | str | None = self.expected_score_note  # asked of a -r judge: say why none
        if self.expected_score:
            probs = note or (trace.score_probs if trace is not None else None) or \
                "the reply has no score position ([RESULT] followed by a token)"
        if trace is not None and trace.logprobs is not None:
            done.logprobs(job.index, trace.logprobs)
        done(job.index, make_verdict(
            job.item, text, head_score=head_score, prompt_tokens=len(job.ids),
            completion_tokens=len(generated), finish_reason=finish_reason,
            time_s=time.perf_counter() - started, judge=self.name, score_probs=probs,
            parse=self.template.parse,
        ))

    # ---- fallback for other architectures ----------------------------------------------------

    def _run_batch_generate(self, batch: list[Group], done: Delivery) -> None:
        """Batched `generate` for non-Qwen2 generative judges (no prefix sharing, no head). Jobs
        are generated in sub-batches of equal token budget: `generate` takes one `max_new_tokens`
        per call, and each job's budget is its own (`min(max_new_tokens, context - prompt)`)."""
        by_budget: dict[int, list[Job]] = {}
        for j in (j for g in batch for j in g.jobs):
            by_budget.setdefault(j.max_new, []).append(j)
        for budget, jobs in by_budget.items():
            rows = self._generate_rows(budget, done)
            for a in range(0, len(jobs), rows):
                self._generate_jobs(jobs[a:a + rows], budget, done)

    def _generate_rows(self, budget: int, done: Delivery) -> int:
        """Rows per `generate` call. Unbounded (the batch) unless traces need the raw logits:
        `generate` then keeps every step's [rows, vocab] logits until it returns, so calls are
        sized to hold at most `GENERATE_LOGITS_BYTES` of them (at least one row)."""
        if not (self.expected_score or done.top_logprobs is not None):
            return self.batch_size
        per_row = budget * int(self.model.config.vocab_size) * 4
        return max(1, GENERATE_LOGITS_BYTES // per_row)

    def _generate_jobs(self, jobs: list[Job], budget: int, done: Delivery) -> None:
        """One `generate` call (`pollux.engine.fallback`), then each row replayed through its trace
        (the streamer has sent the text already) and delivered."""
        started = time.perf_counter()
        traced = [self._trace(j.item, done) for j in jobs]
        sequences, logits = generate(self.model, self.tokenizer, jobs, budget, sampling=self.sampling,
                                     eos_ids=self.eos_ids, done=done,
                                     output_logits=any(t is not None for t, _ in traced))
        for b, (j, seq) in enumerate(zip(jobs, sequences, strict=True)):
            gen = []
            reason = "length"
            trace, note = traced[b]
            for t, tok in enumerate(seq):
                gen.append(tok)
                if trace is not None:
                    wants = trace.wants_logprobs()
                    trace.step(tok, logits[t][b].float().log_softmax(-1) if wants else None)
                if tok in self.eos_ids:
                    reason = "stop"
                    break
            self._deliver(j, gen, reason, trace, note, done, started)
