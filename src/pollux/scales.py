"""Rubric scales and score parsing.

Two jobs, both about numbers in text:

* `parse_scale(rubrics)` reads which scores a rubric allows. Rubrics come in several shapes:
  one level per paragraph written `0: …`, `1 — …`, `2 - …` (any dash), a phrase such as
  `от 1 до 10`, a dict of levels (`{"0": "…", "1": "…"}`), or a dict of such dicts per
  language (`{"ru": {"-2": "…", "0": "…", "2": "…"}, "en": {…}}`) — each also as a JSON string,
  as the official code accepts them.
* `parse_result(text)` reads the score a POLLUX judge wrote as `[RESULT] n [END]` — the
  official parser's rule: the block must be complete, numbers may be negative, multi-digit and
  use a decimal comma. This strict rule is the POLLUX judges' and is never loosened.
  A reply with more than one `[RESULT]` has no score (for every parser here): which block is
  the verdict is ambiguous, and taking one of them paired one block's rationale with another
  block's score. `result_problem(text)` says so, for the verdict's `invalid_reason`.
* `parse_result_open(text)` is the variant for baseline judges that were not trained on that
  format: M-Prometheus writes `Feedback: … [RESULT] n` without `[END]`, and general LLMs often
  drop it too. `strip_think(text)` removes a reasoning model's `<think>…</think>` block first
  (DeepSeek-R1), so a draft score inside the reasoning is never read as the verdict.

`check_score` then says whether a score lies within the scale. Out-of-scale scores are kept and
flagged by callers, never silently dropped. `check_level` is the stricter rule for a score
written as text by one rater (a teacher, a judge, one expert): it must be one of the rubric's
levels — a listed scale (`0: …`, `1: …`, `2: …`) takes only those values, an interval scale
(`от 1 до 10`) its whole numbers. A score between levels (1.5 on 0/1/2) is no rating a rubric
defines: synth drops such a teacher reply, `pollux train` refuses such a row. `check_score` stays
for values that legitimately fall between levels: a regression head's output and an aggregate
(the mean of several experts' scores in meta-eval).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

_NUMBER = r"[-−]?\d+(?:[.,]\d+)?"
# A level at the start of a line: "0: …", "1 — …", "2 - …", "3 – …", "4. …" is NOT a level (lists).
# A dash must be followed by a space, so that "2023-2024" is not read as level 2023.
_LEVEL_LINE = re.compile(rf"^[ \t]*(?:\*\*)?({_NUMBER})(?:\*\*)?(?:[ \t]*:|[ \t]*[—–−-][ \t])", re.MULTILINE)
_RANGE_PHRASE = re.compile(rf"\bот\s+({_NUMBER})\s+до\s+({_NUMBER})\b", re.IGNORECASE)
_RESULT = re.compile(rf"\[RESULT\]\s*({_NUMBER})\s*\[END\]")
# Baseline judges' `[RESULT]` with what general LLMs put around it: `[RESULT] 4`, `[RESULT]: 4`,
# `[RESULT] **4**`, `**[RESULT]** 2 **[END]**`, `[RESULT] (4)`.
_RESULT_OPEN = re.compile(rf"\[RESULT\][\s*:(\[]*({_NUMBER})(?!\d)")
# A reply without `[RESULT]`: a score label (`Score: 4`, `**Score:** 4/5`, `Оценка: 3`).
_SCORE_LABEL = re.compile(rf"(?<!\w)(?:score|result|оценка|балл)(?:\*\*)?[ \t]*:[\s*]*({_NUMBER})(?!\d)",
                          re.IGNORECASE)
# The reply's rationale starts after `[FEEDBACK]`, or after a leading `Feedback:` (Prometheus' format),
# and ends at `[RESULT]` / `[END]` (with the bold markup some judges put around them).
_FEEDBACK_LABEL = re.compile(r"^\s*(?:\*\*)?feedback(?:\*\*)?[ \t]*:[ \t]*(?:\*\*)?", re.IGNORECASE)
_FEEDBACK_END = re.compile(r"(?:\*\*)?\[(?:RESULT|END)\]")
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)
# The language whose rubric is used when a rubric is given per language (POLLUX is Russian).
RUBRIC_LANGUAGES = ("ru", "en")


def to_number(text: str) -> float:
    """'2' → 2.0, '1,5' → 1.5, '−1' (Unicode minus) → -1.0."""
    return float(text.strip().replace("−", "-").replace(",", "."))


@dataclass(frozen=True)
class Scale:
    """The scores a rubric allows: its levels when listed, otherwise an interval."""

    min: float
    max: float
    levels: tuple[float, ...] = ()

    @property
    def is_binary(self) -> bool:
        return self.levels == (0.0, 1.0)


def parse_scale(rubrics: str | Mapping[str, object] | None) -> Scale | None:
    """Return the rubric's scale, or None when the rubric states none."""
    if rubrics is None:
        return None
    if isinstance(rubrics, Mapping):
        return _scale_from_mapping(rubrics)
    text = str(rubrics).strip()
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            return _scale_from_mapping(obj)
    levels = sorted({to_number(m.group(1)) for m in _LEVEL_LINE.finditer(text)})
    if len(levels) >= 2:
        return Scale(min=levels[0], max=levels[-1], levels=tuple(levels))
    phrase = _RANGE_PHRASE.search(text)
    if phrase:
        lo, hi = sorted((to_number(phrase.group(1)), to_number(phrase.group(2))))
        return Scale(min=lo, max=hi)
    return None


def _scale_from_mapping(rubrics: Mapping[str, object]) -> Scale | None:
    """Levels as keys (`{"0": …, "2": …}`), or per language (`{"ru": {"0": …}, "en": {…}}`):
    the Russian rubric's levels, else the first language's. Languages that disagree on the
    levels are an error — a judge told one scale and checked against another would be wrong."""
    if rubrics and all(isinstance(v, Mapping) for v in rubrics.values()):
        scales = {lang: _scale_from_keys(list(levels)) for lang, levels in rubrics.items()
                  if isinstance(levels, Mapping)}
        distinct = {sc for sc in scales.values() if sc is not None}
        if len(distinct) > 1:
            shown = "; ".join(f"{lang}: {sc.levels if sc else None}" for lang, sc in scales.items())
            raise ValueError(f"the rubric's languages give different scales ({shown})")
        first = next((lang for lang in RUBRIC_LANGUAGES if lang in scales), next(iter(scales)))
        return scales[first]
    return _scale_from_keys(list(rubrics))


def _scale_from_keys(keys: list[object]) -> Scale | None:
    try:
        levels = sorted({to_number(str(k)) for k in keys})
    except ValueError:
        return None
    if not levels:
        return None
    return Scale(min=levels[0], max=levels[-1], levels=tuple(levels))


def parse_result(text: str) -> float | None:
    """The score in the reply's one complete `[RESULT] n [END]` block, else None (also when the
    reply has several `[RESULT]`s: see the module doc)."""
    found = _RESULT.findall(text)
    return to_number(found[0]) if found and text.count(RESULT_MARK) == 1 else None


RESULT_MARK = "[RESULT]"


def result_problem(text: str) -> str | None:
    """Why a reply has no score, when the reason is more than "no score": several `[RESULT]`s."""
    n = text.count(RESULT_MARK)
    return f"the reply has {n} {RESULT_MARK} blocks (a verdict has exactly one)" if n > 1 else None


def strip_think(text: str) -> str:
    """The reply without a reasoning model's `<think>…</think>` block(s). A reply whose `<think>`
    is never closed was cut inside its reasoning: nothing of it is a verdict (empty string). A
    `</think>` without its opening tag (servers that put the opening tag in the prompt) ends the
    reasoning too."""
    text = _THINK.sub("", text)
    if "<think>" in text:
        return text[: text.index("<think>")]
    if "</think>" in text:
        return text[text.rindex("</think>") + len("</think>"):]
    return text


def parse_result_open(text: str) -> float | None:
    """The score of a baseline judge's reply (read after `strip_think`), or None. Not for POLLUX
    judges: their format requires `[RESULT] n [END]` (`parse_result`).

    * The reply's one `[RESULT]` block, with or without `[END]` (M-Prometheus writes `[RESULT] n`
      and stops), and with what general LLMs put around it: `[RESULT]: 4`, `[RESULT] **4**`,
      `**[RESULT]** 2 **[END]**`, `[RESULT] (4)`.
    * Several `[RESULT]` blocks: None — prometheus-eval's own parser takes the first match, an
      earlier pollux took the last; either pairs one block's rationale with another's score, so
      which is the verdict is not guessed (`result_problem` names it on the verdict).
    * No `[RESULT]` at all: a score label, `Score: 4` (prometheus-eval accepts it too),
      `Оценка: 3`, `**Score:** 4/5` — when the reply has exactly one; several: None."""
    body = strip_think(text)
    blocks = body.count(RESULT_MARK)
    if blocks > 1:
        return None
    found = _RESULT_OPEN.findall(body) if blocks else _SCORE_LABEL.findall(body)
    return to_number(found[0]) if len(found) == 1 else None


def parse_feedback(text: str) -> str:
    """The rationale: the reply without a reasoning model's `<think>` block (`strip_think`: its
    drafts are not the rationale), from `[FEEDBACK]` (else a leading `Feedback:`) up to `[RESULT]`
    / `[END]`, markup removed."""
    body = strip_think(text)
    start = body.find("[FEEDBACK]")
    body = body[start + len("[FEEDBACK]"):] if start != -1 else _FEEDBACK_LABEL.sub("", body, count=1)
    end = _FEEDBACK_END.search(body)
    if end:
        body = body[: end.start()]
    return body.strip()


def check_score(score: float | None, scale: Scale | None) -> tuple[bool, str | None]:
    """(valid, reason). A score is valid when it exists, is finite and lies within the scale."""
    if score is None:
        return False, "no score"
    if not math.isfinite(score):
        return False, f"score {score} is not finite"
    if scale is None:
        return True, None
    if score < scale.min or score > scale.max:
        return False, f"score {score:g} outside the rubric's scale [{scale.min:g}, {scale.max:g}]"
    return True, None


def check_level(score: float | None, scale: Scale | None) -> tuple[bool, str | None]:
    """(valid, reason) for a score one rater wrote as text: `check_score`, and the score must be one
    of the scale's levels (an interval scale with whole-number ends: a whole number). See the module
    doc for why aggregates and regression outputs use `check_score` instead."""
    valid, reason = check_score(score, scale)
    if not valid or scale is None or score is None:
        return valid, reason
    if scale.levels:
        if not any(math.isclose(score, level, abs_tol=1e-9) for level in scale.levels):
            shown = ", ".join(f"{level:g}" for level in scale.levels)
            return False, f"score {score:g} is not one of the rubric's levels {shown}"
    elif float(scale.min).is_integer() and float(scale.max).is_integer() and not float(score).is_integer():
        return False, f"score {score:g} is not a whole number of the rubric's scale {scale.min:g}..{scale.max:g}"
    return True, None


# An interval scale (`от 1 до 10`) lists its integer values for expected scores up to this many.
MAX_LISTED_VALUES = 101


def scale_value_keys(scale: Scale | None) -> list[str] | None:
    """The scale's values as a judge writes them (`"0"`, `"1"`, `"-2"`, `"1.5"`), for reading their
    probabilities (expected scores): the listed levels, or every integer of an integer interval;
    None when the scale has no countable values."""
    if scale is None:
        return None
    values: Sequence[float] = scale.levels
    if not values:
        if not (scale.min.is_integer() and scale.max.is_integer()) or scale.max - scale.min >= MAX_LISTED_VALUES:
            return None
        values = range(int(scale.min), int(scale.max) + 1)
    return [f"{v:g}" for v in values]


def normalise(score: float, scale: Scale) -> float:
    """Score divided by the scale maximum (official aggregation). A zero maximum is an error."""
    if scale.max == 0:
        raise ValueError("cannot normalise: the scale's maximum is 0")
    return score / scale.max


# Pollux-4B-Judge's reply (pollux-facts §9): reasoning in `<think>…</think>` (or in a separate
# `reasoning` field of the server's reply), then a bare integer.
_INTEGER = r"[-−]?\d+"
# A line that is only the score: `2`, `-1`, `**1**`, `2.`, or a short label and the score (`Оценка: 2`).
_BARE_LINE = re.compile(rf"(?:[^\d\n:]{{1,40}}:)?[ \t]*(?:\*\*)?({_INTEGER})(?:\*\*)?[ \t]*\.?")
_ANY_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
# A line that ends with its only number (a whole number: `… поэтому ставлю 2`, `… оценка: -1.`)
_TRAILING_INTEGER = re.compile(rf"(?<![\w.,])({_INTEGER})[\s*.)]*$")


def parse_bare(text: str) -> float | None:
    """The score of a bare-integer judge (Pollux-4B-Judge, pointwise or side-by-side), or None.

    The reasoning is removed first (`strip_think`): a draft number inside `<think>…</think>` is
    never the verdict, and a reply cut inside its reasoning has no score. Then, in order:

    1. the reply's first non-empty line is the integer alone (`2`, `-1`, `−1`, `**1**`, `2.`), or a
       short label and it (`Оценка: 2`) — text after that line is the judge's comment;
    2. a reply in the POLLUX format (`[RESULT] n`) is read as such (`parse_result_open`);
    3. the reply's last non-empty line ends with its only number, a whole one (`… поэтому 2`):
       the "trailing integer" that Pollux-4B's readers take when `int(text)` fails.

    Anything else is no score: an empty reply, a decimal (`1.5`: this family writes integers;
    never truncated to `1`), a line with two numbers (`1 или 2`, `ответ 1 лучше ответа 2`:
    which one is the verdict is a guess). Being within the scale is checked later (`check_score`)."""
    body = strip_think(text).strip()
    if not body:
        return None
    lines = [line.strip() for line in body.splitlines() if line.strip()]
    first = _BARE_LINE.fullmatch(lines[0])
    if first:
        return to_number(first.group(1))
    if RESULT_MARK in body:
        return parse_result_open(body)
    last = lines[-1]
    trailing = _TRAILING_INTEGER.search(last)
    if trailing and len(_ANY_NUMBER.findall(last)) == 1:
        return to_number(trailing.group(1))
    return None

