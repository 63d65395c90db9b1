"""Records: what a judge reads.

A `JudgeItem` is one judgement to make: one instruction, one answer, an optional reference
answer and exactly one criterion with its rubric (POLLUX judges are trained on one criterion per
call). Readers of input files (JSONL / CSV / Parquet) turn rows into items; everything downstream
(prompts, engines, stores) only sees `JudgeItem`s.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

_BAD_TEXT = re.compile("[\ud800-\udfff\x00]")

# The text fields of an item, in prompt order. All of them are untrusted user text.
TEXT_FIELDS = ("instruction", "reference_answer", "answer", "criteria_name", "rubrics")


class RecordError(ValueError):
    """A record cannot be turned into a judgement; the message names the record and the field."""


def text_problem(value: str) -> str | None:
    """What makes `value` unusable as text anywhere downstream, or None.

    A lone surrogate (JSON's `"\\ud800"`, or a byte that was not UTF-8 read with `surrogateescape`)
    is a valid Python str that no tokenizer, database or JSON encoder accepts: left in, it fails
    far from its source and takes the other items of a batch with it. NUL is refused for the
    same reason (C-string APIs, SQLite text). Checking once, at the record's edge, names the field.
    """
    bad = _BAD_TEXT.search(value)
    if bad is None:
        return None
    ch, at = bad.group(), bad.start() + 1
    if ch == "\x00":
        return f"invalid text: a NUL character at character {at}"
    return f"invalid text: a lone surrogate U+{ord(ch):04X} at character {at} (not valid Unicode)"


# How deep a free JSON value (an item's `meta`) may nest. Identifiers need two or three levels; a
# value nested hundreds deep is an attack or a bug, and every recursive walker downstream
# (`dataclasses.asdict`, JSON encoders, the verdict cleaner) would fail on it far from its source.
MAX_JSON_DEPTH = 32


def json_problem(value: Any, *, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """The first thing in a JSON-like value (dicts, lists, scalars) that pollux cannot carry: a
    string or key that is not usable text (`text_problem`), or nesting deeper than `max_depth`.

    The walk is iterative (an explicit stack), so a hostile value costs one loop step per node,
    never a Python frame per level: a check that itself raises RecursionError would fail the
    whole request instead of naming the one bad item."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            problem = text_problem(node)
            if problem is not None:
                return problem
            continue
        if not isinstance(node, dict | list):
            continue
        if depth >= max_depth:
            return f"nested deeper than {max_depth} levels"
        children = [*node, *node.values()] if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in reversed(children))
    return None


@dataclass(frozen=True)
class JudgeItem:
    instruction: str
    answer: str
    criteria_name: str
    rubrics: str
    reference_answer: str = ""
    # Free identifiers carried through to the verdict (item id, evaluated model, criterion id, ...).
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        for name in TEXT_FIELDS:
            value = getattr(self, name)
            if value is None and name == "reference_answer":
                object.__setattr__(self, name, "")
                continue
            if not isinstance(value, str):
                raise RecordError(f"field {name!r} must be a string, got {type(value).__name__}")
            problem = text_problem(value)
            if problem is not None:
                raise RecordError(f"field {name!r}: {problem}")
        if not self.criteria_name.strip():
            raise RecordError("field 'criteria_name' is empty")
        if not self.rubrics.strip():
            raise RecordError("field 'rubrics' is empty")

    @classmethod
    def from_dict(cls, row: dict[str, Any], *, where: str = "record") -> JudgeItem:
        """Build an item from a mapping with POLLUX column names; errors name `where`."""
        missing = [k for k in ("instruction", "answer", "criteria_name", "rubrics") if k not in row]
        if missing:
            raise RecordError(f"{where}: missing field(s) {', '.join(missing)}")
        try:
            return cls(
                instruction=row["instruction"],
                answer=row["answer"],
                criteria_name=row["criteria_name"],
                rubrics=row["rubrics"],
                reference_answer=row.get("reference_answer") or "",
                meta=dict(row.get("meta") or {}),
            )
        except RecordError as e:
            raise RecordError(f"{where}: {e}") from None

    @property
    def key(self) -> str:
        """A stable id of this judgement's content: the same texts give the same key anywhere
        (run databases, expert files, score files), which is how they are joined."""
        payload = json.dumps(
            [self.instruction, self.reference_answer, self.answer, self.criteria_name, self.rubrics],
            ensure_ascii=False,
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
