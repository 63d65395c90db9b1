"""Expert data: POLLUX-format rows (one answer × one criterion) with the experts' scores.

Columns read (POLLUX names): `instruction`, `answer`, `criteria_name`, `rubrics`, `model_id`
(the evaluated LLM), `criteria_score` (the experts' aggregate), optionally `reference_answer`,
`task_type` (for the in/out-of-domain split), `annotations` (per-expert `{comment, score}` or
plain numbers, used by Verdict Confidence) and `criteria_group`.

A `-1` (or an empty cell) in `criteria_score` means "not applicable": the row is kept, flagged
and left out of every metric; `-1` among the per-expert `annotations` is dropped the same way.
A source is one file, a folder of shards (the released dataset's Parquet files) or a glob
(`pollux.inputs.input_files`). JSONL, `.json` arrays and CSV are read by
`pollux.inputs.read_rows`, with its policy for BOM, CRLF, broken lines, non-UTF-8 bytes and
unusable text; Parquet shards (the released dataset) are read column-wise, only the columns
used here, and their texts get the same checks (a bad text in a column not read does not cost
the row). A row that cannot be read
(broken JSON, a missing text, a score that is not a number) is skipped with a warning that names
it — `file:line: what is wrong`, as `pollux evaluate` names bad rows — and the other rows are
still evaluated.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pollux.inputs import InputError, bad_text, detect_format, input_files, read_dataset
from pollux.metaeval.domains import DEFAULT_OOD_TASKS
from pollux.metaeval.groups import UNKNOWN, canonical_group, criterion_groups
from pollux.records import JudgeItem, RecordError
from pollux.scales import parse_scale

REQUIRED = ("instruction", "answer", "criteria_name", "rubrics", "model_id")
NOT_APPLICABLE = -1.0


class MetaEvalWarning(UserWarning):
    """Something the reader of a meta-evaluation should know (skipped rows, NaN metrics, …)."""


@dataclass
class ExpertData:
    """Expert rows ready to be joined with judge scores.

    `frame` has one row per readable input row: `key` (= `JudgeItem.key`), `model_id`,
    `task_type`, `criteria_name`, `group`, `ood` (bool), `answer_id` (one id per
    (instruction, answer, model_id): the unit the bootstrap resamples), `expert` (the aggregate,
    NaN when not applicable), `scale_min` / `scale_max` (NaN when the rubric states no scale)
    and the texts needed to run a judge. `annotations` is an (n_rows, k) float array of the
    per-expert scores, NaN-padded, without -1s.
    """

    frame: pd.DataFrame
    annotations: np.ndarray
    skipped: list[str] = field(default_factory=list)
    source: str = ""

    def items(self, rows: Sequence[int] | None = None) -> list[JudgeItem]:
        """The judge inputs of the given rows (all by default)."""
        f = self.frame if rows is None else self.frame.iloc[list(rows)]
        return [
            JudgeItem(instruction=r.instruction, answer=r.answer, criteria_name=r.criteria_name,
                      rubrics=r.rubrics, reference_answer=r.reference_answer)
            for r in f.itertuples(index=False)
        ]


OPTIONAL = ("reference_answer", "task_type", "criteria_score", "annotations", "criteria_group")


def _read_columns(source: str | Path | pd.DataFrame, keep: Sequence[str] = (),
                  ) -> tuple[str, dict[str, list[Any]], list[str], list[str], bool]:
    """(name, columns, where each row is, problems, whether the texts were checked) of an expert
    file or DataFrame.

    Files are read by `pollux.inputs.read_rows`, so a bad line is skipped and named exactly as
    `pollux evaluate` names it (`file:line: what is wrong`); a DataFrame's rows are `row N`.
    Parquet shards are read column-wise, only the columns meta-eval uses (`_read_parquet`)."""
    if isinstance(source, pd.DataFrame):
        columns = {str(c): source[c].tolist() for c in source.columns}
        where = [f"DataFrame: row {i + 1}" for i in range(len(source))]
        return "DataFrame", columns, where, [], False
    try:
        files = input_files(source)
        if all(detect_format(f) == "parquet" for f in files):
            columns, where = _read_parquet(files, (*REQUIRED, *OPTIONAL, *keep))
            return str(source), columns, where, [], False
        read = read_dataset(source)
    except InputError as e:
        raise ValueError(str(e)) from None
    names = list(dict.fromkeys(k for row in read.rows for k in row.data))
    columns = {c: [row.data.get(c) for row in read.rows] for c in names}
    return str(source), columns, [row.where for row in read.rows], [str(p) for p in read.problems], True


def _read_parquet(files: list[Path], wanted: Sequence[str]) -> tuple[dict[str, list[Any]], list[str]]:
    """The `wanted` columns that the shards have (pyarrow column projection: POLLUX's shards hold
    ~20 columns of which meta-eval reads 10, and converting whole rows to Python took longer than
    the metrics), as lists over all shards, and each row's `shard:row`. Texts are checked as
    `read_rows` checks them, by `load_experts` (`_text_problems`)."""
    import pyarrow.parquet as pq

    columns: dict[str, list[Any]] = {}
    where: list[str] = []
    for path in files:
        try:
            present = set(pq.read_schema(path).names)
            table = pq.read_table(path, columns=[c for c in dict.fromkeys(wanted) if c in present])
        except Exception as e:  # pyarrow raises several types for a corrupt file
            raise InputError(f"{path}: cannot read Parquet: {e}") from None
        for c in table.column_names:  # a column that only some shards have is empty in the others
            columns.setdefault(c, [None] * len(where))
        for c, values in columns.items():
            part = table.column(c).to_pylist() if c in table.column_names else [None] * table.num_rows
            values.extend(None if isinstance(v, float) and math.isnan(v) else v for v in part)
        where += [f"{path.name}:{i + 1}" for i in range(table.num_rows)]
    return columns, where


def _number(value: Any) -> float:
    """A score cell → float; None / NaN / "" → NaN; anything else that is not a number raises."""
    if value is None:
        return math.nan
    if isinstance(value, str):
        if not value.strip():
            return math.nan
        return float(value.strip().replace(",", "."))
    return float(value)


def _expert_scores(value: Any) -> list[float]:
    """Per-expert scores from an `annotations` cell, without -1s and empty cells."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        value = json.loads(value) if value.strip() else []
    if isinstance(value, dict):
        value = [value]
    out = []
    for a in value:
        s = a.get("score") if isinstance(a, dict) else a
        s = float(s) if isinstance(s, (int, float)) else _number(s)  # the common case first
        if not math.isnan(s) and s != NOT_APPLICABLE:
            out.append(s)
    return out


def _blank_if_missing(value: Any) -> Any:
    """None / NaN (how parquet and pandas spell an empty optional text) → ""."""
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _key_function() -> Callable[[str, str, str, str, str], str]:
    """`JudgeItem.key` of (instruction, reference, answer, criterion, rubrics) without building a
    JudgeItem per row — a third of the loading time at POLLUX's size. The shortcut is used only
    when it reproduces `JudgeItem.key` on a probe with quotes, escapes and Cyrillic, so a change
    to how keys are made falls back to JudgeItem instead of silently breaking the join."""
    # json.dumps(ensure_ascii=False)'s string encoder (the C one is missing from typeshed's stubs)
    enc = getattr(json.encoder, "c_encode_basestring", None) or json.encoder.py_encode_basestring

    def fast(instruction: str, reference: str, answer: str, criterion: str, rubrics: str) -> str:
        payload = "[" + ", ".join([enc(instruction), enc(reference), enc(answer), enc(criterion), enc(rubrics)]) + "]"
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]

    def slow(instruction: str, reference: str, answer: str, criterion: str, rubrics: str) -> str:
        return JudgeItem(instruction=instruction, answer=answer, criteria_name=criterion, rubrics=rubrics,
                         reference_answer=reference).key

    probe = ('Задание "1"\n\tс \\ и ё', "", "Ответ\u2028 </script>", "Грамотность", "0: нет\n\n1: да")
    return fast if fast(*probe) == slow(*probe) else slow


def _text_problems(col: dict[str, list[Any]], n: int) -> list[str | None]:
    """Per row, what `bad_text` says of its text fields, each distinct text checked once: an
    instruction and an answer repeat on every criterion row (~14 in POLLUX), and checking every
    row's cells was a third of the loading time."""
    out: list[str | None] = [None] * n
    for k in (*REQUIRED, "reference_answer", "task_type"):  # the order bad_text reports them in
        seen: dict[Any, str | None] = {}
        for i, v in enumerate(col[k]):
            if isinstance(v, str) or v is None:
                if v not in seen:
                    seen[v] = bad_text({k: v})
                problem = seen[v]
            else:
                problem = bad_text({k: v})
            if problem is not None and out[i] is None:
                out[i] = problem
    return out


def load_experts(
    source: str | Path | pd.DataFrame,
    *,
    ood_tasks: Sequence[str] = DEFAULT_OOD_TASKS,
    keep: Sequence[str] = (),
) -> ExpertData:
    """Read POLLUX-format expert data from a file, a folder of shards, a glob or a DataFrame (see
    the module docstring). `keep`: further columns to keep in `frame` (e.g. an `id` that score
    files are joined on)."""
    name, raw, row_names, skipped, checked = _read_columns(source, keep)
    missing = [c for c in REQUIRED if c not in raw]
    if "criteria_score" not in raw and "annotations" not in raw:
        missing.append("criteria_score (or annotations)")
    if missing:
        unreadable = f" ({len(skipped)} unreadable row(s), first {skipped[0]})" if skipped else ""
        raise ValueError(f"{name}: missing column(s) {', '.join(missing)}{unreadable}")

    n = len(row_names)
    col = {c: raw.get(c, [None] * n)
           for c in (*REQUIRED, "reference_answer", "task_type", "criteria_score", "annotations", "criteria_group")}
    has_aggregate = "criteria_score" in raw
    keys: list[str] = []
    expert: list[float] = []
    per_expert: list[list[float]] = []
    kept: list[int] = []
    key_of = _key_function()
    # Rows read by read_rows were checked there; a DataFrame's and Parquet columns' texts here.
    text_problems = [None] * n if checked else _text_problems(col, n)
    instructions, answers, criteria, rubric_texts, references = (
        col[k] for k in ("instruction", "answer", "criteria_name", "rubrics", "reference_answer"))
    for i in range(n):
        where = row_names[i]
        try:
            texts = [instructions[i], answers[i], criteria[i], rubric_texts[i]]
            reference = _blank_if_missing(references[i])
            problem = text_problems[i]
            if problem is not None:
                raise RecordError(f"{where}: {problem}")
            instruction, answer, criterion, rubrics = texts
            if (isinstance(instruction, str) and isinstance(answer, str) and isinstance(criterion, str)
                    and isinstance(rubrics, str) and isinstance(reference, str) and criterion.strip()
                    and rubrics.strip()):  # spelled out: a generator per row was a tenth of the loading time
                key = key_of(instruction, reference, answer, criterion, rubrics)
            else:  # let JudgeItem say what is wrong
                key = JudgeItem.from_dict(dict(zip(("instruction", "answer", "criteria_name", "rubrics"), texts,
                                                   strict=True)) | {"reference_answer": reference}, where=where).key
            if not isinstance(col["model_id"][i], str) or not col["model_id"][i].strip():
                raise RecordError(f"{where}: field 'model_id' is empty or not a string")
            try:
                scores = _expert_scores(col["annotations"][i])
            except (ValueError, TypeError, AttributeError) as e:
                raise RecordError(f"{where}: cannot read 'annotations' ({e})") from None
            try:
                agg = _number(col["criteria_score"][i]) if has_aggregate else (
                    float(np.mean(scores)) if scores else math.nan)
            except (ValueError, TypeError):
                raise RecordError(f"{where}: 'criteria_score' is not a number: {col['criteria_score'][i]!r}") from None
        except RecordError as e:
            skipped.append(str(e))
            continue
        keys.append(key)
        expert.append(math.nan if agg == NOT_APPLICABLE else agg)
        per_expert.append(scores)
        kept.append(i)
    for msg in skipped[:20]:
        warnings.warn(f"skipped {msg}", MetaEvalWarning, stacklevel=2)
    if len(skipped) > 20:
        warnings.warn(f"skipped {len(skipped) - 20} more unreadable rows of {name}", MetaEvalWarning, stacklevel=2)

    def pick(c: str, default: Any = "") -> list[Any]:
        return [col[c][i] if col[c][i] is not None else default for i in kept]

    frame = pd.DataFrame({
        "key": keys,
        "model_id": pick("model_id"),
        "task_type": [str(_blank_if_missing(t)) for t in pick("task_type")],
        "criteria_name": pick("criteria_name"),
        "instruction": pick("instruction"),
        "reference_answer": [_blank_if_missing(r) for r in pick("reference_answer")],
        "answer": pick("answer"),
        "rubrics": pick("rubrics"),
        "expert": np.asarray(expert, dtype=float),
    })
    for c in keep:
        if c not in frame.columns:
            if c not in raw:
                raise ValueError(f"{name}: no column {c!r} to keep (it has {', '.join(raw)})")
            frame[c] = [col_value if col_value is not None else "" for col_value in (raw[c][i] for i in kept)]
    frame["ood"] = frame["task_type"].isin(set(ood_tasks)).to_numpy()
    frame["answer_id"] = frame.groupby(["model_id", "instruction", "answer"], sort=False).ngroup().to_numpy()
    scales = {r: parse_scale(r) for r in frame["rubrics"].unique()}
    bounds = {r: (math.nan, math.nan) if s is None else (s.min, s.max) for r, s in scales.items()}
    frame["scale_min"] = frame["rubrics"].map(lambda r: bounds[r][0]).astype(float)
    frame["scale_max"] = frame["rubrics"].map(lambda r: bounds[r][1]).astype(float)
    labels = pick("criteria_group", None)
    canonical = {g: canonical_group(g) for g in set(labels) if g not in (None, "")}
    explicit = [canonical.get(g) if g not in (None, "") else None for g in labels]
    looked_up = criterion_groups(frame["criteria_name"].unique()) if None in explicit else {}
    frame["group"] = [g if g is not None else looked_up.get(c, UNKNOWN)
                      for g, c in zip(explicit, frame["criteria_name"], strict=True)]

    width = max((len(s) for s in per_expert), default=0)
    annotations = np.full((len(per_expert), max(width, 1)), np.nan)
    for r, s in enumerate(per_expert):
        annotations[r, : len(s)] = s
    return ExpertData(frame=frame, annotations=annotations, skipped=skipped, source=name)
