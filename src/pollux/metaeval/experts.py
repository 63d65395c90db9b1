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

from pollux.inputs import InputError, bad_text, detect_format, input_files, read_dataset, read_parquet_columns
from pollux.metaeval.domains import DEFAULT_OOD_TASKS
from pollux.metaeval.groups import UNKNOWN, canonical_group, criterion_groups
from pollux.records import JudgeItem, RecordError
from pollux.scales import Scale, check_level, parse_scale

REQUIRED = ("instruction", "answer", "criteria_name", "rubrics", "model_id")
NOT_APPLICABLE = -1.0
# Why a readable row is left out (`ExpertData.excluded`), in the order they are reported.
NOT_FINITE, OUT_OF_SCALE, DUPLICATE, CONFLICT = "not finite", "out of scale", "duplicate", "conflicting duplicate"
EXCLUDED_REASONS = (NOT_FINITE, OUT_OF_SCALE, DUPLICATE, CONFLICT)


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
    excluded: dict[str, list[str]] = field(default_factory=dict)

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
    """The `wanted` columns that the shards have (`pollux.inputs.read_parquet_columns`: only those
    columns are read), as lists over all shards, and each row's `shard:row`. Texts are checked as
    `read_rows` checks them, by `load_experts` (`_text_problems`)."""
    columns: dict[str, list[Any]] = {}
    where: list[str] = []
    for path in files:
        part, n_rows = read_parquet_columns(path, wanted)
        for c in part:  # a column that only some shards have is empty in the others
            columns.setdefault(c, [None] * len(where))
        for c, values in columns.items():
            values.extend(part.get(c, [None] * n_rows))
        where += [f"{path.name}:{i + 1}" for i in range(n_rows)]
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


def _score_cell(value: Any) -> float | None:
    """A score cell → float; None for an empty cell (None, "", or NaN: how pandas and Parquet spell
    a missing value). Text that reads as a non-finite number ("NaN", "inf") is returned as that
    number, for the caller to refuse: it is a bad value, not an empty cell. Anything else that is
    not a number raises ValueError / TypeError."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        return float(text.replace(",", ".")) if text else None
    number = float(value)
    return None if math.isnan(number) else number


class _Unusable(Exception):
    """A readable row that must not be used: `reason` (one of `EXCLUDED_REASONS`) and what is wrong."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _expert_scores(value: Any) -> list[float]:
    """Per-expert scores from an `annotations` cell, without -1s and empty cells; a non-finite
    score raises `_Unusable`, a score that is not a number ValueError / TypeError."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        value = json.loads(value) if value.strip() else []
    if isinstance(value, dict):
        value = [value]
    out = []
    for a in value:
        cell = a.get("score") if isinstance(a, dict) else a
        if isinstance(cell, int | float):  # the common case first, without a call
            s: float | None = float(cell)
            if s != s:  # NaN: an empty cell
                continue
        else:
            s = _score_cell(cell)
        if s is None or s == NOT_APPLICABLE:
            continue
        if not math.isfinite(s):
            raise _Unusable(NOT_FINITE, f"expert score in 'annotations' is not a finite number: {cell!r}")
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
    strict: bool = False,
) -> ExpertData:
    """Read POLLUX-format expert data from a file, a folder of shards, a glob or a DataFrame (see
    the module docstring). `keep`: further columns to keep in `frame` (e.g. an `id` that score
    files are joined on). Rows that cannot be read are skipped, rows that must not be used (out of
    the rubric's scale, not finite, duplicated) are excluded — each named with a warning and
    counted; with `strict` any such row is a ValueError instead."""
    name, raw, row_names, skipped, checked = _read_columns(source, keep)
    _require_columns(name, raw, skipped)
    n = len(row_names)
    col = {c: raw.get(c, [None] * n) for c in (*REQUIRED, *OPTIONAL)}
    # Rows read by read_rows were checked there; a DataFrame's and Parquet columns' texts here.
    problems: list[str | None] = [None] * n if checked else _text_problems(col, n)
    rows = _parse_rows(col, row_names, problems, has_aggregate="criteria_score" in raw)
    _exclude_duplicates(rows, col["model_id"], row_names)
    skipped += rows.skipped
    _report(name, skipped, rows.excluded, strict)
    frame = _expert_frame(name, col, raw, rows, keep, ood_tasks)
    return ExpertData(frame=frame, annotations=_annotation_matrix(rows.per_expert), skipped=skipped, source=name,
                      excluded={reason: [where for _, where, _ in found] for reason, found in rows.excluded.items()})


def _require_columns(name: str, raw: dict[str, list[Any]], skipped: list[str]) -> None:
    missing = [c for c in REQUIRED if c not in raw]
    if "criteria_score" not in raw and "annotations" not in raw:
        missing.append("criteria_score (or annotations)")
    if missing:
        unreadable = f" ({len(skipped)} unreadable row(s), first {skipped[0]})" if skipped else ""
        raise ValueError(f"{name}: missing column(s) {', '.join(missing)}{unreadable}")


@dataclass
class _Rows:
    """The usable rows as parsed so far: input position, content key, aggregate (NaN: not
    applicable), per-expert scores; the skipped rows' messages; the excluded rows' (where,
    message) by reason; each rubric's scale."""

    kept: list[int] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    expert: list[float] = field(default_factory=list)
    per_expert: list[list[float]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    excluded: dict[str, list[tuple[int, str, str]]] = field(default_factory=dict)
    scales: dict[str, Scale | None] = field(default_factory=dict)

    def exclude(self, reason: str, position: int, where: str, message: str) -> None:
        self.excluded.setdefault(reason, []).append((position, where, f"{where}: {message}"))

    def keep_only(self, rows: list[int]) -> None:
        """Keep these of the usable rows (indices into `kept`)."""
        self.kept = [self.kept[r] for r in rows]
        self.keys = [self.keys[r] for r in rows]
        self.expert = [self.expert[r] for r in rows]
        self.per_expert = [self.per_expert[r] for r in rows]


def _parse_rows(col: dict[str, list[Any]], row_names: list[str], problems: list[str | None],
                has_aggregate: bool) -> _Rows:
    """Every row's key and scores; a row that cannot be read is skipped, one that must not be used
    (a non-finite or out-of-scale score) is excluded, each with its reason."""
    rows = _Rows()
    key_of = _key_function()
    texts = zip(*(col[k] for k in ("instruction", "answer", "criteria_name", "rubrics", "reference_answer",
                                   "model_id")), strict=True)
    for i, (where, problem, row_texts) in enumerate(zip(row_names, problems, texts, strict=True)):
        try:
            key = _row_key(*row_texts, where=where, problem=problem, key_of=key_of)
            rubrics = row_texts[3]
            scale = rows.scales[rubrics] if rubrics in rows.scales else rows.scales.setdefault(
                rubrics, parse_scale(rubrics))
            agg, scores = _row_scores(col, i, where, has_aggregate, scale)
        except RecordError as e:
            rows.skipped.append(str(e))
            continue
        except _Unusable as e:
            rows.exclude(e.reason, i, where, str(e))
            continue
        rows.kept.append(i)
        rows.keys.append(key)
        rows.expert.append(agg)
        rows.per_expert.append(scores)
    return rows


def _row_key(instruction: Any, answer: Any, criterion: Any, rubrics: Any, reference: Any, model: Any, *,
             where: str, problem: str | None, key_of: Callable[[str, str, str, str, str], str]) -> str:
    """A row's content key (`JudgeItem.key`); RecordError when a text or the model id is unusable."""
    if problem is not None:
        raise RecordError(f"{where}: {problem}")
    reference = _blank_if_missing(reference)
    if (isinstance(instruction, str) and isinstance(answer, str) and isinstance(criterion, str)
            and isinstance(rubrics, str) and isinstance(reference, str) and criterion.strip()
            and rubrics.strip()):  # spelled out: a generator per row was a tenth of the loading time
        key = key_of(instruction, reference, answer, criterion, rubrics)
    else:  # let JudgeItem say what is wrong
        texts = {"instruction": instruction, "answer": answer, "criteria_name": criterion, "rubrics": rubrics}
        key = JudgeItem.from_dict(texts | {"reference_answer": reference}, where=where).key
    if not isinstance(model, str) or not model.strip():
        raise RecordError(f"{where}: field 'model_id' is empty or not a string")
    return key


def _row_scores(col: dict[str, list[Any]], i: int, where: str, has_aggregate: bool,
                scale: Scale | None) -> tuple[float, list[float]]:
    """Row i's aggregate (NaN when not applicable) and per-expert scores. RecordError: a score is
    not a number; `_Unusable`: a score is not finite or off the rubric's scale."""
    try:
        scores = _expert_scores(col["annotations"][i])
    except (ValueError, TypeError, AttributeError) as e:
        raise RecordError(f"{where}: cannot read 'annotations' ({e})") from None
    if has_aggregate:
        cell = col["criteria_score"][i]
        try:
            agg = _score_cell(cell)
        except (ValueError, TypeError):
            raise RecordError(f"{where}: 'criteria_score' is not a number: {cell!r}") from None
        if agg is not None and not math.isfinite(agg):
            raise _Unusable(NOT_FINITE, f"'criteria_score' is not a finite number: {cell!r}")
    else:
        agg = float(np.mean(scores)) if scores else None
    aggregate = math.nan if agg is None or agg == NOT_APPLICABLE else agg
    if scale is not None:
        _check_scale(aggregate, scores, scale)
    return aggregate, scores


def _check_scale(aggregate: float, scores: list[float], scale: Scale) -> None:
    """The aggregate must lie within the rubric's scale [min, max] — it is a mean over experts, so
    a value between two levels (1.5 on 0/1/2) is legitimate for it — and each expert's score must
    be one of the rubric's levels, the rule for a score one rater wrote (`pollux.scales.check_level`,
    the same in synth, train and meta-eval)."""
    if not math.isnan(aggregate) and not scale.min <= aggregate <= scale.max:
        raise _Unusable(OUT_OF_SCALE, f"'criteria_score' {aggregate:g} is outside the rubric's scale "
                                      f"[{scale.min:g}, {scale.max:g}]")
    for s in scores:
        if s in scale.levels:  # the common case, without a call per score
            continue
        valid, reason = check_level(s, scale)
        if not valid:
            raise _Unusable(OUT_OF_SCALE, f"'annotations': an expert's {reason}")


def _exclude_duplicates(rows: _Rows, models: list[Any], row_names: list[str]) -> None:
    """Rows with the same texts and LLM are one judgement: an exact repeat (same scores) is
    excluded and the first row kept; repeats with other scores are all excluded — which one the
    experts meant cannot be known, and using both would count the judgement twice."""
    pairs = pd.DataFrame({"key": rows.keys, "model": [models[i] for i in rows.kept]})
    repeated = np.flatnonzero(pairs.duplicated(keep=False).to_numpy())  # in C: few rows are repeated
    first: dict[tuple[str, str], list[int]] = {}
    for r in repeated.tolist():
        first.setdefault((rows.keys[r], models[rows.kept[r]]), []).append(r)
    drop: set[int] = set()
    for group in (g for g in first.values() if len(g) > 1):
        signature = {(rows.expert[r] if not math.isnan(rows.expert[r]) else None, tuple(rows.per_expert[r]))
                     for r in group}
        head = row_names[rows.kept[group[0]]]
        if len(signature) == 1:
            drop.update(group[1:])
            for r in group[1:]:
                i = rows.kept[r]
                rows.exclude(DUPLICATE, i, row_names[i], f"duplicate of {head} (same texts, LLM and scores)")
            continue
        drop.update(group)
        left_out = "both left out" if len(group) == 2 else f"all {len(group)} left out"
        rows.exclude(CONFLICT, rows.kept[group[0]], head,
                     f"conflicting duplicates (same texts and LLM, other scores); {left_out}")
        for r in group[1:]:
            i = rows.kept[r]
            rows.exclude(CONFLICT, i, row_names[i],
                         f"conflicting duplicate of {head} (same texts and LLM, other scores); {left_out}")
    if drop:
        rows.keep_only([r for r in range(len(rows.kept)) if r not in drop])
    for found in rows.excluded.values():
        found.sort()


def _report(name: str, skipped: list[str], excluded: dict[str, list[tuple[int, str, str]]], strict: bool) -> None:
    """Warn about each skipped and excluded row (the first 20 of each) and the excluded counts;
    with `strict` any of them is one error with the count and first row of each reason."""
    found = {reason: [message for _, _, message in excluded[reason]] for reason in EXCLUDED_REASONS
             if excluded.get(reason)}
    if strict and (skipped or found):
        reasons = ({"unreadable": skipped} if skipped else {}) | found
        parts = "; ".join(f"{len(v)} {reason} (first: {v[0]})" for reason, v in reasons.items())
        raise ValueError(f"{sum(len(v) for v in reasons.values())} expert row(s) of {name} cannot be used "
                         f"(strict): {parts}")
    for verb, messages in (("skipped", skipped), ("excluded", [m for v in found.values() for m in v])):
        for msg in messages[:20]:
            warnings.warn(f"{verb} {msg}", MetaEvalWarning, stacklevel=3)
        if len(messages) > 20:
            warnings.warn(f"{verb} {len(messages) - 20} more rows of {name}", MetaEvalWarning, stacklevel=3)
    if found:
        counts = ", ".join(f"{len(v)} {reason}" for reason, v in found.items())
        warnings.warn(f"excluded {sum(len(v) for v in found.values())} expert row(s) of {name}: {counts} "
                      "(left out of every metric; strict mode makes them an error)", MetaEvalWarning, stacklevel=3)


def _expert_frame(name: str, col: dict[str, list[Any]], raw: dict[str, list[Any]], rows: _Rows,
                  keep: Sequence[str], ood_tasks: Sequence[str]) -> pd.DataFrame:
    """`ExpertData.frame` of the usable rows (see `ExpertData`)."""
    kept = rows.kept

    def pick(c: str, default: Any = "") -> list[Any]:
        return [col[c][i] if col[c][i] is not None else default for i in kept]

    frame = pd.DataFrame({
        "key": rows.keys,
        "model_id": pick("model_id"),
        "task_type": [str(_blank_if_missing(t)) for t in pick("task_type")],
        "criteria_name": pick("criteria_name"),
        "instruction": pick("instruction"),
        "reference_answer": [_blank_if_missing(r) for r in pick("reference_answer")],
        "answer": pick("answer"),
        "rubrics": pick("rubrics"),
        "expert": np.asarray(rows.expert, dtype=float),
    })
    for c in keep:
        if c not in frame.columns:
            if c not in raw:
                raise ValueError(f"{name}: no column {c!r} to keep (it has {', '.join(raw)})")
            frame[c] = [value if value is not None else "" for value in (raw[c][i] for i in kept)]
    frame["ood"] = frame["task_type"].isin(set(ood_tasks)).to_numpy()
    frame["answer_id"] = frame.groupby(["model_id", "instruction", "answer"], sort=False).ngroup().to_numpy()
    bounds = {r: (math.nan, math.nan) if s is None else (s.min, s.max) for r, s in rows.scales.items()}
    frame["scale_min"] = frame["rubrics"].map(lambda r: bounds[r][0]).astype(float)
    frame["scale_max"] = frame["rubrics"].map(lambda r: bounds[r][1]).astype(float)
    frame["group"] = _groups(pick("criteria_group", None), frame["criteria_name"])
    return frame


def _groups(labels: list[Any], criteria: pd.Series) -> list[str]:
    """Each row's criterion group: its `criteria_group` label, else the taxonomy's, else unknown."""
    canonical = {g: canonical_group(g) for g in set(labels) if g not in (None, "")}
    explicit = [canonical.get(g) if g not in (None, "") else None for g in labels]
    looked_up = criterion_groups(criteria.unique()) if None in explicit else {}
    return [g if g is not None else looked_up.get(c, UNKNOWN) for g, c in zip(explicit, criteria, strict=True)]


def _annotation_matrix(per_expert: list[list[float]]) -> np.ndarray:
    """(n_rows, k) per-expert scores, NaN-padded."""
    width = max((len(s) for s in per_expert), default=0)
    annotations = np.full((len(per_expert), max(width, 1)), np.nan)
    for r, s in enumerate(per_expert):
        annotations[r, : len(s)] = s
    return annotations
