"""Verdicts: what a judge returns for one item.

A regression judge (`-r`) gives a rationale from its LM head and a score from its regression
head; a generative judge writes `[FEEDBACK] … [RESULT] n [END]` and its score is parsed from the
text. A verdict keeps both (either may be missing) plus the raw text, so nothing the judge said
is lost, and flags — without dropping — scores outside the rubric's scale.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

# The note each verdict of a regression (`-r`) judge carries when expected scores were asked for
# (`-o expected_score=true`): engines leave them off for such judges, and saying so on the verdict
# keeps a user from reading the missing `expected_score` as a failure (`meta["expected_score_note"]`).
EXPECTED_SCORE_ON_REGRESSION = ("expected_score is not computed for a regression (-r) judge: its score is its "
                                "regression head's output, not a distribution over the scale at [RESULT]")


@dataclass
class Verdict:
    criteria_name: str
    head_score: float | None = None  # regression head output (raw float, never clipped)
    text_score: float | None = None  # parsed from `[RESULT] n [END]`, when the text has it
    # generative judges whose engine exposes token probabilities: the probability of each scale
    # value at the `[RESULT]` position (renormalised over the scale) and their weighted mean
    expected_score: float | None = None
    score_probs: dict[str, float] | None = None
    rationale: str = ""  # the feedback text, without the [FEEDBACK]/[RESULT]/[END] markup
    raw_text: str = ""  # exactly what the LM head generated (special tokens removed)
    scale_min: float | None = None
    scale_max: float | None = None
    valid: bool = False  # `score` exists and lies within [scale_min, scale_max]
    invalid_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None  # "stop" (an end-of-turn token) or "length"
    time_s: float = 0.0
    error: str | None = None  # set when the item could not be judged at all
    judge: str = ""  # which judge produced this verdict
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def score(self) -> float | None:
        """The judge's score: the head's when the judge has one, otherwise the parsed one."""
        return self.head_score if self.head_score is not None else self.text_score

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["score"] = self.score
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Verdict:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


def make_verdict(
    item: Any,
    raw_text: str,
    *,
    head_score: float | None = None,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    finish_reason: str | None = None,
    time_s: float = 0.0,
    judge: str = "",
    parse: Callable[[str], float | None] | None = None,
    score_probs: Mapping[str, float] | str | None = None,
) -> Verdict:
    """Turn what a judge produced for `item` (a `JudgeItem`) into a checked `Verdict`.

    Every backend ends here, so parsing and scale validation are the same for all of them.
    `parse` reads the text score (default: the POLLUX judges' strict `parse_result`; baseline
    judges with their own reply format pass `pollux.scales.parse_result_open`). `score_probs` is
    the scale distribution at the score position (`pollux.engine.tokens`), or a note saying why an
    engine asked to read it has none (kept in `meta["expected_score_note"]`).
    """
    from pollux.scales import check_score, parse_feedback, parse_result, parse_scale, result_problem

    scale = parse_scale(item.rubrics)
    verdict = Verdict(
        criteria_name=item.criteria_name,
        head_score=head_score,
        text_score=(parse or parse_result)(raw_text),
        rationale=parse_feedback(raw_text),
        raw_text=raw_text,
        scale_min=scale.min if scale else None,
        scale_max=scale.max if scale else None,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        finish_reason=finish_reason,
        time_s=time_s,
        judge=judge,
        meta=dict(item.meta),
    )
    verdict.valid, verdict.invalid_reason = check_score(verdict.score, scale)
    if verdict.score is None:  # several [RESULT] blocks: say so rather than "no score"
        verdict.invalid_reason = result_problem(raw_text) or verdict.invalid_reason
    if isinstance(score_probs, str):
        verdict.meta["expected_score_note"] = score_probs
    elif score_probs is not None:
        verdict.score_probs = dict(score_probs)
        verdict.expected_score = expected_from_probs(score_probs)
    return verdict


def expected_from_probs(probs: Mapping[str, float]) -> float:
    """The probability-weighted mean of the scale values (keys are the values as written)."""
    from pollux.scales import to_number

    return sum(to_number(value) * p for value, p in probs.items())


def error_verdict(item: Any, error: str, *, judge: str = "", prompt_tokens: int = 0) -> Verdict:
    """A verdict for an item that could not be judged (the others in its batch still are)."""
    return Verdict(
        criteria_name=item.criteria_name,
        error=error,
        invalid_reason=error,
        judge=judge,
        prompt_tokens=prompt_tokens,
        meta=dict(item.meta),
    )
