"""What an engine reads from a generation as it goes, token by token: the text so far (streaming),
the distribution over the rubric's scale at the score position (expected scores, G-Eval style),
and per-token logprobs in OpenAI's format (`pollux serve`'s `logprobs`).

One row's `TokenTrace` sees each chosen token (and, when asked, the raw log-softmax of that step's
logits). Engines create traces only when the caller asked for one of these, so the default
decode loop does no extra work.

**The score position** is the step that produces the first non-whitespace token after
`[RESULT]` (and optional whitespace). The probability of each scale value there is read from the
raw logits (temperature 1, before repetition penalty, end-of-turn suppression or sampling
settings), restricted to the tokens that spell a value (`"1"`, and `" 1"` where the tokenizer has
such a token: they are merged) and renormalised over the scale. A scale value that is not one
token (negative or multi-digit values under Qwen's tokenizer, which splits digits) would need the
chained probability of its tokens; pollux does not compute that: such a verdict has no expected
score and says why in `meta["expected_score_note"]`. The greedy score is never changed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pollux.scales import Scale, scale_value_keys

_AFTER_RESULT = re.compile(r"\[RESULT\]\s*$")
# How much of a row's tail text the score-position test reads: `[RESULT]` and some whitespace.
_TAIL = 64


def at_score_position(text: str, reply: str = "result") -> bool:
    """Whether the next non-whitespace token of `text` is the score: the text ends in `[RESULT]`
    and optional whitespace; for a bare-integer judge (`reply="bare"`, Pollux-4B: see
    `pollux.scales.parse_bare`), nothing but whitespace since the reply's start or since its
    reasoning's `</think>`. (A bare reply's first token may be `<think>` instead: callers keep a
    bare position only when the chosen token is a scale value.)"""
    tail = text[-_TAIL:]
    if reply != "bare":
        return _AFTER_RESULT.search(tail) is not None
    if "</think>" in tail:
        return not tail.rsplit("</think>", 1)[-1].strip()
    return not text or text.isspace()


class IncrementalText:
    """Decodes generated tokens one at a time into whole characters.

    The usual incremental detokenisation (as in vLLM and transformers' streamers): the text of
    the newest tokens is decoded together with a few earlier ones, so that a character spread over
    several byte-level tokens appears only once all its bytes are there (a trailing U+FFFD means
    "incomplete", and is held back). Special tokens (end of turn) add nothing, as in the verdict's
    `raw_text` (`skip_special_tokens=True`)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.text = ""
        self._prefix = 0  # tokens before this index are settled text
        self._read = 0  # tokens before this index have been emitted

    def add(self, token: int) -> str:
        """Add one token; return the new whole characters (possibly '')."""
        self.tokens.append(token)
        before = self._decode(self.tokens[self._prefix:self._read])
        full = self._decode(self.tokens[self._prefix:])
        if len(full) <= len(before) or full.endswith("\ufffd"):
            return ""
        new = full[len(before):]
        self._prefix, self._read = self._read, len(self.tokens)
        self.text += new
        return new

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True) if ids else ""


@dataclass(frozen=True)
class ScaleTokens:
    """The token ids that spell each scale value (`keys[i]` ← `ids[i]`), for one tokenizer."""

    keys: tuple[str, ...]
    ids: tuple[tuple[int, ...], ...]

    def probs(self, logprobs: Any) -> dict[str, float]:
        """The renormalised probability of each value from one step's log-softmax (a 1-D tensor)."""
        import torch

        flat = [i for ids in self.ids for i in ids]
        weights = torch.softmax(logprobs[flat].double(), dim=-1).tolist()
        out: dict[str, float] = {}
        k = 0
        for key, ids in zip(self.keys, self.ids, strict=True):
            out[key] = float(sum(weights[k:k + len(ids)]))
            k += len(ids)
        return out


def scale_tokens(tokenizer: Any, scale: Scale | None) -> ScaleTokens | str:
    """The scale's value tokens for `tokenizer`, or why there are none (a note for the verdict)."""
    keys = scale_value_keys(scale)
    if keys is None:
        return "the rubric's scale does not list its values"
    ids: list[tuple[int, ...]] = []
    multi = []
    for key in keys:
        found = tuple(sorted({enc[0] for text in (key, " " + key)
                              if len(enc := tokenizer.encode(text, add_special_tokens=False)) == 1}))
        if not found:
            multi.append(key)
        ids.append(found)
    if multi:
        return f"scale value(s) {', '.join(multi)} are not single tokens (chained probabilities are not computed)"
    return ScaleTokens(tuple(keys), tuple(ids))


def probs_from_top_logprobs(content: Sequence[Mapping[str, Any]], scale: Scale | None,
                            reply: str = "result") -> dict[str, float] | str:
    """The scale distribution at the score position of OpenAI-format `logprobs.content`, or why there
    is none. Used by engines that only see the top-K logprobs of each token (OpenAI-compatible
    servers, vLLM): the position is found as in-process (the last score position in the text), the
    top tokens that strip to a scale value are merged (`" 2"` and `"2"`), and mass outside the
    top K is ignored by renormalising. Values must be single digits — the only values such a
    server's tokenizer can be assumed to spell with one token."""
    keys = scale_value_keys(scale)
    if keys is None:
        return "the rubric's scale does not list its values"
    if any(not (len(k) == 1 and k.isdigit()) for k in keys):
        return f"scale values {', '.join(keys)} are not all single digits (chained probabilities are not computed)"
    text = ""
    position: Mapping[str, Any] | None = None
    for entry in content:
        token = str(entry.get("token", ""))
        if at_score_position(text, reply) and token.strip() and (reply != "bare" or token.strip() in keys):
            position = entry
        text += token
    if position is None:
        return "no score position ([RESULT] then a token) in the reply's logprobs"
    found: dict[str, float] = dict.fromkeys(keys, 0.0)
    top = position.get("top_logprobs") or []
    for alt in _with_chosen(position, top):
        key = str(alt.get("token", "")).strip()
        if key in found and alt.get("logprob") is not None:
            found[key] += math.exp(float(alt["logprob"]))
    total = sum(found.values())
    if total <= 0:
        return "no scale value among the score position's top logprobs"
    return {k: v / total for k, v in found.items()}


def _with_chosen(position: Mapping[str, Any], top: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The top alternatives, plus the chosen token when it is not among them (a sampled token
    can lie outside the top K); each token once."""
    alts = list(top)
    if all(a.get("token") != position.get("token") for a in alts):
        alts.append(position)
    return alts


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {c: b for b, c in bytes_to_unicode().items()}


class LogprobFormatter:
    """OpenAI-format logprob entries (`token`, `logprob`, `bytes`, `top_logprobs`) for one
    tokenizer; each token's bytes are the byte-level piece's own bytes, so the entries of a
    reply concatenate to its text exactly (a character split over tokens included)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.special = set(getattr(tokenizer, "all_special_ids", []) or [])
        self._bytes: dict[int, bytes] = {}

    def token_bytes(self, token: int) -> bytes:
        if token not in self._bytes:
            piece = self.tokenizer.convert_ids_to_tokens(token)
            decoder = _byte_decoder()
            if token not in self.special and isinstance(piece, str) and all(c in decoder for c in piece):
                self._bytes[token] = bytes(decoder[c] for c in piece)
            else:  # not a byte-level piece (special token, sentencepiece): its decoded text
                self._bytes[token] = self.tokenizer.decode([token]).encode("utf-8")
        return self._bytes[token]

    def item(self, token: int, logprob: float) -> dict[str, Any]:
        raw = self.token_bytes(token)
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(raw)}

    def entry(self, token: int, logprobs: Any, top: int) -> dict[str, Any]:
        """The entry of a chosen `token` from one step's log-softmax (a 1-D tensor)."""
        import torch

        values, ids = torch.topk(logprobs, top) if top > 0 else (logprobs[:0], logprobs[:0].long())
        return {**self.item(token, float(logprobs[token])),
                "top_logprobs": [self.item(int(i), float(v)) for v, i in zip(values.tolist(), ids.tolist(), strict=True)]}


class TokenTrace:
    """One row's reading of its generation (see the module docstring). `wants_logprobs()` says
    whether the engine must compute this step's log-softmax for the row; `step` takes the chosen
    token (and that log-softmax, or None) and returns the row's new text."""

    def __init__(self, tokenizer: Any, *, scale: ScaleTokens | None, top_logprobs: int | None,
                 formatter: LogprobFormatter | None = None, reply: str = "result"):
        self.text = IncrementalText(tokenizer)
        self.scale = scale
        self.reply = reply  # the judge's reply format (`PromptTemplate.reply`): where its score position is
        self.top_logprobs = top_logprobs
        self.formatter = formatter or LogprobFormatter(tokenizer)
        self.logprobs: list[dict[str, Any]] | None = [] if top_logprobs is not None else None
        self.score_probs: dict[str, float] | None = None

    def wants_logprobs(self) -> bool:
        return self.logprobs is not None or (self.scale is not None and at_score_position(self.text.text, self.reply))

    def step(self, token: int, logprobs: Any | None) -> str:
        pending = None
        if logprobs is not None:
            if self.scale is not None and at_score_position(self.text.text, self.reply) and (
                    self.reply != "bare" or any(token in ids for ids in self.scale.ids)):
                pending = self.scale.probs(logprobs)
            if self.logprobs is not None and token not in self.formatter.special:
                assert self.top_logprobs is not None
                self.logprobs.append(self.formatter.entry(token, logprobs, self.top_logprobs))
        new = self.text.add(token)
        if pending is not None and self.formatter.token_bytes(token).strip() and token not in self.formatter.special:
            self.score_probs = pending  # the first non-whitespace token after [RESULT]
        return new
