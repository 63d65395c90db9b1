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
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

from pollux.prompts import PromptTemplate
from pollux.records import JudgeItem, RecordError

_FIELDS = {"instruction", "reference_answer", "answer", "criteria_name", "criteria_rubrics"}


class PromptError(ValueError):
    """The message is not a judge prompt in the server's template."""


@dataclass(frozen=True)
class PromptPatterns:
    """How a server reads chat prompts: its template exactly, then its sections loosely."""

    exact: re.Pattern[str]
    loose: re.Pattern[str]


def prompt_patterns(template: PromptTemplate) -> PromptPatterns:
    return PromptPatterns(template_pattern(template), template_pattern(template, loose=True))


def template_pattern(template: PromptTemplate, *, loose: bool = False) -> re.Pattern[str]:
    """A regex that matches exactly the texts `template` can render, one group per field; `loose`:
    also with any run of newlines before a section header and any trailing newlines."""
    parts: list[str] = []
    seen: set[str] = set()
    text = template.text.rstrip("\n") if loose else template.text
    for literal, field, _spec, _conv in string.Formatter().parse(text):
        parts.append(_literal(literal, loose))
        if field is None:
            continue
        if field not in _FIELDS:
            raise ValueError(f"template field {{{field}}} is not one of {sorted(_FIELDS)}")
        if field in seen:  # a repeated field must repeat the same text
            parts.append(f"(?P={field})")
        else:
            parts.append(f"(?P<{field}>.*?)")
            seen.add(field)
    missing = _FIELDS - seen - {"reference_answer"}
    if missing:
        raise ValueError(f"template lacks field(s) {sorted(missing)}")
    if loose:
        parts.append(r"\n*")
    elif not text.endswith("\n"):  # trailing newlines are the layout's, not the last field's (MERA adds one)
        parts.append(r"(?<!\n)")
    return re.compile("".join(parts), re.DOTALL)


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
        raise PromptError(
            "the user message is not a POLLUX judge prompt in this server's template (expected the sections "
            "'### Задание для оценки:', '### Эталонный ответ:', '### Ответ для оценки:', "
            "'### Критерий оценки:', '### Шкала оценивания по критерию:' in this order); "
            "POST /v1/judge accepts the fields as JSON instead"
        )
    fields = match.groupdict()
    try:
        return JudgeItem(
            instruction=fields["instruction"],
            answer=fields["answer"],
            criteria_name=fields["criteria_name"],
            rubrics=fields["criteria_rubrics"],
            reference_answer=fields.get("reference_answer") or "",
        )
    except RecordError as e:  # the prompt has the right shape; one of its fields is unusable
        raise RecordError(f"judge prompt: {e}") from None
