"""Judge scores: where they come from and which one a judge contributes.

Every source ends as a "score frame": one row per judgement with `judge`, `key` (=
`JudgeItem.key`, how scores meet expert rows), `score` (the judge's score: head else text),
`head_score`, `text_score`, `expected_score` (a generative judge's probability-weighted score at
`[RESULT]`, when its engine gave token probabilities) and `error`. Sources:

* a JSONL file of scores (`read_score_jsonl`: a plain JSONL file column-wise by `pyarrow.json`,
  anything else through `pollux.inputs.read_rows` like every input file, with the same rules and
  messages): one object per line with `key` or the POLLUX text columns, plus `score` and optionally
  `head_score`, `text_score`, `expected_score`, `judge`, `error`;
* a pollux run database written by `pollux evaluate` (`scores_from_db`, via
  `pollux.store.read_verdicts`);
* a judge run on the expert data (`scores_from_judge`).

`select_scores` then picks the number a judge contributes: `auto` (its `score`), `head`, `text`,
`head-rounded` (the head score rounded half away from zero: 1.5 → 2, 0.5 → 1, −0.5 → −1, so
a score exactly between two levels is never rounded towards the middle of the scale by the
banker's rule) or `expected` (the G-Eval-style expected score). `parse_score_choices` reads a
comma list of them (`both` = `auto,expected`: a generative judge's greedy score beside its
expected one).
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pollux.inputs import InputError, read_rows
from pollux.metaeval.experts import ExpertData, MetaEvalWarning, _number
from pollux.records import JudgeItem

SCORE_CHOICES = ("auto", "head", "text", "head-rounded", "expected")
BOTH = ("auto", "expected")  # what `both` stands for: the greedy score beside the expected one
NUMBERS = ("score", "head_score", "text_score", "expected_score")
COLUMNS = ("judge", "key", *NUMBERS, "error")


def round_half_away(x: np.ndarray | float) -> np.ndarray:
    """Round half away from zero (numpy's `round` rounds half to even)."""
    a = np.asarray(x, dtype=float)
    return np.sign(a) * np.floor(np.abs(a) + 0.5)


def _frame(rows: dict[str, list[Any]]) -> pd.DataFrame:
    f = pd.DataFrame({c: rows.get(c, [None] * len(rows["key"])) for c in COLUMNS})
    for c in NUMBERS:
        f[c] = pd.to_numeric(f[c], errors="coerce").astype(float)
    f["judge"] = f["judge"].astype(str)
    f["error"] = f["error"].astype(object).where(f["error"].notna(), None)
    return f


@dataclass
class _ScoreLines:
    """A score file column-wise: `table` (one row per readable line), each row's `where`
    (`file:line`), the unreadable lines' messages, the file's line count, and `row(i)`: row i as
    the object its line holds (for the few rows read one by one)."""

    table: pd.DataFrame
    where: list[str]
    problems: list[str]
    total: int
    row: Callable[[int], dict[str, Any]]


def _score_lines(path: Path, by_content: bool) -> _ScoreLines:
    """The file's lines: a plain JSONL file by pyarrow's JSON reader (`_arrow_lines`), anything
    else — or a JSONL file that reader would read differently from `read_rows` — by `read_rows`."""
    fast = _arrow_lines(path, by_content)
    if fast is not None:
        return fast
    try:
        read = read_rows(path)
    except InputError as e:
        raise ValueError(str(e)) from None
    names = list(dict.fromkeys(k for row in read.rows for k in row.data))
    table = pd.DataFrame({c: pd.Series([row.data.get(c) for row in read.rows], dtype=object) for c in names},
                         index=pd.RangeIndex(len(read.rows)))
    return _ScoreLines(table, [row.where for row in read.rows], [str(p) for p in read.problems],
                       len(read.rows) + len(read.problems), lambda i: read.rows[i].data)


_ESCAPED_BAD_TEXT = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")


def _arrow_lines(path: Path, by_content: bool) -> _ScoreLines | None:
    """A JSONL file read by `pyarrow.json` (in C, column-wise), or None when `read_rows` must read
    it because the result could differ: not `.jsonl`, a byte order mark, CR line ends, blank or
    broken lines, bytes that are not UTF-8, text `bad_text` refuses (NUL, lone surrogates, also as
    `\\u` escapes), values pyarrow would read as dates, lines without a `key` when joining by
    content. Any of these costs only the speed, never a message."""
    import pyarrow as pa
    import pyarrow.json as pj

    if path.suffix.lower() not in (".jsonl", ".ndjson") or not path.is_file():
        return None
    raw = path.read_bytes()
    lines = raw.count(b"\n") + (0 if raw.endswith(b"\n") else 1)
    if (not raw.strip() or raw.startswith(b"\xef\xbb\xbf") or b"\r" in raw or b"\x00" in raw
            or _ESCAPED_BAD_TEXT.search(raw) is not None or b"\n\n" in raw):
        return None
    try:
        raw.decode("utf-8")
        table = pj.read_json(pa.py_buffer(raw))
    except (UnicodeDecodeError, pa.ArrowException):
        return None
    if table.num_rows != lines or any(pa.types.is_temporal(f.type) for f in table.schema):
        return None
    frame = table.to_pandas()
    if by_content and ("key" not in frame.columns or frame["key"].isna().any()):
        return None
    name = path.name
    where = [f"{name}:{i + 1}" for i in range(lines)]
    return _ScoreLines(frame, where, [], lines, lambda i: table.slice(i, 1).to_pylist()[0])


def read_score_jsonl(path: str | Path, judge: str | None = None, *, on: Sequence[str] = (),
                     experts: ExpertData | None = None) -> pd.DataFrame:
    """Read a file of judge scores (JSONL; CSV and Parquet too, by `pollux.inputs.read_rows`).
    `judge` names the judge (else each row's `judge` field, else the file's stem). A row that
    cannot be read is skipped with a warning naming it (`file:line: what is wrong`).

    Lines meet expert rows by content key (`key`, else the POLLUX text columns) or, with `on`
    (e.g. `("id",)` or `("instruction_id", "model_id", "criteria_name")`), by those columns'
    values, looked up in `experts` (loaded with `keep=on`). With `experts`, lines that cannot be
    joined are ONE error with the counts of each reason — not a warning per line, and not a
    table silently computed on part of the file.

    The lines are read and checked column-wise (a JSONL file by pyarrow); only lines that fail a
    check are looked at one by one, to name what is wrong. The same as
    `ScoreFile.read(path, on=on).join(judge, experts)`: reading needs no expert data, so a caller
    can read score files while the experts load."""
    if on and experts is None:  # before reading the file: the call cannot succeed
        raise ValueError("joining scores on columns needs the expert data (experts=...)")
    return ScoreFile.read(path, on=on).join(judge, experts)


@dataclass
class ScoreFile:
    """A score file's lines, read (`read`) but not yet joined to the expert rows (`join`)."""

    path: Path
    on: tuple[str, ...]
    lines: _ScoreLines

    @classmethod
    def read(cls, path: str | Path, *, on: Sequence[str] = ()) -> ScoreFile:
        return cls(Path(path), tuple(on), _score_lines(Path(path), by_content=not on))

    def join(self, judge: str | None = None, experts: ExpertData | None = None) -> pd.DataFrame:
        """The scores as a frame (`read_score_jsonl`), joined `on` columns of `experts` or by content."""
        p, on, lines = self.path, self.on, self.lines
        if on and experts is None:
            raise ValueError("joining scores on columns needs the expert data (experts=...)")
        errors: dict[int, str] = {}
        if on and experts is not None:
            keys, unjoined = _join_on(lines, on, experts)
        else:
            keys, unjoined = _content_keys(lines, errors), {}
        values = {c: _numbers(lines, c, errors) for c in NUMBERS}
        good = pd.notna(keys)
        good[list(errors)] = False
        joined = keys[good].tolist()
        if experts is not None and not on and joined and not experts.frame["key"].isin(set(joined)).any():
            unjoined["its content (instruction, reference answer, answer, criterion, rubric) matches no expert row"] = \
                joined
        if unjoined:
            raise ValueError(_unjoined_message(p, unjoined, lines.total, on))
        for msg in lines.problems + [errors[i] for i in sorted(errors)]:
            warnings.warn(f"skipped {msg}", MetaEvalWarning, stacklevel=3)
        return _score_frame(lines, keys, values, good, judge or p.stem, named=judge is not None)


def _present(value: Any) -> bool:
    """Whether a cell holds something: not None / NaN / "" / 0 (how `obj.get(c) or default` reads)."""
    return value is not None and value is not pd.NA and not (isinstance(value, float) and math.isnan(value)) \
        and bool(value)


def _content_keys(lines: _ScoreLines, errors: dict[int, str]) -> np.ndarray:
    """Each line's `key` (else `item_key`, else the key of its POLLUX texts); a line whose texts
    make no key gets an error in `errors`."""
    table = lines.table
    n = len(lines.where)
    keys = table["key"].tolist() if "key" in table.columns else [None] * n
    items = table["item_key"].tolist() if "item_key" in table.columns else [None] * n
    out = np.empty(n, dtype=object)
    for i, (key, item) in enumerate(zip(keys, items, strict=True)):
        key = key if _present(key) else item
        if not _present(key):
            try:
                key = JudgeItem.from_dict(lines.row(i), where=lines.where[i]).key
            except (ValueError, TypeError) as e:
                errors[i] = _where(lines.where[i], e)
                continue
        out[i] = str(key)
    return out


def _where(where: str, error: Exception) -> str:
    return str(error) if str(error).startswith(where) else f"{where}: {error}"


def _numbers(lines: _ScoreLines, column: str, errors: dict[int, str]) -> np.ndarray:
    """A score column as floats (NaN when empty), column-wise when it holds numbers; a cell that
    is not a number is an error of its line (the line's first, as a row-by-row reader names it)."""
    table = lines.table
    n = len(lines.where)
    if column not in table.columns:
        return np.full(n, np.nan)
    cells = table[column]
    if pd.api.types.is_numeric_dtype(cells.dtype):
        return cells.to_numpy(dtype=float, na_value=np.nan)
    out = np.full(n, np.nan)
    for i, cell in enumerate(cells.tolist()):
        try:
            out[i] = _number(None if cell is pd.NA else cell)
        except (ValueError, TypeError) as e:
            errors.setdefault(i, _where(lines.where[i], e))
    return out


def _score_frame(lines: _ScoreLines, keys: np.ndarray, values: dict[str, np.ndarray], good: np.ndarray,
                 default_judge: str, named: bool) -> pd.DataFrame:
    """The score frame of the good lines (`COLUMNS`); a missing `score` is head else text."""
    table = lines.table
    rows = np.flatnonzero(good)

    def cells(column: str) -> list[Any]:
        return table[column].iloc[rows].tolist() if column in table.columns else [None] * len(rows)

    score = values["score"][rows]
    score = np.where(np.isnan(score), values["head_score"][rows], score)
    score = np.where(np.isnan(score), values["text_score"][rows], score)
    judges = [default_judge] * len(rows) if named else [j if _present(j) else default_judge for j in cells("judge")]
    return _frame({
        "judge": judges,
        "key": [str(k) for k in keys[rows].tolist()],
        "score": score.tolist(),
        "head_score": values["head_score"][rows].tolist(),
        "text_score": values["text_score"][rows].tolist(),
        "expected_score": values["expected_score"][rows].tolist(),
        "error": [e if _present(e) else None for e in cells("error")],
    })


def _unjoined_message(path: Path, unjoined: dict[str, list[str]], total: int, on: Sequence[str]) -> str:
    """One error for every line that cannot be joined: the count and first line of each reason."""
    n_bad = sum(len(v) for v in unjoined.values())
    how = f"on {', '.join(on)}" if on else "by content"
    parts = "; ".join(f"{len(v)} {reason} (first: {v[0]})" for reason, v in unjoined.items())
    return f"{path}: {n_bad} of {total} line(s) cannot be joined to the expert data {how}: {parts}"


def _cell_text(value: Any) -> str | None:
    """A join cell as text (1 and "1" meet, as do 1.0 and 1); None when empty."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


def _cell_texts(column: pd.Series) -> pd.Series:
    """`_cell_text` of a whole column: in C for a column of integers (the usual `id`)."""
    if pd.api.types.is_integer_dtype(column.dtype) and not column.isna().any():
        return pd.Series(column.astype(str).to_numpy(dtype=object), dtype=object)
    return pd.Series([_cell_text(v) for v in column.tolist()], dtype=object)


def _join_on(lines: _ScoreLines, on: Sequence[str], experts: ExpertData) -> tuple[np.ndarray, dict[str, list[str]]]:
    """Each line's content key, looked up by the values of its `on` columns (None where it cannot
    be joined), and the lines that cannot be joined by reason, in the file's order."""
    missing = [c for c in on if c not in experts.frame.columns]
    if missing:
        raise ValueError(f"the expert data has no column {', '.join(missing)} to join scores on "
                         f"(it has {', '.join(experts.frame.columns)})")
    n = len(lines.where)
    cells = pd.DataFrame({c: _cell_texts(lines.table[c]) if c in lines.table.columns else
                          pd.Series([None] * n, dtype=object) for c in on})
    known = pd.DataFrame({c: _cell_texts(experts.frame[c]) for c in on}).assign(key=experts.frame["key"].to_numpy())
    lookup = known.dropna(subset=list(on)).groupby(list(on), sort=False)["key"].agg(["first", "nunique"])
    found = cells.merge(lookup, left_on=list(on), right_index=True, how="left")
    empty = cells.isna().any(axis=1).to_numpy()
    matches = found["nunique"].fillna(0).to_numpy()
    keys = found["first"].to_numpy(dtype=object).copy()
    keys[empty | (matches != 1)] = None
    unjoined: dict[str, list[str]] = {}
    for i in np.flatnonzero(pd.isna(keys)).tolist():
        if empty[i]:
            reason = f"have no value in {', '.join(c for c in on if cells[c].iat[i] is None)}"
        elif matches[i] == 0:
            reason = "match no expert row"
        else:
            reason = f"match {int(matches[i])} different judgements (the columns do not identify one row)"
        unjoined.setdefault(reason, []).append(lines.where[i])
    return keys, unjoined


def scores_from_frame(df: pd.DataFrame, judge: str | None = None) -> pd.DataFrame:
    """Normalise a DataFrame of verdicts (e.g. `pollux.store.read_verdicts`) to a score frame.
    Accepts `item_key` for `key`; a missing `score` is head else text."""
    f = df.rename(columns={"item_key": "key"}).copy()
    if "key" not in f.columns:
        raise ValueError("the scores have no 'key' (or 'item_key') column")
    for c in NUMBERS:
        f[c] = pd.to_numeric(f[c], errors="coerce").astype(float) if c in f.columns else np.nan
    f["score"] = f["score"].fillna(f["head_score"]).fillna(f["text_score"])
    if judge is not None:
        f["judge"] = judge
    elif "judge" not in f.columns:
        raise ValueError("the scores have no 'judge' column and no judge name was given")
    if "error" not in f.columns:
        f["error"] = None
    f["error"] = f["error"].astype(object).where(f["error"].notna() & (f["error"] != ""), None)
    # `valid` is not read: the scale check is redone on the score actually selected.
    return _frame({c: f[c].tolist() for c in COLUMNS})


def scores_from_db(path: str | Path, judge: str | None = None) -> pd.DataFrame:
    """Scores from a pollux run database. With `judge`, keep that judge's verdicts — or, when the
    database holds a single judge, give it that name."""
    from pollux.store import read_verdicts

    df = read_verdicts(str(path))
    if judge is not None and "judge" in df.columns:
        names = sorted(df["judge"].astype(str).unique())
        if judge in names:
            df = df[df["judge"].astype(str) == judge]
        elif len(names) > 1:
            raise ValueError(f"{path}: no judge named {judge!r} (it holds {', '.join(names)})")
    return scores_from_frame(df, judge=judge)


def scores_from_judge(
    judge: Any,
    experts: ExpertData,
    *,
    options: Any = None,
    name: str | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    executor: Any = None,
) -> pd.DataFrame:
    """Run `judge` once per distinct judgement of the expert data. `judge` is a loaded
    `pollux.judge.Judge`, or a spec (`openai:MODEL`, `vllm:PATH`, a checkpoint folder) loaded here
    with `options` through the engine registry (`Judge.from_spec`). With `executor` (a
    `pollux.executor.ExecutorOptions`, e.g. `ray="auto"`) the spec is loaded by each worker instead
    (`pollux.executor.judging`) and this process never loads it."""
    if executor is not None:
        return _scores_on_executor(judge, experts, options, name, on_progress, executor)
    if isinstance(judge, str):
        from pollux.judge import Judge

        judge = Judge.from_spec(judge, options)
    elif options is not None:
        raise ValueError("options apply to a judge spec, not to a loaded judge")
    first = experts.frame.drop_duplicates("key")
    items = experts.items(first.index.tolist())
    total = len(items)
    done = 0

    def progress(_i: int, _v: Any) -> None:
        nonlocal done
        done += 1
        if on_progress is not None:
            on_progress(done, total)

    verdicts = judge.judge_many(items, on_verdict=progress)
    return _verdict_frame(name or judge.name, first, verdicts)


def _verdict_frame(judge: str, first: pd.DataFrame, verdicts: list[Any]) -> pd.DataFrame:
    """A score frame: one row per distinct judgement (`first`), its verdict's scores."""
    return _frame({
        "judge": [judge] * len(verdicts),
        "key": first["key"].tolist(),
        "score": [v.score for v in verdicts],
        "head_score": [v.head_score for v in verdicts],
        "text_score": [v.text_score for v in verdicts],
        "expected_score": [v.expected_score for v in verdicts],
        "error": [v.error for v in verdicts],
    })


def _scores_on_executor(spec: Any, experts: ExpertData, options: Any, name: str | None,
                        on_progress: Callable[[int, int], None] | None, executor: Any) -> pd.DataFrame:
    """`scores_from_judge` on `pollux.executor.map_batches`: the judgements of one answer in one batch."""
    from pollux.executor import map_batches
    from pollux.executor.judging import (
        JudgeFactory,
        JudgingWorker,
        answer_rows,
        answers_per_batch,
        verdict_of,
    )

    if not isinstance(spec, str):
        raise ValueError("judging on the executor takes a judge spec (each worker loads it), not a loaded judge")
    first = experts.frame.drop_duplicates("key")
    items = experts.items(first.index.tolist())
    answers: dict[tuple[str, str, str], list[tuple[str, Any]]] = {}
    for position, item in enumerate(items):
        answers.setdefault((item.instruction, item.reference_answer, item.answer), []).append((str(position), item))
    rows = answer_rows(answers.values())
    batched = replace(executor, batch_size=answers_per_batch(rows, 64))
    verdicts: dict[int, Any] = {}
    judge_name = name
    for batch in map_batches(rows, JudgingWorker(JudgeFactory(spec, options or {})), batched):
        for row in batch:
            judge_name = judge_name or row.get("config", {}).get("judge")
            verdicts.setdefault(int(row["key"]), verdict_of(row))
        if on_progress is not None:
            on_progress(len(verdicts), len(items))
    return _verdict_frame(judge_name or spec, first, [verdicts[i] for i in range(len(items))])


def write_score_jsonl(scores: pd.DataFrame, path: str | Path) -> None:
    """Save a score frame as JSONL (readable by `read_score_jsonl`), e.g. after a judge run."""
    with Path(path).open("w", encoding="utf-8") as fh:
        for r in scores.itertuples(index=False):
            obj = {c: getattr(r, c) for c in COLUMNS}
            for c in NUMBERS:
                obj[c] = None if obj[c] is None or math.isnan(obj[c]) else float(obj[c])
            fh.write(json.dumps(obj, ensure_ascii=False) + "\n")


def parse_score_choices(value: str | Sequence[str]) -> tuple[str, ...]:
    """`auto`, `expected,auto`, `both` (= auto,expected) or a sequence of choices → the choices,
    each checked against `SCORE_CHOICES` (a typo is an error, not an empty column)."""
    parts = [p.strip() for p in value.split(",")] if isinstance(value, str) else [str(p).strip() for p in value]
    out: list[str] = []
    for p in parts:
        out += list(BOTH) if p == "both" else [p] if p else []
    unknown = [p for p in out if p not in SCORE_CHOICES]
    if unknown or not out:
        raise ValueError(f"unknown score {', '.join(unknown) or repr(value)}: expected one or more of "
                         f"{', '.join(SCORE_CHOICES)} (comma list) or both")
    return tuple(dict.fromkeys(out))


def select_scores(scores: pd.DataFrame, which: str) -> pd.Series:
    """The number each judgement contributes (NaN where there is none or the judge reported an
    error). `which` is one of `SCORE_CHOICES`; asking for the head (or text) score of a judge
    that has none at all while it does have scores is an error, not a table of NaNs."""
    if which not in SCORE_CHOICES:
        raise ValueError(f"unknown score {which!r}: expected one of {', '.join(SCORE_CHOICES)}")
    if which == "auto":
        values = scores["score"]
    elif which == "text":
        values = scores["text_score"]
    elif which == "expected":
        values = scores["expected_score"]
    else:
        values = scores["head_score"]
        if which == "head-rounded":
            values = pd.Series(round_half_away(values.to_numpy()), index=scores.index)
    values = values.astype(float).copy()
    if which != "auto" and values.isna().all() and scores["score"].notna().any():
        judges = ", ".join(sorted(scores["judge"].astype(str).unique()))
        wanted = {"text": "text_score", "expected": "expected_score"}.get(which, "head_score")
        raise ValueError(f"judge {judges}: no {wanted} in its scores; choose another --score")
    values[scores["error"].notna().to_numpy()] = np.nan
    return values
