"""The in-process engine: batched, prefix-shared judging with transformers weights.

Why not `model.generate`? Three costs dominate a POLLUX evaluation (see shared engine notes):
the model card's loop generates one item at a time, re-runs a second full forward over
prompt + rationale just to read the regression head, and re-encodes the long shared part of
every prompt (instruction + reference + answer) once per criterion. This engine removes all three:

1. **Score in the generation pass.** After a sequence's last token is chosen it is fed once
   more; the head reads that step's final hidden state — exactly the state the model card's
   second forward reads at the last position (causal attention makes them equal).
2. **Shared prefix.** The criteria of one answer render to prompts that are identical up to the
   criterion section. Each prompt is tokenised whole (so token boundaries are exactly those of the
   full prompt); the longest common token prefix of a group is encoded once, its KV cache stored
   once, and every member's own tokens attend to it. Attention over "shared prefix + own part" is
   computed as one softmax across both key sets (no copy of the prefix per sequence).
3. **Batched decode with preallocated KV.** All sequences of a batch decode together; own-part
   KV buffers are allocated once per batch; finished rows are dropped from the batch.

The forward is written against the Qwen2 modules (norms, projections, MLP, rotary embedding are
the model's own; only attention and the cache are ours), so weights load as usual and results
match the stock forward within float tolerance. Models of other architectures fall back to
batched `generate` (generative judges only).

Batches are bounded by `batch_size` sequences and `max_batch_tokens` KV positions
(shared prefixes counted once, plus each sequence's own prompt part and `max_new_tokens`).

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
from torch import nn

from pollux.engine import OnLogprobs, OnText, OnVerdict, SamplingParams
from pollux.engine.jobs import Delivery, Job, caller_errors_unwrapped, prepare_jobs, run_isolating_failures
from pollux.engine.tokens import IncrementalText, LogprobFormatter, ScaleTokens, TokenTrace, scale_tokens
from pollux.prompts import PromptTemplate
from pollux.records import JudgeItem
from pollux.scales import Scale, parse_scale
from pollux.verdicts import Verdict, make_verdict

log = logging.getLogger(__name__)

# The `generate` fallback's bound on the raw logits it keeps when expected scores or logprobs need
# them (`generate` holds every step's [rows, vocab] logits until it returns).
GENERATE_LOGITS_BYTES = 1 << 30


# --------------------------------------------------------------------------------------------
# Planning: tokenise, group by shared prefix, pack into bounded batches
# --------------------------------------------------------------------------------------------


@dataclass
class Group:
    """Jobs whose prompts share `prefix_len` leading tokens (≥ 1 own token each)."""

    jobs: list[Job]
    prefix_len: int

    @property
    def prefix(self) -> list[int]:
        return self.jobs[0].ids[: self.prefix_len]

    def own_capacity(self) -> int:
        """KV slots each member's own part needs: prompt suffix + new tokens + the final feed."""
        return max(len(j.ids) - self.prefix_len + j.max_new + 1 for j in self.jobs)


def batch_kv_tokens(groups: Sequence[Group]) -> int:
    """KV positions a batch allocates: each shared prefix once, plus one own buffer per row
    sized for the batch's longest own part (buffers are preallocated, see `_OwnCache`)."""
    rows = sum(len(g.jobs) for g in groups)
    return sum(g.prefix_len for g in groups) + rows * max(g.own_capacity() for g in groups)


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for other in seqs[1:]:
        i = 0
        limit = min(n, len(other))
        while i < limit and first[i] == other[i]:
            i += 1
        n = i
    return n


def make_groups(jobs: list[Job], share_prefix: bool, batch_size: int, max_batch_tokens: int) -> list[Group]:
    """Group jobs by answer (instruction, reference, answer) — their prompts share everything up to
    the criterion — and split groups that would not fit one batch."""
    if not share_prefix:
        return [Group([j], len(j.ids) - 1) for j in jobs]
    by_answer: dict[tuple[str, str, str], list[Job]] = {}
    for j in jobs:
        by_answer.setdefault((j.item.instruction, j.item.reference_answer, j.item.answer), []).append(j)
    groups: list[Group] = []
    for members in by_answer.values():
        chunk: list[Job] = []
        for j in members:
            candidate = _shared_group([*chunk, j])
            if chunk and (len(candidate.jobs) > batch_size or batch_kv_tokens([candidate]) > max_batch_tokens):
                groups.append(_shared_group(chunk))
                chunk = []
            chunk.append(j)
        groups.append(_shared_group(chunk))
    return groups


def _shared_group(jobs: list[Job]) -> Group:
    # every member keeps at least one own token: its last prompt token yields the first logits
    shared = min(common_prefix_len([j.ids for j in jobs]), min(len(j.ids) for j in jobs) - 1)
    return Group(jobs, shared)


def pack_batches(groups: list[Group], batch_size: int, max_batch_tokens: int) -> list[list[Group]]:
    """Pack whole groups into batches, longest first, under both bounds. A group that alone
    exceeds `max_batch_tokens` (one huge item) still runs, alone."""
    batches: list[list[Group]] = []
    current: list[Group] = []
    for g in sorted(groups, key=lambda g: -max(len(j.ids) for j in g.jobs)):
        candidate = [*current, g]
        rows = sum(len(x.jobs) for x in candidate)
        if current and (rows > batch_size or batch_kv_tokens(candidate) > max_batch_tokens):
            batches.append(current)
            candidate = [g]
        current = candidate
    if current:
        batches.append(current)
    return batches


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


def sampling_generator(device: torch.device, sampling: SamplingParams) -> torch.Generator | None:
    """The seeded generator for a batch, on the device the logits live on: `torch.multinomial`
    rejects a generator on another device (a CPU generator with CUDA logits fails every item)."""
    if sampling.greedy:
        return None
    return torch.Generator(device=device).manual_seed(sampling.seed)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Transformers' repetition penalty (`RepetitionPenaltyLogitsProcessor`): the logit of every
    token already in the row's prompt + generated text is divided by `penalty` when positive and
    multiplied by it when negative. `seen` is a [rows, vocab] boolean mask of those tokens."""
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalised, logits)


def choose_tokens(logits: torch.Tensor, sampling: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """Greedy argmax, or temperature / top-k / top-p sampling (`sampling` resolved)."""
    if sampling.greedy:
        return logits.argmax(dim=-1)
    assert sampling.temperature is not None and sampling.top_p is not None and sampling.top_k is not None
    logits = logits.float() / sampling.temperature
    if sampling.top_k > 0:
        kth = torch.topk(logits, min(sampling.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        drop = probs.cumsum(-1) - probs > sampling.top_p  # keep the smallest set reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# --------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------


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
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.share_prefix = share_prefix
        self.prefill_chunk = prefill_chunk
        # G-Eval-style expected scores for generative judges (`pollux.engine.tokens`)
        self.expected_score = expected_score and kind != "regression"
        self._scale_tokens: dict[Scale | None, ScaleTokens | str] = {}
        self._formatter = LogprobFormatter(tokenizer)
        self.device = next(model.parameters()).device
        cfg = model.config
        self.context = int(getattr(cfg, "max_position_embeddings", 32768))
        self.eos_ids = self._eos_ids()
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

    def _eos_ids(self) -> list[int]:
        ids: set[int] = set()
        gen_cfg = getattr(self.model, "generation_config", None)
        for source in (getattr(gen_cfg, "eos_token_id", None), self.tokenizer.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif source:
                ids.update(int(i) for i in source)
        return sorted(ids)

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
        self._run_batch([Group([job], len(job.ids) - 1)], done)

    @torch.inference_mode()
    def _run_batch(self, batch: list[Group], done) -> None:
        self.stats["batches"] += 1
        if not self.custom_forward:
            return self._run_batch_generate(batch, done)
        started = time.perf_counter()
        generator = sampling_generator(self.device, self.sampling)
        prefixes = [self._prefill_prefix(g.prefix) for g in batch]
        rows = [_Row(job=j, group=gi) for gi, g in enumerate(batch) for j in g.jobs]
        for r in rows:
            r.trace, r.score_note = self._trace(r.job.item, done)
        cache = _OwnCache(self.model, rows, batch)
        seen = self._seen_tokens(rows)
        kv_tokens = sum(g.prefix_len for g in batch) + cache.rows * cache.capacity
        self.stats["peak_kv_tokens"] = max(self.stats["peak_kv_tokens"], kv_tokens)

        # First step: every row's own prompt tokens at once (right-padded).
        suffixes = [r.job.ids[batch[r.group].prefix_len :] for r in rows]
        longest = max(len(s) for s in suffixes)
        pad = self.tokenizer.pad_token_id or 0
        tokens = torch.tensor([s + [pad] * (longest - len(s)) for s in suffixes], device=self.device)
        self.stats["prefill_tokens"] += sum(g.prefix_len for g in batch) + sum(len(s) for s in suffixes)
        hidden = self._forward(tokens, rows, batch, prefixes, cache, start=[0] * len(rows))
        last = torch.tensor([len(s) - 1 for s in suffixes], device=self.device)
        final = hidden[torch.arange(len(rows), device=self.device), last]  # [B, hidden]
        for r, s in zip(rows, suffixes, strict=True):
            r.own_len = len(s)

        while True:
            # `final` holds each row's hidden state after its latest fed token.
            if self.kind == "regression":
                reading = [i for i, r in enumerate(rows) if r.finishing]
                if reading:
                    scores = self.model.regression_head(final[reading]).squeeze(-1).float().tolist()
                    for i, score in zip(reading, scores, strict=True):
                        rows[i].head_score = score
                        rows[i].finishing = False
            self._choose_next(rows, final, generator, seen, done)
            for r in rows:
                if r.finish_reason and not r.finishing:
                    self._finish(r, done, started)
            keep = [i for i, r in enumerate(rows) if not (r.finish_reason and not r.finishing)]
            if not keep:
                return
            if len(keep) < len(rows):
                if seen is not None:
                    seen = seen.index_select(0, torch.tensor(keep, device=seen.device))
                rows, final = cache.compact(rows, keep, final)
            feed = torch.tensor([[r.generated[-1]] for r in rows], device=self.device)
            final = self._forward(feed, rows, batch, prefixes, cache, start=[r.own_len for r in rows])[:, 0]
            for r in rows:
                r.own_len += 1
            self.stats["decode_steps"] += 1

    def _seen_tokens(self, rows: list[_Row]) -> torch.Tensor | None:
        """For the repetition penalty: a [rows, vocab] mask of the tokens in each row's prompt
        (generated tokens are added as they come). None when the penalty is off."""
        if self.sampling.repetition_penalty == 1.0:
            return None
        vocab = self.model.lm_head.out_features
        seen = torch.zeros(len(rows), vocab, dtype=torch.bool, device=self.device)
        for k, r in enumerate(rows):
            seen[k, torch.tensor(r.job.ids, device=self.device)] = True
        return seen

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
                          formatter=self._formatter), note

    def _observe(self, r: _Row, token: int, logprobs: torch.Tensor | None, done: Delivery) -> None:
        """Feed a row's chosen token to its trace; stream its text when whole characters came."""
        if r.trace is not None and r.trace.step(token, logprobs):
            done.text(r.job.index, r.trace.text.text)

    def _choose_next(self, rows: list[_Row], final: torch.Tensor, generator, seen: torch.Tensor | None,
                     done: Delivery) -> None:
        """Pick the next token of every row still generating. A row whose text is now complete
        is marked `finishing` when its last token must still be fed to read the head.
        Logits are processed in `generate`'s order: repetition penalty, end-of-turn suppression
        (`min_new_tokens`), then temperature / top-k / top-p. Traces read the raw logits."""
        active = [i for i, r in enumerate(rows) if r.finish_reason is None]
        if not active:
            return
        logits = self.model.lm_head(final[active]).float()
        reading = [rows[i].trace is not None and rows[i].trace.wants_logprobs() for i in active]  # type: ignore[union-attr]
        raw = logits.log_softmax(dim=-1) if any(reading) else None  # before any processor
        if seen is not None:
            assert self.sampling.repetition_penalty is not None
            index = torch.tensor(active, device=seen.device)
            logits = apply_repetition_penalty(logits, seen.index_select(0, index), self.sampling.repetition_penalty)
        for k, i in enumerate(active):
            if len(rows[i].generated) < self.sampling.min_new_tokens and self.eos_ids:
                logits[k, self.eos_ids] = float("-inf")
        chosen = choose_tokens(logits, self.sampling, generator).tolist()
        for k, (i, tok) in enumerate(zip(active, chosen, strict=True)):
            r = rows[i]
            r.generated.append(int(tok))
            self._observe(r, int(tok), raw[k] if raw is not None and reading[k] else None, done)
            if seen is not None:
                seen[i, int(tok)] = True
            if tok in self.eos_ids:
                r.finish_reason = "stop"
            elif len(r.generated) >= r.job.max_new:
                r.finish_reason = "length"
            r.finishing = bool(r.finish_reason) and self.kind == "regression"

    def _finish(self, r: _Row, done: Delivery, started: float) -> None:
        self._deliver(r.job, r.generated, r.finish_reason, r.trace, r.score_note, done, started, r.head_score)

    def _deliver(self, job: Job, generated: list[int], finish_reason: str | None, trace: TokenTrace | None,
                 note: str | None, done: Delivery, started: float, head_score: float | None = None) -> None:
        """A finished row's verdict (with its logprobs first, when asked)."""
        text = self.tokenizer.decode(generated, skip_special_tokens=True)
        probs: dict[str, float] | str | None = None
        if self.expected_score:
            probs = note or (trace.score_probs if trace is not None else None) or \
                "the reply has no score position ([RESULT] followed by a token)"
        if trace is not None and trace.logprobs is not None:
            done.logprobs(job.index, trace.logprobs)
        done(job.index, make_verdict(
            job.item, text, head_score=head_score, prompt_tokens=len(job.ids),
            completion_tokens=len(generated), finish_reason=finish_reason,
            time_s=time.perf_counter() - started, judge=self.name, score_probs=probs,
        ))

    # ---- the forward ------------------------------------------------------------------------

    def _prefill_prefix(self, prefix: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Encode a shared prefix once (batch 1, causal, in chunks); return per-layer (K, V) of
        shape [kv_heads, P, head_dim]."""
        m = self.model.model
        if not prefix:
            cfg = self.model.config
            p = next(self.model.parameters())
            empty = torch.zeros(cfg.num_key_value_heads, 0, m.layers[0].self_attn.head_dim, dtype=p.dtype, device=p.device)
            return [(empty, empty) for _ in m.layers]
        ids = torch.tensor([prefix], device=self.device)
        kv: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(m.layers)
        last = len(m.layers) - 1
        for a in range(0, len(prefix), self.prefill_chunk):
            b = min(a + self.prefill_chunk, len(prefix))
            x = m.embed_tokens(ids[:, a:b])
            cos, sin = m.rotary_emb(x, torch.arange(a, b, device=self.device)[None])
            for li, layer in enumerate(m.layers):
                # the prefix's hidden states after the last layer are never read: only its K/V
                q, k, v = _qkv(layer, x, cos, sin, queries=li < last)
                earlier = kv[li]
                if earlier is not None:
                    k = torch.cat([earlier[0], k[0]], dim=1)[None]
                    v = torch.cat([earlier[1], v[0]], dim=1)[None]
                kv[li] = (k[0], v[0])
                if li == last:
                    break
                mask = torch.ones(b - a, b, dtype=torch.bool, device=self.device).tril(diagonal=a)
                o = nn.functional.scaled_dot_product_attention(
                    q, k, v, attn_mask=mask, scale=layer.self_attn.scaling, enable_gqa=True
                )
                x = _finish_layer(layer, x, o)
        return kv  # type: ignore[return-value]

    def _forward(self, tokens, rows, batch, prefixes, cache: _OwnCache, start: list[int]) -> torch.Tensor:
        """Run `tokens` [B, L] (each row's next own tokens, starting at own index start[b]) through
        the model, attending to the row's group prefix and its own earlier tokens. Returns the
        final (post-norm) hidden states [B, L, hidden]."""
        m = self.model.model
        L = tokens.shape[1]
        prefix_len = torch.tensor([batch[r.group].prefix_len for r in rows], device=self.device)
        own_start = torch.tensor(start, device=self.device)
        offsets = torch.arange(L, device=self.device)
        positions = prefix_len[:, None] + own_start[:, None] + offsets[None]
        x = m.embed_tokens(tokens)
        cos, sin = m.rotary_emb(x, positions)
        # own keys visible to each query: own index ≤ the query's own index
        query_own = own_start[:, None] + offsets[None]  # [B, L]
        end = int(query_own.max()) + 1
        visible = torch.arange(end, device=self.device)[None, None, :] <= query_own[:, :, None]  # [B, L, T]
        spans = _group_spans(rows)
        for li, layer in enumerate(m.layers):
            q, k, v = _qkv(layer, x, cos, sin)
            own_k, own_v = cache.write(li, k, v, own_start, end)
            o = _merged_attention(q, own_k, own_v, visible, [(s, prefixes[g][li]) for g, s in spans],
                                  layer.self_attn.scaling)
            x = _finish_layer(layer, x, o)
        return m.norm(x)

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
        started = time.perf_counter()
        longest = max(len(j.ids) for j in jobs)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_ids[0]
        ids = torch.tensor([[pad] * (longest - len(j.ids)) + j.ids for j in jobs], device=self.device)
        mask = torch.tensor([[0] * (longest - len(j.ids)) + [1] * len(j.ids) for j in jobs], device=self.device)
        traced = [self._trace(j.item, done) for j in jobs]
        s = self.sampling
        out = self.model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=budget,
            min_new_tokens=min(s.min_new_tokens, budget) or None, do_sample=not s.greedy,
            temperature=s.temperature if not s.greedy else None, top_p=s.top_p if not s.greedy else None,
            top_k=(s.top_k or None) if not s.greedy else None, repetition_penalty=s.repetition_penalty,
            eos_token_id=self.eos_ids, pad_token_id=pad,
            streamer=_RowsStreamer(jobs, self.tokenizer, self.eos_ids, done) if done.on_text else None,
            # raw logits per step (before processors) for the traces: expected scores, logprobs
            return_dict_in_generate=True, output_logits=any(t is not None for t, _ in traced),
        )
        for b, (j, seq) in enumerate(zip(jobs, out.sequences[:, longest:].tolist(), strict=True)):
            gen = []
            reason = "length"
            trace, note = traced[b]
            for t, tok in enumerate(seq):
                gen.append(tok)
                if trace is not None:  # replayed: the streamer has sent the text already
                    wants = trace.wants_logprobs()
                    trace.step(tok, out.logits[t][b].float().log_softmax(-1) if wants else None)
                if tok in self.eos_ids:
                    reason = "stop"
                    break
            self._deliver(j, gen, reason, trace, note, done, started)


class _RowsStreamer:
    """A `generate` streamer (the `put`/`end` protocol of transformers' `BaseStreamer`) that sends
    each row's text so far to the caller's `on_text`, whole characters only."""

    def __init__(self, jobs: list[Job], tokenizer: Any, eos_ids: list[int], done: Delivery):
        self.jobs = jobs
        self.texts = [IncrementalText(tokenizer) for _ in jobs]
        self.stopped = [False] * len(jobs)
        self.eos = set(eos_ids)
        self.done = done
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate's first call hands over the prompts
            self.prompt_seen = True
            return
        for b, tok in enumerate(value.reshape(-1).tolist()):
            if self.stopped[b] or tok in self.eos:
                self.stopped[b] = True
                continue
            if self.texts[b].add(int(tok)):
                self.done.text(self.jobs[b].index, self.texts[b].text)

    def end(self) -> None:
        pass


# --------------------------------------------------------------------------------------------
# Building blocks of the forward
# --------------------------------------------------------------------------------------------


def _qkv(layer, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, queries: bool = True):
    """Pre-norm, projections and rotary embedding of one decoder layer: q [B,H,L,D] (None when
    `queries` is False), k/v [B,KVH,L,D]."""
    from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

    attn = layer.self_attn
    B, L, _ = x.shape
    h = layer.input_layernorm(x)
    k = attn.k_proj(h).view(B, L, -1, attn.head_dim).transpose(1, 2)
    v = attn.v_proj(h).view(B, L, -1, attn.head_dim).transpose(1, 2)
    q = attn.q_proj(h).view(B, L, -1, attn.head_dim).transpose(1, 2) if queries else k
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    return (q if queries else None), k, v


def _finish_layer(layer, x: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
    """Output projection, residual, post-attention norm, MLP, residual."""
    B, _, L, _ = attn_out.shape
    x = x + layer.self_attn.o_proj(attn_out.transpose(1, 2).reshape(B, L, -1))
    return x + layer.mlp(layer.post_attention_layernorm(x))


def _group_spans(rows: list[_Row]) -> list[tuple[int, slice]]:
    """Rows of a group are contiguous (they are built and compacted in order): (group, rows)."""
    spans = []
    start = 0
    for i in range(1, len(rows) + 1):
        if i == len(rows) or rows[i].group != rows[start].group:
            spans.append((rows[start].group, slice(start, i)))
            start = i
    return spans


_EXP_FLOOR = -80.0


def _merged_attention(q, own_k, own_v, visible, prefix_parts, scale: float) -> torch.Tensor:
    """Softmax attention over [group prefix keys ; own keys] for every query, without copying a
    prefix per row: one max / sum across both key sets.

    q [B,H,L,D]; own_k/own_v [B,KVH,T,D]; visible [B,L,T] (own keys each query may see);
    prefix_parts: (rows slice, (K [KVH,P,D], V [KVH,P,D])) per group. Returns [B,H,L,D].
    """
    B, H, L, D = q.shape
    KVH = own_k.shape[1]
    rep = H // KVH
    qg = (q * scale).reshape(B, KVH, rep * L, D)  # head h reads kv head h // rep; scaled once, here
    s_own = torch.matmul(qg, own_k.transpose(-1, -2))  # [B,KVH,rep*L,T]
    s_own.view(B, KVH, rep, L, -1).masked_fill_(~visible[:, None, None], float("-inf"))
    m_own = s_own.amax(dim=-1, keepdim=True)
    out = torch.empty(B, KVH, rep * L, D, dtype=q.dtype, device=q.device)
    # Large score tensors are exponentiated in place (no temporaries on the hot path), after
    # clamping at -80: exp(-80) ≈ 2e-35 weighs nothing next to the row's maximum (weight 1), and
    # CPUs' vectorised exp takes a several-times-slower path for inputs far below that (masked
    # keys are -inf; random or sharp models give scores thousands apart).
    for rows, (pk, pv) in prefix_parts:
        n = rows.stop - rows.start
        if pk.shape[1] == 0:  # nothing shared: plain attention over the own keys
            e_own = s_own[rows].sub_(m_own[rows]).clamp_(min=_EXP_FLOOR).exp_()
            out[rows] = torch.matmul(e_own, own_v[rows]) / e_own.sum(dim=-1, keepdim=True)
            continue
        qp = qg[rows].permute(1, 0, 2, 3).reshape(KVH, n * rep * L, D)
        s_pre = torch.matmul(qp, pk.transpose(-1, -2))  # [KVH, n*rep*L, P]
        m = torch.maximum(s_pre.amax(dim=-1, keepdim=True),
                          m_own[rows].permute(1, 0, 2, 3).reshape(KVH, n * rep * L, 1))
        e_pre = s_pre.sub_(m).clamp_(min=_EXP_FLOOR).exp_()
        num = torch.matmul(e_pre, pv)  # [KVH, n*rep*L, D]
        den = e_pre.sum(dim=-1, keepdim=True)
        e_own = s_own[rows].sub_(m.reshape(KVH, n, rep * L, 1).permute(1, 0, 2, 3)).clamp_(min=_EXP_FLOOR).exp_()
        num = num.reshape(KVH, n, rep * L, D).permute(1, 0, 2, 3) + torch.matmul(e_own, own_v[rows])
        den = den.reshape(KVH, n, rep * L, 1).permute(1, 0, 2, 3) + e_own.sum(dim=-1, keepdim=True)
        out[rows] = num / den
    return out.view(B, H, L, D)


class _OwnCache:
    """Preallocated per-row KV buffers for the rows' own tokens (prompt suffix + generated)."""

    def __init__(self, model: Any, rows: list[_Row], batch: list[Group]):
        cfg = model.config
        p = next(model.parameters())
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.rows = len(rows)
        self.capacity = max(g.own_capacity() for g in batch)
        shape = (self.rows, cfg.num_key_value_heads, self.capacity, head_dim)
        self.k = [torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in range(cfg.num_hidden_layers)]
        self.v = [torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in range(cfg.num_hidden_layers)]

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, start: torch.Tensor, end: int):
        """Store k/v [B,KVH,L,D] at each row's own positions start[b]…; return buffers up to `end`."""
        B, _, L, _ = k.shape
        if L == 1:
            rows = torch.arange(B, device=k.device)
            self.k[layer][rows, :, start] = k[:, :, 0]
            self.v[layer][rows, :, start] = v[:, :, 0]
        else:  # the first step: all rows start at own index 0
            self.k[layer][:, :, :L] = k
            self.v[layer][:, :, :L] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def compact(self, rows: list[_Row], keep: list[int], final: torch.Tensor):
        idx = torch.tensor(keep, device=final.device)
        self.k = [t.index_select(0, idx) for t in self.k]
        self.v = [t.index_select(0, idx) for t in self.v]
        return [rows[i] for i in keep], final.index_select(0, idx)
