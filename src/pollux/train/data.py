"""Training data: rows → token sequences exactly as the judge sees them at inference → batches.

A training row is a judgement with its target: `instruction`, `reference_answer` (optional),
`answer`, `criteria_name`, `rubrics`, `rationale`, `score`. One row becomes one sequence:

    prompt  = chat_text(tokenizer, template.render(item))   # the user turn + "<|im_start|>assistant\n"
    target  = "[FEEDBACK] {rationale} [END]"                # regression judges (the score is stripped)
            | "[FEEDBACK] {rationale} [RESULT] {score} [END]"  # generative judges
    ids     = tokenize(prompt) + tokenize(target) + [<|im_end|>]

The prompt is tokenised on its own, the same call the engine makes, so the prompt tokens are
exactly what inference feeds; the target is tokenised separately, as generated tokens are. Nothing
follows `<|im_end|>`: at inference the regression head reads the hidden state of the last token of
prompt + generated text, and generation stops at `<|im_end|>` — so that is where the training
label must sit (the chat template would add a "\\n" after it for a finished conversation; we don't).

Cross-entropy labels are the target tokens and `<|im_end|>`; every prompt token is -100. The
regression label is the row's score; the model reads its head at the last real token of each row,
i.e. at `<|im_end|>` (batches are left-padded, so that is the final position of every row).

Rows longer than `max_length` tokens are dropped and counted (the recipe drops samples over
4,096 tokens). A bad row (missing field, non-numeric score, score outside the rubric's scale or
between its levels — `pollux.scales.check_level`, the rule synth's teacher check uses too —,
broken JSON line) is reported with its file and line; by default all bad rows are listed and
training does not start, with `skip_bad_rows` they are left out and counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pollux.inputs import InputError, InputRow, read_rows
from pollux.prompts import PromptTemplate, chat_text
from pollux.records import JudgeItem, RecordError
from pollux.scales import check_level, parse_feedback, parse_scale, to_number

IGNORE = -100
END_OF_TURN = "<|im_end|>"


class TrainDataError(ValueError):
    """Training data cannot be used; the message lists the bad rows (file:line: what is wrong)."""


@dataclass(frozen=True)
class TrainRow:
    item: JudgeItem
    rationale: str
    score: float
    where: str  # file:line, for messages


@dataclass
class Example:
    """One tokenised training sequence."""

    input_ids: list[int]
    labels: list[int]  # IGNORE on prompt tokens
    score: float
    where: str

    @property
    def n_target(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


@dataclass
class DataReport:
    """What became of a data file's rows."""

    source: str
    rows: int = 0
    kept: int = 0
    too_long: int = 0
    bad: list[str] = field(default_factory=list)  # "file:line: message"

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "rows": self.rows, "kept": self.kept, "too_long": self.too_long,
                "bad": len(self.bad), "bad_examples": self.bad[:10]}


def parse_train_row(row: InputRow) -> TrainRow:
    """Check one row and turn it into a `TrainRow`; raises `RecordError` naming the row."""
    data = row.data
    where = row.where
    for name in ("rationale", "score"):
        if data.get(name) is None:
            raise RecordError(f"{where}: missing field {name!r}")
    item = JudgeItem.from_dict(data, where=where)
    if not item.answer.strip() or not item.instruction.strip():
        raise RecordError(f"{where}: field {'answer' if not item.answer.strip() else 'instruction'!r} is empty")
    rationale = data["rationale"]
    if not isinstance(rationale, str):
        raise RecordError(f"{where}: field 'rationale' must be a string, got {type(rationale).__name__}")
    if "[FEEDBACK]" in rationale:  # a full judge output was given: keep only its feedback
        rationale = parse_feedback(rationale)
    rationale = rationale.strip()
    if not rationale:
        raise RecordError(f"{where}: field 'rationale' is empty")
    raw = data["score"]
    if isinstance(raw, bool):
        raise RecordError(f"{where}: field 'score' must be a number, got bool")
    try:
        score = float(raw) if isinstance(raw, int | float) else to_number(str(raw))
    except ValueError:
        raise RecordError(f"{where}: field 'score' must be a number, got {raw!r}") from None
    if not math.isfinite(score):
        raise RecordError(f"{where}: field 'score' is not finite ({raw!r})")
    ok, reason = check_level(score, parse_scale(item.rubrics))  # a target is one of the rubric's levels
    if not ok:
        raise RecordError(f"{where}: {reason}")
    return TrainRow(item=item, rationale=rationale, score=score, where=where)


def format_score(score: float) -> str:
    return str(int(score)) if float(score).is_integer() else f"{score:g}"


def target_text(rationale: str, score: float, kind: str) -> str:
    """What the judge is trained to write after the prompt (before `<|im_end|>`)."""
    if kind == "regression":
        return f"[FEEDBACK] {rationale} [END]"
    return f"[FEEDBACK] {rationale} [RESULT] {format_score(score)} [END]"


def end_of_turn_id(tokenizer: Any) -> int:
    """The token generation stops at: ChatML's `<|im_end|>`, else the tokenizer's EOS."""
    tid = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if isinstance(tid, int) and tid >= 0 and tid != tokenizer.unk_token_id:
        return tid
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has neither <|im_end|> nor an EOS token to end the target with")
    return int(tokenizer.eos_token_id)


def encode_rows(
    rows: list[TrainRow], tokenizer: Any, template: PromptTemplate, kind: str
) -> list[Example]:
    """Tokenise rows into sequences (no length filtering)."""
    if not rows:
        return []
    end_id = end_of_turn_id(tokenizer)
    prompts = [chat_text(tokenizer, template.render(r.item)) for r in rows]
    targets = [target_text(r.rationale, r.score, kind) for r in rows]
    prompt_ids = tokenizer(prompts)["input_ids"]  # the engine's own call: identical prompt tokens
    target_ids = tokenizer(targets, add_special_tokens=False)["input_ids"]
    out = []
    for r, p, t in zip(rows, prompt_ids, target_ids, strict=True):
        t = [*t, end_id]
        out.append(Example(input_ids=[*p, *t], labels=[IGNORE] * len(p) + t, score=r.score, where=r.where))
    return out


def load_examples(
    path: str | Path,
    tokenizer: Any,
    *,
    template: PromptTemplate | None = None,
    kind: str = "regression",
    max_length: int = 4096,
    skip_bad_rows: bool = False,
) -> tuple[list[Example], DataReport]:
    """Read a JSONL / Parquet (or CSV) file of training rows into tokenised examples."""
    path = Path(path)
    try:
        read = read_rows(path)
    except InputError as e:
        raise TrainDataError(str(e)) from None
    report = DataReport(source=str(path), rows=len(read.rows) + len(read.problems))
    report.bad.extend(str(p) for p in read.problems)
    rows: list[TrainRow] = []
    for r in read.rows:
        try:
            rows.append(parse_train_row(r))
        except RecordError as e:
            report.bad.append(str(e))
    if report.bad and not skip_bad_rows:
        shown = "\n  ".join(report.bad[:20])
        more = f"\n  … and {len(report.bad) - 20} more" if len(report.bad) > 20 else ""
        raise TrainDataError(
            f"{path}: {len(report.bad)} bad row(s) of {report.rows} (fix them, or pass --skip-bad-rows "
            f"to leave them out):\n  {shown}{more}"
        )
    examples = []
    for ex in encode_rows(rows, tokenizer, template or PromptTemplate(), kind):
        if len(ex.input_ids) > max_length:
            report.too_long += 1
        else:
            examples.append(ex)
    report.kept = len(examples)
    if not examples:
        raise TrainDataError(f"{path}: no usable rows ({report.rows} read, {len(report.bad)} bad, "
                             f"{report.too_long} longer than {max_length} tokens)")
    return examples, report


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded batch with explicit position ids.

    Left padding puts every row's target at the end, so the LM head is needed only for the last
    (longest target + 1) positions; the position ids count real tokens only, so each row is
    computed exactly as it would be alone (the test suite checks this). The model reads its head
    at each row's last real token (the mask's last 1): the final position, `<|im_end|>`.
    """
    length = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), length), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, length - n :] = torch.tensor(e.input_ids)
        labels[i, length - n :] = torch.tensor(e.labels)
        mask[i, length - n :] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    scores = torch.tensor([e.score for e in examples], dtype=torch.float32)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "labels": labels,
            "regr_labels": scores}
