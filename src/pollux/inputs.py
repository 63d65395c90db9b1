"""Input files: JSONL, CSV or Parquet → rows with their line (row) numbers, and clear per-line errors.

Users bring answer files made by hand, by scripts, or downloaded as POLLUX dataset / POLLUX-instructions
parquet. One broken line must never cost the other lines' results, and the user must be able to find the
broken line, so readers never raise on a bad row: they return the good rows together with an
`InputProblem` per bad one, naming the file, the line and what is wrong. `--strict` callers turn the
first problem into an error themselves.

`read_rows` is the one reader of pollux — answer files (`evaluate`), expert and score files
(`metaeval`), training data — so every file gets one policy: a UTF-8 byte order mark is ignored,
CRLF line ends are read as LF, a line that is not UTF-8 or not JSON fails alone, and a row holding
a string no tokenizer or database accepts (a lone surrogate such as JSON's `"\ud800"`, a NUL) in
any column, nested value or key fails alone (`bad_text`). Lines are the physical line (JSONL, CSV:
a row spanning lines is named by its first), the row number (Parquet) or the element number (a
`.json` file holding one JSON array).

What a row must contain is checked here too (`check_row`): `instruction` and `answer` as non-empty
strings, an optional string `reference_answer`, no field longer than `max_field_chars`. Which criteria
a row gets is the taxonomy's job (`pollux.taxonomy.resolve_criteria`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pollux.records import text_problem

# A field longer than this is almost certainly a mistake (a whole file pasted into a cell) and would
# blow the judge's context; POLLUX's longest instructions are ~30k characters.
DEFAULT_MAX_FIELD_CHARS = 200_000

FORMATS = ("jsonl", "csv", "parquet")


class InputError(ValueError):
    """An input file cannot be read at all (missing, unknown format), or a row is bad in strict mode."""


@dataclass(frozen=True)
class InputRow:
    """One row of an input file; `line` is the 1-based line (JSONL, CSV) or row (Parquet) number."""

    source: str
    line: int
    data: dict[str, Any]

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


@dataclass(frozen=True)
class InputProblem:
    source: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.message}"


@dataclass
class ReadResult:
    rows: list[InputRow] = field(default_factory=list)
    problems: list[InputProblem] = field(default_factory=list)


def detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise InputError(f"{path}: unknown input format {suffix!r} (expected .jsonl, .csv or .parquet)")


def read_rows(path: str | Path, *, fmt: str | None = None) -> ReadResult:
    """Read every row of `path`; unreadable rows become problems, never exceptions."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise InputError(f"{path}: unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")
    reader = {"jsonl": _read_jsonl, "csv": _read_csv, "parquet": _read_parquet}[fmt]
    if fmt == "jsonl" and path.suffix.lower() == ".json" and _holds_an_array(path):
        reader = _read_json_array
    result = ReadResult()
    for item in reader(path):
        if isinstance(item, InputProblem):
            result.problems.append(item)
        elif (problem := bad_text(item.data)) is not None:
            result.problems.append(InputProblem(item.source, item.line, problem))
        else:
            result.rows.append(item)
    return result


def input_files(spec: str | Path) -> list[Path]:
    """The files a dataset spec names: one file, a folder (every .parquet/.jsonl/.json/.csv file
    under it, e.g. a released dataset's `data/test-0000N-of-0000M.parquet` shards) or a glob
    pattern (`data/test-*.parquet`), in sorted order so row numbers and ids are reproducible."""
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        suffixes = (".parquet", ".pq", ".jsonl", ".ndjson", ".json", ".csv", ".tsv")
        files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in suffixes
                       and not any(part.startswith(".") for part in f.relative_to(path).parts))
        if not files:
            raise InputError(f"{path}: a folder without .parquet, .jsonl, .json or .csv files")
        return files
    if any(c in str(spec) for c in "*?["):
        anchor = Path(path.anchor) if path.is_absolute() else Path()
        pattern = str(path.relative_to(anchor)) if path.is_absolute() else str(spec)
        files = sorted(f for f in anchor.glob(pattern) if f.is_file())
        if not files:
            raise InputError(f"{spec}: no file matches this pattern")
        return files
    raise InputError(f"{path}: no such file or folder")


def read_dataset(spec: str | Path, *, fmt: str | None = None) -> ReadResult:
    """`read_rows` over every file of `input_files(spec)`: rows keep their shard's name and line
    (`test-00001-of-00003.parquet:17`), so a bad row is found in the shard it came from."""
    result = ReadResult()
    for path in input_files(spec):
        part = read_rows(path, fmt=fmt)
        result.rows.extend(part.rows)
        result.problems.extend(part.problems)
    return result


def _holds_an_array(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(64).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"[")


def _read_json_array(path: Path) -> Iterator[InputRow | InputProblem]:
    """A `.json` file holding one array of objects; rows are numbered by element (from 1)."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not valid UTF-8 (byte 0x{e.object[e.start]:02x} at offset {e.start})") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: broken JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    for number, obj in enumerate(data, start=1):
        if isinstance(obj, dict):
            yield InputRow(path.name, number, obj)
        else:
            yield InputProblem(path.name, number, f"expected a JSON object, got {type(obj).__name__}")


def _read_jsonl(path: Path) -> Iterator[InputRow | InputProblem]:
    source = path.name
    # Bytes, not text: a stray non-UTF-8 byte must fail its own line, not the whole file.
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 byte order mark
            try:
                text = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                yield InputProblem(source, number, f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})")
                continue
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                yield InputProblem(source, number, f"broken JSON: {e.msg} at column {e.colno}")
                continue
            if not isinstance(obj, dict):
                yield InputProblem(source, number, f"expected a JSON object, got {type(obj).__name__}")
                continue
            yield InputRow(source, number, obj)


def _read_csv(path: Path) -> Iterator[InputRow | InputProblem]:
    source = path.name
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    # surrogateescape keeps undecodable bytes as lone surrogates, so the row holding them can be named.
    text = raw.decode("utf-8", errors="surrogateescape")
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as e:
        yield InputProblem(source, 1, f"unreadable CSV header: {e}")
        return
    header = [h.strip() for h in header]
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield InputProblem(source, start, f"broken CSV: {e}")
            continue
        if not any(c.strip() for c in cells):
            continue
        bad = [h for h, c in zip(header, cells, strict=False) if _has_surrogates(c)]
        if bad or any(_has_surrogates(c) for c in cells):
            yield InputProblem(source, start, f"not valid UTF-8 (in column {', '.join(bad) or '?'})")
            continue
        if len(cells) != len(header):
            yield InputProblem(source, start, f"expected {len(header)} columns, got {len(cells)}")
            continue
        data: dict[str, Any] = dict(zip(header, cells, strict=True))
        # Structured columns (a list of criteria, a meta dict) arrive as JSON text in CSV.
        for key in ("criteria", "annotations"):
            value = data.get(key)
            if isinstance(value, str) and value.strip().startswith(("[", "{")):
                try:
                    data[key] = json.loads(value)
                except json.JSONDecodeError as e:
                    yield InputProblem(source, start, f"column {key!r}: broken JSON: {e.msg}")
                    break
        else:
            yield InputRow(source, start, data)


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def read_parquet_table(path: Path, columns: Sequence[str] | None = None) -> Any:
    """The `columns` of one Parquet file that it has (every column when None), as a pyarrow Table.

    pollux's one Parquet reader: meta-eval asks for only the ~10 of POLLUX's ~20 columns it uses —
    pyarrow reads just those (column projection) — and keeps them in Arrow memory; `read_rows`
    reads whole rows through `read_parquet_columns`."""
    import pyarrow.parquet as pq

    try:
        wanted = None
        if columns is not None:
            present = set(pq.read_schema(path).names)
            wanted = [c for c in dict.fromkeys(columns) if c in present]
        return pq.read_table(path, columns=wanted)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise InputError(f"{path}: cannot read Parquet: {e}") from None


def read_parquet_columns(path: Path, columns: Sequence[str] | None = None) -> tuple[dict[str, list[Any]], int]:
    """The `columns` of one Parquet file that it has (`read_parquet_table`) as Python lists, NaN
    (how pandas writes a missing value) as None, and the file's row count."""
    import pyarrow as pa

    table = read_parquet_table(path, columns)
    out: dict[str, list[Any]] = {}
    for c in table.column_names:
        values = table.column(c).to_pylist()
        # NaN (pandas' missing value) can only be a top-level value of a float column
        out[c] = [None if v != v else v for v in values] if pa.types.is_floating(table.column(c).type) else values
    return out, table.num_rows


def _read_parquet(path: Path) -> Iterator[InputRow | InputProblem]:
    columns, n_rows = read_parquet_columns(path)
    for i in range(n_rows):
        yield InputRow(path.name, i + 1, {c: values[i] for c, values in columns.items()})


def _plain(value: Any) -> Any:
    """NaN floats (pandas-written missing values) as None."""
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def check_row(row: InputRow, *, max_field_chars: int = DEFAULT_MAX_FIELD_CHARS) -> str | None:
    """What is wrong with a row's required fields, or None. Criteria are checked by the taxonomy;
    unusable text anywhere in the row was already refused by `read_rows`."""
    data = row.data
    for name in ("instruction", "answer"):
        if name not in data or data[name] is None:
            return f"missing field {name!r}"
        if not isinstance(data[name], str):
            return f"field {name!r} must be a string, got {_type_name(data[name])}"
        if not data[name].strip():
            return f"field {name!r} is empty"
    ref = data.get("reference_answer")
    if ref is not None and not isinstance(ref, str):
        return f"field 'reference_answer' must be a string, got {_type_name(ref)}"
    for key, value in data.items():
        if isinstance(value, str) and len(value) > max_field_chars:
            return f"field {key!r} is {len(value):,} characters long (limit {max_field_chars:,})"
    for key in ("criteria_name", "rubrics", "task_type", "task_subtype", "task_subsubtype"):
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            return f"field {key!r} must be a string, got {_type_name(value)}"
    criteria = data.get("criteria")
    if criteria is not None and not isinstance(criteria, list):
        return f"field 'criteria' must be a list of {{criteria_name, rubrics}}, got {_type_name(criteria)}"
    return None


def bad_text(data: Mapping[str, Any]) -> str | None:
    """The first text anywhere in a row — any column, nested lists and objects, keys — that no
    tokenizer, database or JSON encoder accepts (`pollux.records.text_problem`), or None.

    Every string is checked, not only the judged ones: an id, a model name or an extra column
    is written to the run database too, and one bad string there used to end the whole run.
    `read_rows` applies it to every row; callers with rows from elsewhere (a DataFrame) call it."""
    if not _may_hold_bad_text(data):
        return None
    for path, text in _strings(data, ""):
        problem = text_problem(text)
        if problem is not None:
            return f"{path}: {problem}"
    return None


def _may_hold_bad_text(data: Mapping[str, Any]) -> bool:
    """A quick screen: one C-speed JSON dump of the row (NUL comes out escaped, lone surrogates as
    they are); only a row that may hold bad text is walked string by string to name the field.
    Walking every row in Python would double the time to read POLLUX's 161k-row parquet."""
    try:
        dumped = json.dumps(data, ensure_ascii=False, default=repr)
    except (TypeError, ValueError):
        return True
    return "\\u0000" in dumped or _SURROGATE.search(dumped) is not None


_SURROGATE = re.compile("[\ud800-\udfff]")


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """(where, text) for every string in a JSON-like value, keys included; `where` reads
    `field 'criteria[0].rubrics'` or `a key in field 'meta'`."""
    if isinstance(value, str):
        yield f"field {path!r}", value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            key_text = str(key)
            if text_problem(key_text) is not None:
                yield (f"a key in field {path!r}" if path else "a key"), key_text
                continue
            yield from _strings(item, f"{path}.{key_text}" if path else key_text)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _strings(item, f"{path}[{i}]")


def _type_name(value: Any) -> str:
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return type(value).__name__


def record_id(row: InputRow) -> str:
    """The row's id: an `id` / `prompt_id` / `record_id` column, else its line number."""
    for key in ("id", "record_id", "prompt_id"):
        value = row.data.get(key)
        if value is not None and str(value).strip():
            return str(value)
    return str(row.line)


def model_id(row: InputRow) -> str:
    """The evaluated model that wrote the answer: a `model_id` / `model` column, else "unknown"."""
    for key in ("model_id", "model"):
        value = row.data.get(key)
        if value is not None and str(value).strip():
            return str(value)
    return "unknown"
