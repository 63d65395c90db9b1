"""The Russian prompts of `pollux synth`, kept as editable text files.

Built-in prompts live in `pollux/synth/prompts/*.txt`; a config may name its own file instead.
A prompt's identity is `name@sha256[:12]` of its text: it is stored beside every row the prompt
produced and is part of the row's key, so editing a prompt makes new rows (never mixes old and new).

Placeholders are `{name}`; only the placeholders a stage fills are replaced, so braces elsewhere in
a prompt (code, JSON examples) stay as they are. A prompt that lacks a placeholder its stage needs
is an error when the config is read.

Values are untrusted (instructions and answers are LLM text), so a prompt is filled by the judge's
own builder, `pollux.prompts.fill`: one pass over the prompt's own text (a `{answer}` inside an
instruction is never filled), every value neutralised against the judge's `###` section headers —
the teacher's prompt uses them, and a forged `### Критерий оценки:` line inside an answer would
otherwise change the label that becomes training data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from pollux.prompts import fill

PROMPT_DIR = Path(__file__).parent / "prompts"
BUILTIN = {"instruction", "answer", "annotate"}

# The placeholders each stage's prompt must contain.
REQUIRED = {
    "instruction": ("{task_path}", "{complexity_ru}", "{variant}"),
    "answer": ("{instruction}",),
    "annotate": ("{instruction}", "{answer}", "{criteria_name}", "{rubrics}"),
}


@dataclass(frozen=True)
class Prompt:
    name: str
    text: str

    @property
    def version(self) -> str:
        """`name@hash`: stored beside every output row."""
        return f"{self.name}@{hashlib.sha256(self.text.encode('utf-8')).hexdigest()[:12]}"

    def render(self, **values: str) -> str:
        """The prompt with each `{name}` of `values` replaced, in one pass (see module doc)."""
        return fill(self.text, values)


def read_prompt(value: str, stage: str | None = None) -> Prompt:
    """A built-in prompt by name, or a prompt file. Raises OSError / ValueError when unusable."""
    path = PROMPT_DIR / f"{value}.txt" if value in BUILTIN else Path(value)
    text = path.read_text(encoding="utf-8").strip("\n")
    if not text.strip():
        raise ValueError("the prompt file is empty")
    stage = stage or (value if value in BUILTIN else None)
    if stage is not None:
        missing = [p for p in REQUIRED[stage] if p not in text]
        if missing:
            raise ValueError(f"the {stage} prompt lacks placeholder(s) {', '.join(missing)}")
    return Prompt(name=path.stem, text=text)
