"""From a chat message back to a `JudgeItem`: how `/v1/chat/completions` reaches the engine.

OpenAI-compatible clients (our `OpenAIEngine`, vLLM-style scripts) send the rendered judge prompt
as the user message. The engine judges items, not raw prompts, so the server reads the five
fields back out of the message by matching it against its own prompt template. This is
unambiguous because rendering escapes every header-looking line inside user text
(`pollux.prompts.neutralise_headers`): the only real header lines are the template's own. Escaped
lines are not escaped again when the server renders the item, so the judge sees the very prompt
the client sent.
"""

from __future__ import annotations

import re
import string

from pollux.prompts import PromptTemplate
from pollux.records import JudgeItem, RecordError

_FIELDS = {"instruction", "reference_answer", "answer", "criteria_name", "criteria_rubrics"}


class PromptError(ValueError):
    """The message is not a judge prompt in the server's template."""


def template_pattern(template: PromptTemplate) -> re.Pattern[str]:
    """A regex that matches exactly the texts `template` can render, one group per field."""
    parts: list[str] = []
    seen: set[str] = set()
    for literal, field, _spec, _conv in string.Formatter().parse(template.text):
        parts.append(re.escape(literal))
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
    return re.compile("".join(parts), re.DOTALL)


def item_from_prompt(text: str, pattern: re.Pattern[str]) -> JudgeItem:
    """The item a judge prompt was rendered from: `PromptError` when `text` is not a prompt in the
    template, `RecordError` naming the field when it is but a field is not usable text."""
    match = pattern.fullmatch(text)
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
