"""From a chat message back to a `JudgeItem`: how `/v1/chat/completions` reaches the engine.

OpenAI-compatible clients (our `OpenAIEngine`, MERA, vLLM-style scripts) send the rendered judge
prompt as the user message. The engine judges items, not raw prompts, so the server reads the five
fields back out of the message by matching it against its own prompt template. This is
unambiguous because rendering escapes every header-looking line inside user text
(`pollux.prompts.neutralise_headers`): the only real header lines are the template's own. Escaped
lines are not escaped again when the server renders the item, so the judge sees the very prompt
the client sent.

Clients lay the same sections out differently: the POLLUX code base with a blank line between
sections and no trailing newline, MERA with blank lines and a trailing newline, the model card
with no blank lines and a trailing newline. A prompt is matched exactly first (the judge then sees
the very bytes sent); failing that, loosely — any run of newlines before a section header, any
trailing newlines — and the item is rendered in the server's template, the layout its judge
expects. Field texts are the same either way (a field never takes the newlines around a header).

Templates are read in the grammar `pollux.prompts.fill` writes them in (`template_parts`). The
side-by-side template (`pollux serve --template pollux-4b-sbs`) is served too: its `{answer_2}` is
read into the item's `reference_answer`, as `fill` rendered it from there, and as it has no
criterion section (the criterion is folded into its comparison scale) the item's `criteria_name`
is `FOLDED_CRITERION`, a name its judge never sees. A pointwise prompt sent to such a server, or a
side-by-side one to a pointwise server, is not in the server's template: refused, naming the
sections expected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pollux.prompts import JUDGE_FIELDS, PromptTemplate, template_parts
from pollux.records import JudgeItem, RecordError

# Each template field's regex group: `{answer_2}` is the item's `reference_answer` (`pollux.prompts.item_fields`).
_GROUP = {field: "reference_answer" if field == "answer_2" else field for field in JUDGE_FIELDS}
# The item's criterion when the template shows none (the side-by-side prompt folds it into its scale).
FOLDED_CRITERION = "side-by-side"


class PromptError(ValueError):
    """The message is not a judge prompt in the server's template."""


@dataclass(frozen=True)
class PromptPatterns:
    """How a server reads chat prompts: its template exactly, then its sections loosely."""

    exact: re.Pattern[str]
    loose: re.Pattern[str]
    sections: tuple[str, ...] = ()  # the template's header lines, for the refusal's message


def prompt_patterns(template: PromptTemplate) -> PromptPatterns:
    sections = tuple(line.strip() for line in template.text.splitlines() if line.lstrip().startswith("#"))
    return PromptPatterns(template_pattern(template), template_pattern(template, loose=True), sections)


def template_pattern(template: PromptTemplate, *, loose: bool = False) -> re.Pattern[str]:
    """A regex that matches exactly the texts `template` can render, one group per field; `loose`:
    also with any run of newlines before a section header and any trailing newlines. A `{name}`
    that is not a judge field is literal text, as `fill` leaves it."""
    parts: list[str] = []
    seen: set[str] = set()
    text = template.text.rstrip("\n") if loose else template.text
    for literal, field in _judge_parts(text):
        parts.append(_literal(literal, loose))
        if field is None:
            continue
        group = _GROUP[field]
        parts.append(f"(?P={group})" if group in seen else f"(?P<{group}>.*?)")  # a repeat: the same text
        seen.add(group)
        seen.add(field)
    required = {"instruction", "answer", "criteria_rubrics"} | ({"criteria_name"} if "answer_2" not in seen else set())
    missing = required - seen
    if missing:
        raise ValueError(f"template lacks field(s) {sorted(missing)}")
    if loose:
        parts.append(r"\n*")
    elif not text.endswith("\n"):  # trailing newlines are the layout's, not the last field's (MERA adds one)
        parts.append(r"(?<!\n)")
    return re.compile("".join(parts), re.DOTALL)


def _judge_parts(text: str) -> list[tuple[str, str | None]]:
    """`template_parts` with every placeholder that is not a judge field folded into the literal text."""
    parts: list[tuple[str, str | None]] = []
    literal = ""
    for text_before, name in template_parts(text):
        literal += text_before
        if name in JUDGE_FIELDS:
            parts.append((literal, name))
            literal = ""
        elif name is not None:
            literal += "{" + name + "}"
    return [*parts, (literal, None)]


def _literal(text: str, loose: bool) -> str:
    """A template's literal text as a regex; `loose`: newlines before a `#` header, one or more."""
    if not loose:
        return re.escape(text)
    return r"\n+".join(re.escape(piece) for piece in re.split(r"\n+(?=#)", text))


def item_from_prompt(text: str, patterns: PromptPatterns) -> JudgeItem:
    """The item a judge prompt was rendered from: `PromptError` when `text` is not a prompt in the
    template (in any of the layouts above), `RecordError` naming the field when it is but a field
    is not usable text."""
    match = patterns.exact.fullmatch(text) or patterns.loose.fullmatch(text)
    if match is None:
        sections = ", ".join(f"'{line}'" for line in patterns.sections)
        raise PromptError(
            "the user message is not a POLLUX judge prompt in this server's template (expected the sections "
            f"{sections} in this order); POST /v1/judge accepts the fields as JSON instead"
        )
    fields = match.groupdict()
    try:
        return JudgeItem(
            instruction=fields["instruction"],
            answer=fields["answer"],
            criteria_name=fields.get("criteria_name", FOLDED_CRITERION),
            rubrics=fields["criteria_rubrics"],
            reference_answer=fields.get("reference_answer") or "",
        )
    except RecordError as e:  # the prompt has the right shape; one of its fields is unusable
        raise RecordError(f"judge prompt: {e}") from None
