"""Prompts: from a `JudgeItem` to the judge's user message, and to chat-formatted text.

One builder fills every prompt pollux writes — the judge's templates, synth's prompts, the API
baselines' (`general`, `prometheus`) — with untrusted text: `fill`. It replaces `{name}`
placeholders in one pass over the template's own text (a value holding `{answer}` is never filled
again; other braces are text) and neutralises every value against the section headers of that
template (below); `template_parts` is its grammar, which the server reads prompts back with.

The default template is the POLLUX code base's judge prompt, byte for byte: five `###` sections
separated by one blank line, no trailing newline. The reference section stays, empty, when an
item has no reference answer. Templates are configurable (`PromptTemplate(text=...)`); the model
card's variant is provided as `MODEL_CARD_TEMPLATE`.

Untrusted text cannot open a section. Instructions, answers and references are written by
users and by the evaluated LLMs, so a line inside them such as `### Критерий оценки:` could make
the judge read a forged criterion. Before rendering, every field value goes through
`neutralise_headers`, which compares each line's *skeleton* with the template's section headers
(by default `NEUTRALISED_HEADERS`: the five of the judge's prompt and the side-by-side prompt's;
the prometheus prompt passes its English ones). The skeleton is what a reader sees: NFKD
(fullwidth `＃`, mathematical letters, accents split off), every invisible character dropped
(Unicode format characters — zero-width, LRM/RLM, bidi embeddings and isolates, U+2062, tag
characters — combining marks, the Hangul fillers and control characters: C0, DEL, C1),
blank-looking symbols (the Braille blank U+2800) read as a space, every character that Unicode's
confusables table says looks like a header letter read as that letter (for the Cyrillic headers:
Latin `K`, Greek `ο`, the digit `3` for `З`, …; for the English ones Cyrillic `о` for `o`) — and
its other case as the letter's other case (Latin `k` for `к`) — then case-folded. A skeleton that is a header — after any Markdown prefix (`>`,
`-`, `*`, `+`, `1.`) and emphasis (`**`, `__`), behind any number of number or sharp signs
(`###`, `# # #`, `♯♯♯`) and then the header text, or the bare header text with its colon
(`**Критерий оценки:**` too) — marks the line: it gets a backslash put in front of it (`\\### …`), the Markdown escape for a heading.
The text stays readable for the judge but no longer matches a header line. Lines that do not look
like a header are left byte-identical, so ordinary prompts render exactly as the official
template does.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import sys
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from confusable_homoglyphs import utils as confusable_data

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

# Pollux-4B-Judge's side-by-side prompt (pollux-facts §9): the criterion folded into the comparison
# scale, no reference; -1 = answer 1 better, 0 = tie, 1 = answer 2 better. Answer 2 is the item's
# `reference_answer` slot, which this prompt has no other use for (`{answer_2}`: see `render`).
SIDE_BY_SIDE_TEMPLATE = (
    "### Инструкция\n"
    "Даны два ответа для оценки и шкала их сравнения. Необходимо сравнить ответы по качеству "
    "выполнения задания и вернуть число в соответствии со шкалой сравнения ответов.\n\n"
    "### Задание для оценки:\n{instruction}\n\n"
    "### Ответ 1 для оценки:\n{answer}\n\n"
    "### Ответ 2 для оценки:\n{answer_2}\n\n"
    "### Шкала сравнения ответов:\n{criteria_rubrics}"
)

# How a judge writes its score (`PromptTemplate.reply`): POLLUX's `[RESULT] n [END]`, or a bare
# integer after optional `<think>` reasoning (the Pollux-4B-Judge family).
REPLY_FORMATS = ("result", "bare")

SECTION_HEADERS = (
    "Задание для оценки",
    "Эталонный ответ",
    "Ответ для оценки",
    "Критерий оценки",
    "Шкала оценивания по критерию",
)
# The side-by-side prompt's own sections: an answer must not forge "Ответ 2 для оценки" either. Not
# its first, "Инструкция": a line "Инструкция:" is common in answers, and nothing precedes that section.
SIDE_BY_SIDE_HEADERS = ("Ответ 1 для оценки", "Ответ 2 для оценки", "Шкала сравнения ответов")
# What `neutralise_headers` escapes: every section header of both prompts.
NEUTRALISED_HEADERS = SECTION_HEADERS + SIDE_BY_SIDE_HEADERS

# Unicode's own data, not a hand list: the confusables table shipped (and kept up to date) by
# confusable-homoglyphs, and the general categories of unicodedata.
# format characters, combining marks, control characters (C0, DEL, C1: a terminal or a tokenizer may
# show them as nothing); line breaks never reach the table (lines are joined by `\n`, which is kept)
_INVISIBLE_CATEGORIES = frozenset({"Cf", "Mn", "Me", "Cc"})
_KEPT_CONTROLS = "\n\t"  # the line separator of a skeleton, and a tab, which is white space
_FILLERS = "\u115f\u1160\u3164\uffa0"  # default-ignorable letters that render as nothing ("Lo")
_BLANKS = "\u2800"  # symbols drawn as an empty cell (Braille blank, "So"): read as a space
_MARKERS = "#>-*+.):"  # what a header line's Markdown prefix, hashes and colon are made of
# Planes 0-3 and 14 (tags, variation selectors); the others hold no letters, marks or formats.
_ASSIGNED_PLANES = (range(0x40000), range(0xE0000, 0xE1000))
_DROP = 0xFFFFFFFF  # in the skeleton lookup table: the character is removed


def _union_find_classes(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Each character → a representative of its class; look-alike is transitive (`З`~`3`~`Ʒ`)."""
    parent: dict[str, str] = {}

    def root(c: str) -> str:
        while parent.setdefault(c, c) != c:
            parent[c] = parent[parent[c]]
            c = parent[c]
        return c

    for a, b in pairs:
        parent[root(a)] = root(b)
    return {c: root(c) for c in list(parent)}


@functools.cache
def _skeleton_table(headers: tuple[str, ...] = NEUTRALISED_HEADERS) -> dict[int, str | None]:
    """What `_skeleton` does to single characters: invisibles → nothing, look-alikes → their target.

    Targets are the letters of `headers` in both cases (the Cyrillic of the judge's headers, the
    Latin of the prometheus prompt's) and the Markdown markers; number and sharp signs (`＃`, `♯`,
    `﹟`, …) all read as `#`. A look-alike class holding several targets of different letters (Latin
    `I` and `l`: the skeleton is case-blind, so `i`, `I`, `l`, `L` are then one) reads as one of
    them: a reader cannot tell them apart either. Built once per header set, on first use (a
    fraction of a second), because it scans Unicode's assigned planes.
    """
    table = dict(_invisible_table())
    with open(confusable_data.path("confusables.json"), encoding="utf-8") as f:
        table_data: dict[str, list[dict[str, str]]] = json.load(f)

    def visible(text: str) -> str:  # the table's entries may carry LRM marks around a glyph
        return "".join(c for c in text if table.get(ord(c), c) is not None)

    # letters as the skeleton has them: `й` is `и` plus a combining breve, which is dropped
    letters = {c for c in unicodedata.normalize("NFKD", "".join(headers)) if c.isalpha()}
    targets = {c for letter in letters for c in (letter.lower(), letter.upper())} | set(_MARKERS)
    pairs = [(visible(k), visible(g["c"])) for k, glyphs in table_data.items() for g in glyphs]
    pairs = [(a, b) for a, b in pairs if len(a) == 1 and len(b) == 1]
    classes = _union_find_classes(pairs + [(t.lower(), t.upper()) for t in targets])
    by_class = {classes.get(t, t): t for t in sorted(targets)}
    for char, cls in classes.items():
        if cls not in by_class or ord(char) in table:
            continue
        if char not in targets or char.casefold() != by_class[cls].casefold():
            table[ord(char)] = by_class[cls]
    _add_other_cases(table, targets)
    return table


@functools.cache
def _invisible_table() -> dict[int, str | None]:
    """The header-independent part of the skeleton table: invisibles dropped, blanks read as a space,
    number and sharp signs read as `#`. Shared by every header set's table (each copies it)."""
    table: dict[int, str | None] = {}
    for code in itertools.chain(*_ASSIGNED_PLANES):
        char = chr(code)
        category = unicodedata.category(char)
        if category in _INVISIBLE_CATEGORIES:
            table[code] = None
        elif category[0] in "PS" and any(s in unicodedata.name(char, "") for s in ("NUMBER SIGN", "SHARP SIGN")):
            table[code] = "#"
    table.update(dict.fromkeys(map(ord, _FILLERS)))
    table.update(dict.fromkeys(map(ord, _BLANKS), " "))
    for kept in map(ord, _KEPT_CONTROLS):
        del table[kept]
    return table


def _add_other_cases(table: dict[int, str | None], targets: set[str]) -> None:
    """A look-alike's other case reads as the target's other case (`K`→`К`, so `k`→`к`).

    The confusables table pairs glyphs by shape, and lower-case shapes often differ (it lists
    Latin `K` for `К` but not `k` for `к`); yet the skeleton is case-blind, so a reader who takes
    `K` for `К` takes `k` for `к`. Only characters the table does not map already are added.
    """
    for code, target in list(table.items()):
        if target is None or not target.isalpha():
            continue
        char = chr(code)
        for other, other_target in ((char.lower(), target.lower()), (char.upper(), target.upper())):
            if len(other) == 1 and len(other_target) == 1 and other not in targets and ord(other) not in table:
                table[ord(other)] = other_target


@functools.cache
def _skeleton_lookup(headers: tuple[str, ...]) -> np.ndarray:
    """`_skeleton_table` as an array indexed by code point: one vectorised gather per text,
    because a per-character `str.translate` costs ~40 ms on a 200k-character answer."""
    lookup = np.arange(sys.maxunicode + 1, dtype=np.uint32)
    for code, target in _skeleton_table(headers).items():
        lookup[code] = _DROP if target is None else ord(target)
    return lookup


def _skeleton(text: str, headers: tuple[str, ...] = NEUTRALISED_HEADERS) -> str:
    """`text` as a matcher of `headers` sees it (see module doc); line breaks are kept.

    NFKD rather than NFKC: a mark on a letter (`ӥ`, `й`) becomes a separate combining mark, which
    the table drops, so no accent can hide a letter. The header texts go through the same function.
    """
    codes = np.frombuffer(unicodedata.normalize("NFKD", text).encode("utf-32-le", "surrogatepass"), np.uint32)
    mapped = _skeleton_lookup(headers)[codes]
    return mapped[mapped != _DROP].tobytes().decode("utf-32-le", "surrogatepass").casefold()


@functools.cache
def _patterns(headers: tuple[str, ...]) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """(a header text anywhere, a header line in `\n`-separated lines): regexes over skeletons."""
    blank = r"[^\S\n]"  # a space within one line
    space = blank + "*"
    names = "|".join(space.join(map(re.escape, _skeleton(h, headers).split())) for h in headers)
    prefix = rf"(?:(?:[>*+\-]|\w{{1,4}}[.)]){space})*"  # Markdown quote, bullet, numbered list (`1.`, `а)`)
    emphasis = rf"[*_]*{space}"  # `**bold**`, `__bold__` around the header text
    # "#…# name …" in any spacing, or the bare "name:" alone on its line, after Markdown prefixes;
    # a name ends where no letter or digit follows (`_` may: it is emphasis here)
    line = (rf"^{space}{prefix}{emphasis}(?:#(?:#|{blank})*{emphasis}(?:{names})(?![^\W_]).*"
            rf"|(?:{names}){space}{emphasis}:{space}{emphasis})$")
    return re.compile(names), re.compile(line, re.MULTILINE)


def looks_like_header(line: str, headers: tuple[str, ...] = NEUTRALISED_HEADERS) -> bool:
    return bool(_patterns(headers)[1].fullmatch(_skeleton(line, headers)))


def neutralise_headers(text: str, headers: tuple[str, ...] = NEUTRALISED_HEADERS) -> str:
    """Escape every line of `text` that looks like one of `headers` (see module doc): by default
    the judge's section headers and the side-by-side prompt's.

    Lines end at every break a reader (or a tokenizer) might honour — `str.splitlines`'s set:
    `\\n`, `\\r`, `\\r\\n`, U+2028, NEL, … — and the breaks are kept, so the text round-trips
    exactly. This runs on every field of every prompt, so it works on whole texts, not line by
    line: the lines, joined by `\\n` (which the skeleton keeps, one for one), are skeletonised
    once; a text with no header text anywhere is returned at once, otherwise one regex pass finds
    the header lines.
    """
    skeleton = _skeleton("\n".join(text.splitlines()), headers)
    anywhere, header_line = _patterns(headers)
    if not anywhere.search(skeleton):
        return text
    lines = text.splitlines(keepends=True)
    starts = [match.start() for match in header_line.finditer(skeleton)]
    newlines = np.flatnonzero(np.frombuffer(skeleton.encode("utf-32-le", "surrogatepass"), np.uint32) == 10)
    for line_no in np.searchsorted(newlines, starts).tolist():  # the line each match starts on
        line = lines[line_no]
        indent = len(line) - len(line.lstrip())
        lines[line_no] = line[:indent] + "\\" + line[indent:]
    return "".join(lines)


# A placeholder: `{name}`, an ASCII identifier in braces. Nothing else in a template is syntax: other
# braces (code, JSON examples, `{{`) are text, and so is a `{name}` that is given no value.
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def fill(text: str, values: Mapping[str, str], *, headers: tuple[str, ...] = NEUTRALISED_HEADERS,
         neutralise: bool = True, trusted: Mapping[str, str] | None = None) -> str:
    """`text` with each `{name}` of `values` (and of `trusted`) replaced: pollux's one way to put
    text into a prompt — the judge's templates, synth's prompts and the API baselines' prompts.

    One pass over the template's own text, so a value is never read again: an answer holding
    `{answer}` or `{criteria_name}` stays as written. Every value of `values` is untrusted (users',
    evaluated LLMs') and goes through `neutralise_headers` against `headers`, the sections of this
    template (the prometheus prompt passes its English ones), so no value can open a section.
    `trusted` values are inserted as they are: text pollux wrote itself (a score range) or a prompt
    already rendered by `fill` (re-neutralising it would escape its own headers).
    """
    # each distinct text once: the judge's {reference_answer} and {answer_2} are one text
    safe = {value: neutralise_headers(value, headers) if neutralise else value for value in set(values.values())}
    filled = {key: safe[value] for key, value in values.items()}
    filled.update(trusted or {})
    return PLACEHOLDER.sub(lambda m: filled.get(m.group(1), m.group(0)), text)


def template_parts(text: str) -> list[tuple[str, str | None]]:
    """`text` as (literal text, placeholder name or None) pairs, in `fill`'s placeholder grammar:
    how `pollux.server.prompt_parse` reads a template back the way `fill` wrote it."""
    pieces = PLACEHOLDER.split(text)  # literal, name, literal, name, …, literal
    return [(pieces[i], pieces[i + 1] if i + 1 < len(pieces) else None) for i in range(0, len(pieces), 2)]


# A judge template's fields; `{answer_2}` (the side-by-side prompt's second answer) is the item's
# `reference_answer`, a slot that prompt has no other use for.
JUDGE_FIELDS = ("instruction", "reference_answer", "answer", "answer_2", "criteria_name", "criteria_rubrics")


def item_fields(item: JudgeItem) -> dict[str, str]:
    """A judge item's values by template field (`JUDGE_FIELDS`)."""
    reference = item.reference_answer or ""
    return {"instruction": item.instruction, "reference_answer": reference, "answer": item.answer,
            "answer_2": reference, "criteria_name": item.criteria_name, "criteria_rubrics": item.rubrics}


@dataclass(frozen=True)
class PromptTemplate:
    """A judge prompt template with the fields {instruction}, {reference_answer}, {answer},
    {criteria_name} and {criteria_rubrics} ({answer_2}: the side-by-side prompt's second answer,
    carried in the item's `reference_answer`), filled by `fill` (so `{{` is not an escape and an
    unknown `{name}` stays as written), and the format the judge replies in (`reply`):
    `result` (`[RESULT] n [END]`, POLLUX's judges) or `bare` (an integer, Pollux-4B-Judge).
    The reply format travels with the template because a prompt and the reply it asks for are one
    choice: every engine reads scores with `parse`."""

    text: str = DEFAULT_TEMPLATE
    neutralise: bool = True
    reply: str = "result"

    def __post_init__(self) -> None:
        if self.reply not in REPLY_FORMATS:
            raise ValueError(f"reply format must be one of {', '.join(REPLY_FORMATS)}, got {self.reply!r}")

    def render(self, item: JudgeItem) -> str:
        return fill(self.text, item_fields(item), neutralise=self.neutralise)

    def parse(self, text: str) -> float | None:
        """The score in a reply written in this template's reply format (`pollux.scales`)."""
        from pollux.scales import parse_bare, parse_result

        return parse_bare(text) if self.reply == "bare" else parse_result(text)

    def to_dict(self) -> dict[str, Any]:
        # `reply` only when not the default: run configurations made before it existed still resume
        extra = {"reply": self.reply} if self.reply != "result" else {}
        return {"text": self.text, "neutralise": self.neutralise, **extra}


# Templates users can pick by name (`--template model-card`); any other value is a file path.
# `pollux-4b`: the POLLUX sections, read as Pollux-4B-Judge replies (a bare integer after its
# reasoning); `pollux-4b-sbs`: its side-by-side prompt (`pollux compare`).
NAMED_TEMPLATES = {"default": DEFAULT_TEMPLATE, "model-card": MODEL_CARD_TEMPLATE,
                   "pollux-4b": DEFAULT_TEMPLATE, "pollux-4b-sbs": SIDE_BY_SIDE_TEMPLATE}
BARE_REPLY_TEMPLATES = frozenset({"pollux-4b", "pollux-4b-sbs"})
SIDE_BY_SIDE_TEMPLATES = frozenset({"pollux-4b-sbs"})


def load_template(value: str | None) -> PromptTemplate:
    """A template by name (`default`, `model-card`, `pollux-4b`, `pollux-4b-sbs`) or from a UTF-8
    file (`[RESULT]` replies); None is the default."""
    if value is None or value in NAMED_TEMPLATES:
        name = value or "default"
        return PromptTemplate(text=NAMED_TEMPLATES[name], reply="bare" if name in BARE_REPLY_TEMPLATES else "result")
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
