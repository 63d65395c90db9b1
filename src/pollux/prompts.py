"""Prompts: from a `JudgeItem` to the judge's user message, and to chat-formatted text.

The default template is the POLLUX code base's judge prompt, byte for byte: five `###` sections
separated by one blank line, no trailing newline. The reference section stays, empty, when an
item has no reference answer. Templates are configurable (`PromptTemplate(text=...)`); the model
card's variant is provided as `MODEL_CARD_TEMPLATE`.

Untrusted text cannot open a section. Instructions, answers and references are written by
users and by the evaluated LLMs, so a line inside them such as `### Критерий оценки:` could make
the judge read a forged criterion. Before rendering, every field value goes through
`neutralise_headers`: a line that *looks like* one of the five section headers — after Unicode
normalisation (NFKC, so fullwidth `＃` counts), with zero-width characters removed, Latin
look-alike letters read as Cyrillic, any number of `#` (also none followed by the exact
header text and colon), any case and spacing — gets a backslash put in front of it (`\\### …`),
the Markdown escape for a heading. The text stays readable for the judge but no longer matches a
header line. Lines that do not look like a header are left byte-identical, so ordinary prompts
render exactly as the official template does.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pollux.records import JudgeItem

DEFAULT_TEMPLATE = (
    "### Задание для оценки:\n{instruction}\n\n"
    "### Эталонный ответ:\n{reference_answer}\n\n"
    "### Ответ для оценки:\n{answer}\n\n"
    "### Критерий оценки:\n{criteria_name}\n\n"
    "### Шкала оценивания по критерию:\n{criteria_rubrics}"
)

# The model card's copy: the same headers, no blank lines, a trailing newline.
MODEL_CARD_TEMPLATE = (
    "### Задание для оценки:\n{instruction}\n"
    "### Эталонный ответ:\n{reference_answer}\n"
    "### Ответ для оценки:\n{answer}\n"
    "### Критерий оценки:\n{criteria_name}\n"
    "### Шкала оценивания по критерию:\n{criteria_rubrics}\n"
)

SECTION_HEADERS = (
    "Задание для оценки",
    "Эталонный ответ",
    "Ответ для оценки",
    "Критерий оценки",
    "Шкала оценивания по критерию",
)

# Latin letters that look like Cyrillic ones: a spoofed header may mix them in.
_LOOKALIKES = str.maketrans("aAeEoOpPcCxXyBHKMT", "аАеЕоОрРсСхХуВНКМТ")
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"), None)


def _skeleton(line: str) -> str:
    """The line as a header matcher sees it: normalised, invisible characters dropped."""
    s = unicodedata.normalize("NFKC", line).translate(_INVISIBLE).translate(_LOOKALIKES)
    return re.sub(r"\s+", " ", s).strip().casefold()


_HEADER_NAMES = "|".join(re.escape(_skeleton(h)) for h in SECTION_HEADERS)
# "#…# name …" in any spacing, or the bare "name:" alone on its line.
_SPOOF = re.compile(rf"^(?:#+ ?(?:{_HEADER_NAMES})\b.*|(?:{_HEADER_NAMES}) ?:)$")


def looks_like_header(line: str) -> bool:
    return bool(_SPOOF.match(_skeleton(line)))


# Every line break a reader (or a tokenizer) might honour, kept so the text round-trips exactly.
_LINE_BREAK = re.compile(r"(\r\n|[\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029])")


def neutralise_headers(text: str) -> str:
    """Escape every line of `text` that looks like a prompt section header (see module doc)."""
    parts = _LINE_BREAK.split(text)
    for i in range(0, len(parts), 2):  # even parts are lines, odd ones the breaks between them
        line = parts[i]
        if looks_like_header(line):
            indent = len(line) - len(line.lstrip())
            parts[i] = line[:indent] + "\\" + line[indent:]
    return "".join(parts)


@dataclass(frozen=True)
class PromptTemplate:
    """A judge prompt template with the fields {instruction}, {reference_answer}, {answer},
    {criteria_name} and {criteria_rubrics}."""

    text: str = DEFAULT_TEMPLATE
    neutralise: bool = True

    def render(self, item: JudgeItem) -> str:
        fields = {
            "instruction": item.instruction,
            "reference_answer": item.reference_answer or "",
            "answer": item.answer,
            "criteria_name": item.criteria_name,
            "criteria_rubrics": item.rubrics,
        }
        if self.neutralise:
            fields = {k: neutralise_headers(v) for k, v in fields.items()}
        # format_map substitutes values without re-reading braces inside them.
        return self.text.format_map(fields)

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "neutralise": self.neutralise}


# Templates users can pick by name (`--template model-card`); any other value is a file path.
NAMED_TEMPLATES = {"default": DEFAULT_TEMPLATE, "model-card": MODEL_CARD_TEMPLATE}


def load_template(value: str | None) -> PromptTemplate:
    """A template by name (`default`, `model-card`) or from a UTF-8 file; None is the default."""
    if value is None or value in NAMED_TEMPLATES:
        return PromptTemplate(text=NAMED_TEMPLATES[value or "default"])
    path = Path(value)
    if not path.is_file():
        names = ", ".join(NAMED_TEMPLATES)
        raise ValueError(f"template {value!r} is neither a template name ({names}) nor a file")
    return PromptTemplate(text=path.read_text(encoding="utf-8"))


def chat_messages(prompt: str) -> list[dict[str, str]]:
    """POLLUX judges read one user message and no system message."""
    return [{"role": "user", "content": prompt}]


def chat_text(tokenizer: Any, prompt: str) -> str:
    """The prompt rendered with the judge tokenizer's own chat template, ready for generation."""
    return tokenizer.apply_chat_template(chat_messages(prompt), tokenize=False, add_generation_prompt=True)
