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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pollux.inputs import InputError, bad_text, detect_format, input_files, read_dataset, read_parquet_table
from pollux.metaeval.domains import DEFAULT_OOD_TASKS
from pollux.metaeval.groups import UNKNOWN, canonical_group, criterion_groups
from pollux.records import JudgeItem, RecordError, text_problem
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
TEXTS = (*REQUIRED, "reference_answer", "task_type")  # the texts checked, in the order bad_text reports them


@dataclass
class _Source:
    """What was read: every column but `annotations` as a DataFrame (`table`), the `annotations`
    column apart (an Arrow array from Parquet, else a list of cells; None when absent), where each
    row is, the unreadable rows' messages, and whether the texts were already checked (`read_rows`)."""

    name: str
    table: pd.DataFrame
    annotations: Any
    where: list[str]
    problems: list[str]
    checked: bool


def _read_columns(source: str | Path | pd.DataFrame, keep: Sequence[str] = ()) -> _Source:
    """An expert file or DataFrame, column-wise.

    Files are read by `pollux.inputs.read_rows`, so a bad line is skipped and named exactly as
    `pollux evaluate` names it (`file:line: what is wrong`); a DataFrame's rows are `row N`.
    Parquet shards are read column-wise, only the columns meta-eval uses (`_read_parquet`)."""
    if isinstance(source, pd.DataFrame):
        table = source.reset_index(drop=True)
        cells = table["annotations"].tolist() if "annotations" in table.columns else None
        where = [f"DataFrame: row {i + 1}" for i in range(len(table))]
        return _Source("DataFrame", table, cells, where, [], False)
    try:
        files = input_files(source)
        if all(detect_format(f) == "parquet" for f in files):
            return _read_parquet(str(source), files, (*REQUIRED, *OPTIONAL, *keep))
        read = read_dataset(source)
    except InputError as e:
        raise ValueError(str(e)) from None
    names = list(dict.fromkeys(k for row in read.rows for k in row.data))
    table = pd.DataFrame({c: pd.Series([row.data.get(c) for row in read.rows], dtype=object) for c in names})
    cells = table.pop("annotations").tolist() if "annotations" in table.columns else None
    return _Source(str(source), table, cells, [row.where for row in read.rows], [str(p) for p in read.problems],
                   True)


def _read_parquet(name: str, files: list[Path], wanted: Sequence[str]) -> _Source:
    """The `wanted` columns that the shards have (`pollux.inputs.read_parquet_table`: only those
    columns are read), over all shards, and each row's `shard:row`. The texts stay in Arrow memory
    (pandas' string columns) and `annotations` stays an Arrow array: converting every cell to a
    Python object took longer than the metrics. Texts are checked by `load_experts`."""
    import pyarrow as pa

    parts: list[pd.DataFrame] = []
    notes: list[Any] = []
    where: list[str] = []
    for path in files:
        table = read_parquet_table(path, wanted)
        notes.append(table.column("annotations") if "annotations" in table.column_names else None)
        parts.append(table.drop_columns([c for c in table.column_names if c == "annotations"]).to_pandas())
        shard = path.name
        where += [f"{shard}:{i + 1}" for i in range(table.num_rows)]
    frame = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    present = [a for a in notes if a is not None]
    if not present:
        return _Source(name, frame, None, where, [], False)
    if len(present) == len(notes) and len({a.type for a in present}) == 1:
        annotations: Any = pa.chunked_array([c for a in present for c in a.chunks], type=present[0].type)
    else:  # a shard without the column, or shards of other types: cell by cell
        annotations = [v for a, part in zip(notes, parts, strict=True)
                       for v in (a.to_pylist() if a is not None else [None] * len(part))]
    return _Source(name, frame, annotations, where, [], False)


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


def _content_keys(texts: Sequence[pd.Series]) -> list[str]:
    """`JudgeItem.key` of every row of (instruction, reference, answer, criterion, rubrics) — all
    strings — without a JudgeItem per row: each distinct text is JSON-encoded once (an
    instruction repeats on every criterion row) and the payloads are joined column-wise."""
    # json.dumps(ensure_ascii=False)'s string encoder (the C one is missing from typeshed's stubs)
    import pyarrow as pa
    import pyarrow.compute as pc

    enc = getattr(json.encoder, "c_encode_basestring", None) or json.encoder.py_encode_basestring
    columns = []
    for texts_of_column in texts:
        codes, uniques = pd.factorize(texts_of_column)
        columns.append(pa.array([enc(u) for u in uniques.tolist()], type=pa.large_string()).take(codes))
    payload = pc.binary_join_element_wise(*columns, pa.scalar(", ", pa.large_string()))  # in Arrow, not per row
    return [hashlib.sha256(f"[{p}]".encode()).hexdigest()[:32] for p in payload.to_pylist()]


def _keys_match_judge_item() -> bool:
    """Whether `_content_keys` reproduces `JudgeItem.key` on a probe with quotes, escapes and
    Cyrillic: a change to how keys are made then falls back to JudgeItem per row instead of
    silently breaking the join."""
    probe = ('Задание "1"\n\tс \\ и ё', "", "Ответ\u2028 </script>", "Грамотность", "0: нет\n\n1: да")
    slow = JudgeItem(instruction=probe[0], reference_answer=probe[1], answer=probe[2], criteria_name=probe[3],
                     rubrics=probe[4]).key
    return _content_keys([pd.Series([t], dtype=object) for t in probe]) == [slow]


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
    counted; with `strict` any such row is a ValueError instead.

    The checks run column-wise (`_screen`); only the rows a check flags are read one by one
    (`_parse_row`), which names what is wrong with them exactly as a row-by-row reader would."""
    src = _read_columns(source, keep)
    has_aggregate = "criteria_score" in src.table.columns
    _require_columns(src.name, [*src.table.columns, *(["annotations"] if src.annotations is not None else [])],
                     src.problems)
    n = len(src.where)
    table = src.table.assign(**{c: None for c in OPTIONAL if c not in src.table.columns and c != "annotations"})
    rows = _parse_rows(src, table, n, has_aggregate)
    models = table["model_id"].to_numpy(dtype=object)
    _exclude_duplicates(rows, models, src.where)
    skipped = src.problems + rows.skipped
    _report(src.name, skipped, rows.excluded, strict)
    frame = _expert_frame(src.name, table, rows, keep, ood_tasks)
    return ExpertData(frame=frame, annotations=rows.per_expert, skipped=skipped, source=src.name,
                      excluded={reason: [where for _, where, _ in found] for reason, found in rows.excluded.items()})


def _require_columns(name: str, columns: Sequence[str], skipped: list[str]) -> None:
    missing = [c for c in REQUIRED if c not in columns]
    if "criteria_score" not in columns and "annotations" not in columns:
        missing.append("criteria_score (or annotations)")
    if missing:
        unreadable = f" ({len(skipped)} unreadable row(s), first {skipped[0]})" if skipped else ""
        raise ValueError(f"{name}: missing column(s) {', '.join(missing)}{unreadable}")


@dataclass
class _Rows:
    """The usable rows: input positions (ascending), content keys, aggregates (NaN: not
    applicable), per-expert scores (n_kept, k) NaN-padded; the skipped rows' messages; the excluded
    rows' (position, where, message) by reason; each rubric's scale."""

    kept: np.ndarray
    keys: list[str]
    expert: np.ndarray
    per_expert: np.ndarray
    skipped: list[str] = field(default_factory=list)
    excluded: dict[str, list[tuple[int, str, str]]] = field(default_factory=dict)
    scales: dict[str, Scale | None] = field(default_factory=dict)

    def exclude(self, reason: str, position: int, where: str, message: str) -> None:
        self.excluded.setdefault(reason, []).append((position, where, f"{where}: {message}"))

    def keep_only(self, rows: np.ndarray) -> None:
        """Keep these of the usable rows (indices into `kept`)."""
        self.kept, self.expert, self.per_expert = self.kept[rows], self.expert[rows], self.per_expert[rows]
        self.keys = [self.keys[r] for r in rows.tolist()]


def _parse_rows(src: _Source, table: pd.DataFrame, n: int, has_aggregate: bool) -> _Rows:
    """Every row's key and scores. Column-wise checks flag the rows that may be unreadable (a bad
    text, a missing field, a score that is not a number) or unusable (not finite, off the
    rubric's scale); only those are parsed one by one (`_parse_row`), and skipped or excluded with
    their reason. The others' keys and scores come from the columns."""
    scales: dict[str, Scale | None] = {}
    matrix, suspect = _annotation_scores(src.annotations, n)
    aggregate, bad_aggregate = _aggregates(table, has_aggregate, matrix)
    suspect |= bad_aggregate | _key_suspects(table)
    if not src.checked:
        suspect |= _text_suspects(table, n)
    suspect |= _scale_suspects(table["rubrics"], scales, aggregate, matrix)
    clean = np.flatnonzero(~suspect)
    keys = _clean_keys(table, clean)
    positions, extra_keys, extra_expert, extra_scores = [], [], [], []
    rows = _Rows(kept=clean, keys=keys, expert=aggregate[clean], per_expert=matrix[clean], scales=scales)
    for i in np.flatnonzero(suspect).tolist():
        parsed = _parse_row(rows, src, table, i, has_aggregate)
        if parsed is not None:
            positions.append(i)
            extra_keys.append(parsed[0])
            extra_expert.append(parsed[1])
            extra_scores.append(parsed[2])
    if positions:
        _merge(rows, positions, extra_keys, extra_expert, extra_scores)
    return rows


def _merge(rows: _Rows, positions: list[int], keys: list[str], expert: list[float],
           scores: list[list[float]]) -> None:
    """Add the usable rows parsed one by one, keeping the input order."""
    width = max(rows.per_expert.shape[1], *(len(s) for s in scores))
    extra = np.full((len(scores), width), np.nan)
    for r, s in enumerate(scores):
        extra[r, : len(s)] = s
    wide = np.full((len(rows.kept), width), np.nan)
    wide[:, : rows.per_expert.shape[1]] = rows.per_expert
    kept = np.concatenate([rows.kept, np.asarray(positions, dtype=rows.kept.dtype)])
    order = np.argsort(kept, kind="stable")
    all_keys = rows.keys + keys
    rows.kept = kept[order]
    rows.keys = [all_keys[o] for o in order.tolist()]
    rows.expert = np.concatenate([rows.expert, np.asarray(expert, dtype=float)])[order]
    rows.per_expert = np.vstack([wide, extra])[order]


def _cell(table: pd.DataFrame, column: str, i: int) -> Any:
    """One cell as the row-by-row readers see it: a Python value, a missing one (NaN, pd.NA) None."""
    value = table[column].iat[i]
    if isinstance(value, np.generic):  # as the row readers give it: a Python number (named as `inf`, not `np.float64(inf)`)
        value = value.item()
    return None if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)) else value


def _parse_row(rows: _Rows, src: _Source, table: pd.DataFrame, i: int,
               has_aggregate: bool) -> tuple[str, float, list[float]] | None:
    """Row i's (key, aggregate, per-expert scores), or None when it is skipped or excluded (recorded
    in `rows` with what is wrong)."""
    where = src.where[i]
    texts = [_cell(table, k, i) for k in ("instruction", "answer", "criteria_name", "rubrics", "reference_answer",
                                          "model_id")]
    problem = None if src.checked else next(
        (p for p in (bad_text({k: _cell(table, k, i)}) for k in TEXTS) if p is not None), None)
    annotations = src.annotations
    cell = None if annotations is None else (
        annotations[i] if isinstance(annotations, list) else annotations[i].as_py())
    try:
        key = _row_key(*texts, where=where, problem=problem)
        rubrics = texts[3]
        scale = rows.scales[rubrics] if rubrics in rows.scales else rows.scales.setdefault(
            rubrics, parse_scale(rubrics))
        aggregate, scores = _row_scores(cell, _cell(table, "criteria_score", i), where, has_aggregate, scale)
    except RecordError as e:
        rows.skipped.append(str(e))
        return None
    except _Unusable as e:
        rows.exclude(e.reason, i, where, str(e))
        return None
    return key, aggregate, scores


def _row_key(instruction: Any, answer: Any, criterion: Any, rubrics: Any, reference: Any, model: Any, *,
             where: str, problem: str | None) -> str:
    """A row's content key (`JudgeItem.key`); RecordError when a text or the model id is unusable."""
    if problem is not None:
        raise RecordError(f"{where}: {problem}")
    texts = {"instruction": instruction, "answer": answer, "criteria_name": criterion, "rubrics": rubrics}
    key = JudgeItem.from_dict(texts | {"reference_answer": _blank_if_missing(reference)}, where=where).key
    if not isinstance(model, str) or not model.strip():
        raise RecordError(f"{where}: field 'model_id' is empty or not a string")
    return key


def _row_scores(annotations: Any, cell: Any, where: str, has_aggregate: bool,
                scale: Scale | None) -> tuple[float, list[float]]:
    """A row's aggregate (NaN when not applicable) and per-expert scores. RecordError: a score is
    not a number; `_Unusable`: a score is not finite or off the rubric's scale."""
    try:
        scores = _expert_scores(annotations)
    except (ValueError, TypeError, AttributeError) as e:
        raise RecordError(f"{where}: cannot read 'annotations' ({e})") from None
    if has_aggregate:
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
        valid, reason = check_level(s, scale)
        if not valid:
            raise _Unusable(OUT_OF_SCALE, f"'annotations': an expert's {reason}")


def _is_text(column: pd.Series, *, blank_ok: bool = True) -> np.ndarray:
    """Which cells are strings (and, with `blank_ok=False`, not blank), without a call per cell
    when the column holds only strings and missing values."""
    if pd.api.types.is_string_dtype(column.dtype) and pd.api.types.infer_dtype(column, skipna=True) in (
            "string", "empty"):
        text = column.notna().to_numpy().copy()
    else:
        text = np.fromiter((isinstance(v, str) for v in column), dtype=bool, count=len(column))
    if not blank_ok and text.any():
        stripped = column.where(text, "").astype(str).str.strip()
        text = text & (stripped != "").to_numpy()
    return text


def _key_suspects(table: pd.DataFrame) -> np.ndarray:
    """Rows whose key cannot be made from the columns (a text missing or not a string, a blank
    criterion or rubric, a missing model): `_row_key` names what is wrong."""
    ok = _is_text(table["instruction"]) & _is_text(table["answer"])
    for c in ("criteria_name", "rubrics", "model_id"):
        ok &= _is_text(table[c], blank_ok=False)
    reference = table["reference_answer"]
    ok = ok & (_is_text(reference) | reference.isna().to_numpy())
    return ~ok


def _text_suspects(table: pd.DataFrame, n: int) -> np.ndarray:
    """Rows that may hold a text `bad_text` refuses (NUL, a lone surrogate) or a value that is not
    text: each distinct text is screened once, all of a column's in one C-speed search."""
    suspect = np.zeros(n, dtype=bool)
    for k in TEXTS:
        column = table[k]
        try:
            uniques = pd.unique(column).tolist()
        except TypeError:  # unhashable cells (lists): look at every row
            suspect[:] = True
            continue
        texts = [u for u in uniques if isinstance(u, str)]
        odd = [u for u in uniques if not isinstance(u, str) and not pd.isna(u)]
        if text_problem("".join(texts)) is None and not odd:
            continue
        bad = [u for u in texts if text_problem(u) is not None] + odd
        suspect |= column.isin(bad).to_numpy()
    return suspect


def _clean_keys(table: pd.DataFrame, rows: np.ndarray) -> list[str]:
    """The content keys of rows whose texts are all strings."""
    columns = [table[c].iloc[rows] for c in ("instruction", "reference_answer", "answer", "criteria_name", "rubrics")]
    columns[1] = columns[1].astype(object).where(columns[1].notna(), "")
    if len(rows) == 0:
        return []
    if _keys_match_judge_item():
        return _content_keys(columns)
    return [JudgeItem(instruction=i, reference_answer=r, answer=a, criteria_name=c, rubrics=b).key
            for i, r, a, c, b in zip(*columns, strict=True)]


def _annotation_scores(annotations: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, k) per-expert scores, NaN-padded, without -1s; and the rows to read one by one (a score
    that is not a number or not finite). Arrow lists of numbers or of `{score}` structs are read
    column-wise; other cells (JSON text, mixed types) by `_expert_scores`."""
    suspect = np.zeros(n, dtype=bool)
    if annotations is None:
        return np.full((n, 1), np.nan), suspect
    flat = _arrow_scores(annotations)
    if flat is None:
        cells = annotations if isinstance(annotations, list) else annotations.to_pylist()
        per_row: list[list[float]] = []
        for i, cell in enumerate(cells):
            try:
                per_row.append(_expert_scores(cell))
            except (ValueError, TypeError, AttributeError, _Unusable):
                suspect[i] = True
                per_row.append([])
        values = np.asarray([s for row in per_row for s in row], dtype=float)
        parents = np.repeat(np.arange(n), [len(row) for row in per_row])
    else:
        values, parents = flat
    used = ~np.isnan(values) & (values != NOT_APPLICABLE)
    suspect[parents[used & ~np.isfinite(values)]] = True
    values, parents = values[used], parents[used]
    position = np.arange(len(parents)) - np.searchsorted(parents, parents)
    matrix = np.full((n, max(int(position.max()) + 1 if len(position) else 0, 1)), np.nan)
    matrix[parents, position] = values
    return matrix, suspect


def _arrow_scores(annotations: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """(every expert score as float, NaN when empty; its row) from an Arrow list column, or None
    when the column is not a list of numbers or of structs with a numeric `score`."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(annotations, list):
        try:
            annotations = pa.array(annotations, from_pandas=True)
        except (pa.ArrowException, TypeError, ValueError):
            return None
    if isinstance(annotations, pa.ChunkedArray):
        annotations = annotations.combine_chunks()
    if not (pa.types.is_list(annotations.type) or pa.types.is_large_list(annotations.type)):
        return None
    flat = pc.list_flatten(annotations)
    parents = pc.list_parent_indices(annotations).to_numpy()
    if pa.types.is_struct(flat.type):
        if flat.type.get_field_index("score") < 0:
            return None
        flat = pc.struct_field(flat, "score")
    if not (pa.types.is_integer(flat.type) or pa.types.is_floating(flat.type) or pa.types.is_null(flat.type)):
        return None
    return pc.cast(flat, pa.float64()).to_numpy(zero_copy_only=False).astype(float), parents.astype(np.int64)


def _aggregates(table: pd.DataFrame, has_aggregate: bool, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's aggregate (`criteria_score`, else the experts' mean; NaN: not applicable) and the
    rows whose aggregate is not a number or not finite."""
    n = len(matrix)
    suspect = np.zeros(n, dtype=bool)
    if not has_aggregate:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a row without experts: NaN
            values = np.nanmean(matrix, axis=1)
    elif pd.api.types.is_numeric_dtype(table["criteria_score"].dtype):
        values = table["criteria_score"].to_numpy(dtype=float, na_value=np.nan)
        suspect |= np.isinf(values)
    else:
        values = np.full(n, np.nan)
        for i, cell in enumerate(table["criteria_score"].tolist()):
            try:
                number = _score_cell(cell)
            except (ValueError, TypeError):
                suspect[i] = True
                continue
            if number is not None:
                values[i] = number
                suspect[i] = not math.isfinite(number)
    values = values.copy()
    values[values == NOT_APPLICABLE] = np.nan
    return values, suspect


def _scale_suspects(rubrics: pd.Series, scales: dict[str, Scale | None], aggregate: np.ndarray,
                    matrix: np.ndarray) -> np.ndarray:
    """Rows whose aggregate is outside their rubric's scale or whose expert scores are not its
    levels (an interval scale: not whole numbers), by distinct scale; fills `scales`."""
    suspect = np.zeros(len(aggregate), dtype=bool)
    text = np.flatnonzero(_is_text(rubrics))
    codes, uniques = pd.factorize(rubrics.iloc[text])
    for r in uniques:
        scales.setdefault(r, parse_scale(r))
    distinct: dict[Scale, list[int]] = {}
    for code, r in enumerate(uniques):
        scale = scales[r]
        if scale is not None:
            distinct.setdefault(scale, []).append(code)
    for scale, members in distinct.items():
        rows = text[np.isin(codes, members)]
        off = (aggregate[rows] < scale.min) | (aggregate[rows] > scale.max)
        scores = matrix[rows]
        wrong = ~np.isin(scores, scale.levels) if scale.levels else (
            (scores < scale.min) | (scores > scale.max) | (scores != np.round(scores)))
        off |= (wrong & ~np.isnan(scores)).any(axis=1)
        suspect[rows[off]] = True
    return suspect


def _exclude_duplicates(rows: _Rows, models: np.ndarray, row_names: list[str]) -> None:
    """Rows with the same texts and LLM are one judgement: an exact repeat (same scores) is
    excluded and the first row kept; repeats with other scores are all excluded — which one the
    experts meant cannot be known, and using both would count the judgement twice."""
    pairs = pd.DataFrame({"key": rows.keys, "model": models[rows.kept]})
    repeated = np.flatnonzero(pairs.duplicated(keep=False).to_numpy())  # in C: few rows are repeated
    first: dict[tuple[str, str], list[int]] = {}
    for r in repeated.tolist():
        first.setdefault((rows.keys[r], models[rows.kept[r]]), []).append(r)
    drop: set[int] = set()
    for group in (g for g in first.values() if len(g) > 1):
        signature = {(None if math.isnan(rows.expert[r]) else float(rows.expert[r]),
                      tuple(s for s in rows.per_expert[r].tolist() if not math.isnan(s))) for r in group}
        head = row_names[rows.kept[group[0]]]
        if len(signature) == 1:
            drop.update(group[1:])
            for r in group[1:]:
                i = int(rows.kept[r])
                rows.exclude(DUPLICATE, i, row_names[i], f"duplicate of {head} (same texts, LLM and scores)")
            continue
        drop.update(group)
        left_out = "both left out" if len(group) == 2 else f"all {len(group)} left out"
        rows.exclude(CONFLICT, int(rows.kept[group[0]]), head,
                     f"conflicting duplicates (same texts and LLM, other scores); {left_out}")
        for r in group[1:]:
            i = int(rows.kept[r])
            rows.exclude(CONFLICT, i, row_names[i],
                         f"conflicting duplicate of {head} (same texts and LLM, other scores); {left_out}")
    if drop:
        rows.keep_only(np.asarray([r for r in range(len(rows.kept)) if r not in drop], dtype=np.int64))
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


def _expert_frame(name: str, table: pd.DataFrame, rows: _Rows, keep: Sequence[str],
                  ood_tasks: Sequence[str]) -> pd.DataFrame:
    """`ExpertData.frame` of the usable rows (see `ExpertData`)."""

    def pick(c: str) -> pd.Series:
        column = table[c].iloc[rows.kept].reset_index(drop=True)
        return column.astype(object).where(column.notna(), "") if column.isna().any() else column

    frame = pd.DataFrame({
        "key": rows.keys,
        "model_id": pick("model_id"),
        "task_type": pick("task_type").astype(str),
        "criteria_name": pick("criteria_name"),
        "instruction": pick("instruction"),
        "reference_answer": pick("reference_answer"),
        "answer": pick("answer"),
        "rubrics": pick("rubrics"),
        "expert": rows.expert,
    })
    for c in keep:
        if c not in frame.columns:
            if c not in table.columns:
                raise ValueError(f"{name}: no column {c!r} to keep (it has {', '.join(map(str, table.columns))})")
            frame[c] = pick(c)
    frame["ood"] = frame["task_type"].isin(set(ood_tasks)).to_numpy()
    frame["answer_id"] = frame.groupby(["model_id", "instruction", "answer"], sort=False).ngroup().to_numpy()
    codes, rubrics = pd.factorize(frame["rubrics"])
    scales = [rows.scales.get(r) for r in rubrics.tolist()]
    frame["scale_min"] = np.array([math.nan if s is None else s.min for s in scales], dtype=float)[codes]
    frame["scale_max"] = np.array([math.nan if s is None else s.max for s in scales], dtype=float)[codes]
    frame["group"] = _groups(table["criteria_group"].iloc[rows.kept], frame["criteria_name"])
    return frame


def _groups(labels: pd.Series, criteria: pd.Series) -> np.ndarray:
    """Each row's criterion group: its `criteria_group` label, else (none, or "") the taxonomy's,
    else unknown. Each distinct label and criterion is looked at once, not each row."""
    codes, uniques = pd.factorize(labels)  # a missing label: code -1, the None appended below
    named = np.array([canonical_group(g) if g != "" else None for g in uniques.tolist()] + [None], dtype=object)
    out = named[codes]
    unlabelled = np.flatnonzero(pd.isna(out))
    if unlabelled.size:
        c_codes, names = pd.factorize(criteria.iloc[unlabelled])
        looked_up = criterion_groups(names.tolist())
        out[unlabelled] = np.array([looked_up.get(c, UNKNOWN) for c in names.tolist()], dtype=object)[c_codes]
    return out
