"""The run store: one SQLite file per evaluation, written verdict by verdict, safe to kill at any point.

An evaluation takes hours and must survive crashes, so every verdict is committed as it completes
(WAL journal: a killed writer loses nothing committed and readers never block it). Tables:

* `runs` — one row per configuration (judge, template, sampling, pollux version). Resuming reuses the
  run whose configuration hash matches; a different configuration is a new run, made only on request.
  `run_requests` maps what a user asked for (judge spec and options, before loading) to the run it
  led to, so a finished run is recognised without loading the judge.
* `records` — the answers (an answer of an evaluated model to an instruction), keyed by (source
  file, record id, model id) *and* `answer_key`, the hash of their texts. A record's texts never
  change: a file that changes the answer of an id adds a record, so the verdicts of an older run
  stay beside the text they were judged on.
* `jobs` — the (record × criterion) pairs a run must judge, each with the `JudgeItem.key` of its
  content: a job's verdict is the one whose content hash equals the hash of the job's own record
  texts, criterion and rubric. Two jobs with the same content share one judgement.
* `verdicts` — one row per (item_key, judge, run) — a UNIQUE constraint, so nothing is written twice.
  A verdict that failed (`error` set) may be replaced by a later attempt; a successful one never is.
  Generative judges may also carry `expected_score` (the probability-weighted score at `[RESULT]`)
  and `score_probs` (JSON: scale value → probability).

* `ui_reviews` — human reviews written by the web UI beside the verdicts (`REVIEWS_SCHEMA`; created
  by the UI when reviews are writable, never by `pollux evaluate`).

`read_verdicts(db)` is the public reading side: a pandas DataFrame, one row per judged job.
This module is the one place that knows the run database's schema — tables, columns, indexes
(`RUN_TABLES`, `RECORD_COLUMNS`, `JOB_COLUMNS`, `INDEX_NAMES`, `REVIEWS_SCHEMA`, `check_run_db`):
the web UI (`pollux.ui`) reads and writes through these names rather than a copy of its own.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pollux.verdicts import Verdict

SCHEMA_VERSION = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY,
    created_at REAL NOT NULL,
    judge TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    config_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS run_requests (
    request_hash TEXT PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(run_id)
);
CREATE TABLE IF NOT EXISTS records (
    record_pk INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    record_id TEXT NOT NULL,
    model_id TEXT NOT NULL,
    line INTEGER NOT NULL,
    answer_key TEXT NOT NULL,
    instruction TEXT NOT NULL,
    answer TEXT NOT NULL,
    reference_answer TEXT NOT NULL,
    task_type TEXT,
    task_subtype TEXT,
    task_subsubtype TEXT,
    task_group TEXT,
    extra_json TEXT NOT NULL DEFAULT '{}',
    UNIQUE (source, record_id, model_id, answer_key)
);
CREATE TABLE IF NOT EXISTS jobs (
    run_id INTEGER NOT NULL REFERENCES runs(run_id),
    record_pk INTEGER NOT NULL REFERENCES records(record_pk),
    criteria_name TEXT NOT NULL,
    criterion_id TEXT,
    criterion_group TEXT,
    rubrics TEXT NOT NULL,
    item_key TEXT NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (run_id, record_pk, criteria_name)
);
CREATE INDEX IF NOT EXISTS jobs_item ON jobs (run_id, item_key);
CREATE TABLE IF NOT EXISTS verdicts (
    verdict_pk INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(run_id),
    item_key TEXT NOT NULL,
    judge TEXT NOT NULL,
    criteria_name TEXT NOT NULL,
    score REAL,
    head_score REAL,
    text_score REAL,
    expected_score REAL,
    score_probs TEXT,
    scale_min REAL,
    scale_max REAL,
    valid INTEGER NOT NULL,
    invalid_reason TEXT,
    rationale TEXT NOT NULL,
    raw_text TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    finish_reason TEXT,
    time_s REAL NOT NULL,
    error TEXT,
    created_at REAL NOT NULL,
    UNIQUE (item_key, judge, run_id)
);
"""
# For the web UI's filters (pollux.ui.queries): a criterion, a criterion group, a model and/or task
# type, a score range, invalid/failed verdicts — each answered from an index, never a table scan.
# Plain CREATE INDEX IF NOT EXISTS: a database of an older pollux gets them when next opened.
_INDEXES = """
CREATE INDEX IF NOT EXISTS jobs_criterion ON jobs (run_id, criteria_name, record_pk);
CREATE INDEX IF NOT EXISTS jobs_group ON jobs (run_id, criterion_group, record_pk);
CREATE INDEX IF NOT EXISTS records_model ON records (model_id, task_type);
CREATE INDEX IF NOT EXISTS records_task ON records (task_type);
CREATE INDEX IF NOT EXISTS verdicts_score ON verdicts (run_id, score, item_key);
CREATE INDEX IF NOT EXISTS verdicts_state ON verdicts (run_id, valid);
CREATE INDEX IF NOT EXISTS verdicts_key ON verdicts (item_key, run_id, score, valid);
"""
_SCHEMA += _INDEXES
INDEX_NAMES: tuple[str, ...] = tuple(re.findall(r"CREATE INDEX IF NOT EXISTS (\w+)", _INDEXES))
RUN_TABLES = ("runs", "records", "jobs", "verdicts")  # what makes a database a run database
# The columns of the two input tables in table order: upserts here and bulk loads (expert files).
RECORD_COLUMNS = ("record_pk", "source", "record_id", "model_id", "line", "answer_key", "instruction", "answer",
                  "reference_answer", "task_type", "task_subtype", "task_subsubtype", "task_group", "extra_json")
JOB_COLUMNS = ("run_id", "record_pk", "criteria_name", "criterion_id", "criterion_group", "rubrics", "item_key",
               "position")
REVIEWS_TABLE = "ui_reviews"
# One row per (run, answer, criterion, reviewer); the judge's verdict beside it is never changed.
REVIEWS_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {REVIEWS_TABLE} (
    review_id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL,
    record_pk INTEGER NOT NULL,
    criteria_name TEXT NOT NULL,
    reviewer TEXT NOT NULL,
    score REAL,
    comment TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (run_id, record_pk, criteria_name, reviewer)
)
"""


class StoreError(RuntimeError):
    """The database is not a pollux run store, or a run's configuration does not match."""


@dataclass(frozen=True)
class Run:
    run_id: int
    judge: str
    config: dict[str, Any]
    config_hash: str
    created_at: float


@dataclass(frozen=True)
class JobRow:
    """One (record × criterion) to judge, as the evaluate loop hands it to the store."""

    record_pk: int
    criteria_name: str
    criterion_id: str | None
    criterion_group: str | None
    rubrics: str
    item_key: str
    position: int


def config_hash(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences between two configurations (`key: old → new`)."""
    out: list[str] = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += config_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} → {b!r}")
    return out


class RunStore:
    """A run database. Thread-safe: engines may report verdicts from worker threads."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.parent and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._batch = False
        self.conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
        self.conn.row_factory = sqlite3.Row
        try:
            self.conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.DatabaseError as e:
            self.conn.close()
            raise StoreError(f"{self.path}: not a SQLite database ({e})") from None
        # NORMAL in WAL mode: a killed process loses nothing committed (only a power cut could).
        self.conn.execute("PRAGMA synchronous=NORMAL")
        with self.conn:
            self.conn.executescript(_SCHEMA)
            row = self.conn.execute("SELECT value FROM store_meta WHERE key='schema_version'").fetchone()
            version = SCHEMA_VERSION if row is None else int(row[0])
            if version == 1:
                _migrate_v1(self.conn)
            if version in (1, 2):
                _migrate_v2(self.conn)
            elif version != SCHEMA_VERSION:
                self.conn.close()
                raise StoreError(f"{self.path}: schema version {version}, this pollux reads {SCHEMA_VERSION}")
            self.conn.execute("INSERT OR REPLACE INTO store_meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        # After the schema work: a table rebuild needs the checks off, and the pragma is a no-op in a transaction.
        self.conn.execute("PRAGMA foreign_keys=ON")

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- runs ---------------------------------------------------------------------------------

    def runs(self) -> list[Run]:
        with self._lock:
            rows = self.conn.execute("SELECT * FROM runs ORDER BY run_id").fetchall()
        return [Run(r["run_id"], r["judge"], json.loads(r["config_json"]), r["config_hash"], r["created_at"]) for r in rows]

    def open_run(self, judge: str, config: Mapping[str, Any], *, new_run: bool = False) -> tuple[Run, bool]:
        """The run to write into: the existing run with this exact configuration (resume), or a new
        one. Returns (run, created). A database whose runs all differ refuses unless `new_run`."""
        digest = config_hash(config)
        existing = self.runs()
        if not new_run:
            for run in reversed(existing):
                if run.config_hash == digest:
                    return run, False
            if existing:
                last = existing[-1]
                diff = config_diff(last.config, dict(config))
                raise StoreError(
                    f"{self.path} holds run {last.run_id} made with a different configuration:\n  "
                    + "\n  ".join(diff or ["(configuration differs)"])
                    + "\nResume with the same options, or pass --new-run to start a new run in this database."
                )
        with self._lock, self.conn:
            cur = self.conn.execute(
                "INSERT INTO runs (created_at, judge, config_hash, config_json) VALUES (?, ?, ?, ?)",
                (time.time(), judge, digest, json.dumps(config, ensure_ascii=False, sort_keys=True, default=str)),
            )
        run_id = int(cur.lastrowid or 0)
        return Run(run_id, judge, dict(config), digest, time.time()), True

    def remember_request(self, request_hash: str, run_id: int) -> None:
        """Note that this request (what the user asked for, before any loading) leads to this run."""
        with self._write():
            self.conn.execute("INSERT OR REPLACE INTO run_requests (request_hash, run_id) VALUES (?, ?)",
                              (request_hash, run_id))

    def run_for_request(self, request_hash: str) -> Run | None:
        """The run a request led to last time, found without loading the judge (see `evaluate`)."""
        with self._lock:
            row = self.conn.execute("SELECT run_id FROM run_requests WHERE request_hash=?", (request_hash,)).fetchone()
        return next((r for r in self.runs() if row is not None and r.run_id == row[0]), None)

    # --- records and jobs ---------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group many record/job writes into one commit (input files can hold 100k+ rows)."""
        with self._lock:
            self._batch = True
            try:
                yield
                self.conn.commit()
            except BaseException:
                self.conn.rollback()
                raise
            finally:
                self._batch = False

    @contextmanager
    def _write(self) -> Iterator[None]:
        if self._batch:
            yield
            return
        with self._lock, self.conn:
            yield

    def upsert_record(self, rec: Mapping[str, Any]) -> int:
        """Insert an answer, or refresh the line, task and extra fields of the same answer (same id,
        model and texts); returns its key. Changed texts are another record (see the module doc)."""
        cols = RECORD_COLUMNS[1:]  # record_pk is the store's
        values = [rec.get(c) for c in cols]
        with self._write():
            self.conn.execute(
                f"INSERT INTO records ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
                "ON CONFLICT (source, record_id, model_id, answer_key) DO UPDATE SET "
                + ", ".join(f"{c}=excluded.{c}" for c in ("line", "task_type", "task_subtype", "task_subsubtype",
                                                            "task_group", "extra_json")),
                values,
            )
            row = self.conn.execute(
                "SELECT record_pk FROM records WHERE source=? AND record_id=? AND model_id=? AND answer_key=?",
                (rec["source"], rec["record_id"], rec["model_id"], rec["answer_key"]),
            ).fetchone()
        return int(row[0])

    def replace_jobs(self, run_id: int, record_pk: int, jobs: Iterable[JobRow]) -> None:
        """Make `jobs` the run's only jobs for this answer's id: the jobs of an earlier version of
        the answer (same file, id and model, other texts) and criteria it no longer has are dropped
        from the run, so a resumed run shows each id with its current text and criteria only.
        Verdicts are never deleted: they are keyed by content and come back if the text does."""
        with self._write():
            self.conn.execute(
                "DELETE FROM jobs WHERE run_id=? AND record_pk IN (SELECT b.record_pk FROM records a JOIN records b "
                "ON a.source=b.source AND a.record_id=b.record_id AND a.model_id=b.model_id WHERE a.record_pk=?)",
                (run_id, record_pk),
            )
            self.add_jobs(run_id, jobs)

    def add_jobs(self, run_id: int, jobs: Iterable[JobRow]) -> None:
        with self._write():
            self.conn.executemany(
                f"INSERT INTO jobs ({', '.join(JOB_COLUMNS)}) VALUES ({', '.join('?' * len(JOB_COLUMNS))}) "
                "ON CONFLICT (run_id, record_pk, criteria_name) DO UPDATE SET criterion_id=excluded.criterion_id, "
                "criterion_group=excluded.criterion_group, rubrics=excluded.rubrics, item_key=excluded.item_key, "
                "position=excluded.position",
                [(run_id, j.record_pk, j.criteria_name, j.criterion_id, j.criterion_group, j.rubrics, j.item_key,
                  j.position) for j in jobs],
            )

    def done_keys(self, run_id: int, judge: str) -> set[str]:
        """Item keys this run already holds a successful verdict for (errors are retried)."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT item_key FROM verdicts WHERE run_id=? AND judge=? AND error IS NULL", (run_id, judge)
            ).fetchall()
        return {r[0] for r in rows}

    # --- verdicts -----------------------------------------------------------------------------

    def write_verdict(self, run_id: int, item_key: str, verdict: Verdict) -> bool:
        """Commit one verdict now. Returns False when a successful verdict was already stored (it
        is kept: nothing is written twice); a stored error is replaced by a new attempt."""
        row = (
            run_id, item_key, verdict.judge, verdict.criteria_name, _num(verdict.score), _num(verdict.head_score),
            _num(verdict.text_score), _num(verdict.expected_score), _probs_json(verdict.score_probs), verdict.scale_min, verdict.scale_max, int(bool(verdict.valid)),
            verdict.invalid_reason, verdict.rationale or "", verdict.raw_text or "", int(verdict.prompt_tokens or 0),
            int(verdict.completion_tokens or 0), verdict.finish_reason, float(verdict.time_s or 0.0), verdict.error,
            time.time(),
        )
        with self._lock, self.conn:
            cur = self.conn.execute(
                "INSERT INTO verdicts (run_id, item_key, judge, criteria_name, score, head_score, text_score, "
                "expected_score, score_probs, scale_min, scale_max, valid, invalid_reason, rationale, raw_text, "
                "prompt_tokens, completion_tokens, finish_reason, time_s, error, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (item_key, judge, run_id) DO UPDATE SET "
                "criteria_name=excluded.criteria_name, score=excluded.score, head_score=excluded.head_score, "
                "text_score=excluded.text_score, expected_score=excluded.expected_score, "
                "score_probs=excluded.score_probs, scale_min=excluded.scale_min, scale_max=excluded.scale_max, "
                "valid=excluded.valid, invalid_reason=excluded.invalid_reason, rationale=excluded.rationale, "
                "raw_text=excluded.raw_text, prompt_tokens=excluded.prompt_tokens, "
                "completion_tokens=excluded.completion_tokens, finish_reason=excluded.finish_reason, "
                "time_s=excluded.time_s, error=excluded.error, created_at=excluded.created_at "
                "WHERE verdicts.error IS NOT NULL",
                row,
            )
        return cur.rowcount > 0

    def counts(self, run_id: int) -> dict[str, int]:
        """Jobs, distinct items, judged items, failed items of a run."""
        q = self.conn.execute
        judged = q(
            "SELECT COUNT(*) FROM verdicts WHERE run_id=? AND error IS NULL", (run_id,)
        ).fetchone()[0]
        failed = q("SELECT COUNT(*) FROM verdicts WHERE run_id=? AND error IS NOT NULL", (run_id,)).fetchone()[0]
        return {
            "jobs": q("SELECT COUNT(*) FROM jobs WHERE run_id=?", (run_id,)).fetchone()[0],
            "items": q("SELECT COUNT(DISTINCT item_key) FROM jobs WHERE run_id=?", (run_id,)).fetchone()[0],
            "judged": judged,
            "failed": failed,
        }


def table_names(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def check_run_db(conn: sqlite3.Connection, path: str | Path) -> None:
    """StoreError unless `conn` is a run database this pollux reads: a SQLite file with the run
    tables and a schema version no newer than `SCHEMA_VERSION` (older ones are read as they are)."""
    try:
        tables = table_names(conn)
    except sqlite3.DatabaseError as e:
        raise StoreError(f"{path}: not a SQLite database ({e})") from None
    if not set(RUN_TABLES) <= tables:
        raise StoreError(f"{path}: not a pollux run database (no {'/'.join(RUN_TABLES)} tables)")
    if "store_meta" in tables:
        row = conn.execute("SELECT value FROM store_meta WHERE key='schema_version'").fetchone()
        if row is not None and int(row[0]) > SCHEMA_VERSION:
            raise StoreError(f"{path}: schema version {row[0]}, this pollux reads up to {SCHEMA_VERSION}")


def missing_indexes(conn: sqlite3.Connection) -> list[str]:
    """The store's filter indexes (`INDEX_NAMES`) a database lacks (one written by an older pollux)."""
    have = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    return [name for name in INDEX_NAMES if name not in have]


def insert_rows(conn: sqlite3.Connection, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Bulk insert (duplicates of a unique key are skipped): for building a store in one pass."""
    marks = ", ".join("?" * len(columns))
    conn.executemany(f"INSERT OR IGNORE INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)


def _migrate_v1(conn: sqlite3.Connection) -> None:
    """Schema 1 keyed records by (source, record id, model) only, so a changed answer overwrote
    the text an older verdict was judged on. Rebuild `records` with the content key (SQLite's
    documented table-rebuild: a new table, copy, drop, rename); rows and their keys are kept."""
    create = _SCHEMA.split("CREATE TABLE IF NOT EXISTS records")[1].split(";")[0]
    conn.execute("CREATE TABLE records_v2" + create)
    conn.execute("INSERT INTO records_v2 SELECT * FROM records")
    conn.execute("DROP TABLE records")
    conn.execute("ALTER TABLE records_v2 RENAME TO records")
    for statement in _INDEXES.split(";"):  # the dropped table took its indexes along
        conn.execute(statement)


def _migrate_v2(conn: sqlite3.Connection) -> None:
    """Schema 3 adds the expected score of generative judges (G-Eval style) beside the greedy one."""
    have = {r[1] for r in conn.execute("PRAGMA table_info(verdicts)")}
    for column, kind in (("expected_score", "REAL"), ("score_probs", "TEXT")):
        if column not in have:
            conn.execute(f"ALTER TABLE verdicts ADD COLUMN {column} {kind}")


def _num(value: float | None) -> float | None:
    return None if value is None else float(value)


def _probs_json(probs: Mapping[str, float] | None) -> str | None:
    return None if probs is None else json.dumps(probs, sort_keys=True)


_READ_SQL = """
SELECT v.run_id, r.source, r.record_id, r.line, r.model_id, r.answer_key, r.task_type, r.task_subtype,
       r.task_subsubtype, r.task_group, j.criteria_name, j.criterion_id, j.criterion_group, j.rubrics,
       j.item_key, v.judge, v.score, v.head_score, v.text_score, v.expected_score, v.score_probs, v.scale_min, v.scale_max, v.valid,
       v.invalid_reason, v.error, v.rationale, v.raw_text, v.prompt_tokens, v.completion_tokens,
       v.finish_reason, v.time_s, r.instruction, r.answer, r.reference_answer, j.position
FROM jobs j
JOIN records r ON r.record_pk = j.record_pk
JOIN verdicts v ON v.run_id = j.run_id AND v.item_key = j.item_key
{where}
ORDER BY v.run_id, r.source, r.line, r.model_id, j.position
"""


def peek_runs(db_path: str | Path, request_hash: str) -> tuple[list[Run], Run | None]:
    """The runs of a database and the run `request_hash` led to last time, read WITHOUT changing the
    file (a read-only connection: no schema work, no WAL switch) — for checks made before anything
    else may touch it. A missing file or one in another schema reads as no runs."""
    path = Path(db_path)
    if not path.is_file():
        return [], None
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error:
        return [], None
    try:
        conn.row_factory = sqlite3.Row
        version = conn.execute("SELECT value FROM store_meta WHERE key='schema_version'").fetchone()
        if version is None or int(version[0]) != SCHEMA_VERSION:
            return [], None
        runs = [Run(r["run_id"], r["judge"], json.loads(r["config_json"]), r["config_hash"], r["created_at"])
                for r in conn.execute("SELECT * FROM runs ORDER BY run_id")]
        row = conn.execute("SELECT run_id FROM run_requests WHERE request_hash=?", (request_hash,)).fetchone()
    except sqlite3.Error:
        return [], None
    finally:
        conn.close()
    return runs, next((r for r in runs if row is not None and r.run_id == row[0]), None)


def read_verdicts(db_path: str | Path, *, run: int | None = None, texts: bool = True) -> pd.DataFrame:
    """Every judged job of a run store as a DataFrame, one row per (record × criterion × run).

    Columns: run_id, source, record_id, line, model_id, answer_key, task_type, task_subtype,
    task_subsubtype, task_group, criteria_name, criterion_id, criterion_group, rubrics, item_key
    (= `JudgeItem.key`), judge, score, head_score, text_score, expected_score, score_probs (JSON
    text or None), scale_min, scale_max, valid (bool),
    invalid_reason, error, rationale, raw_text, prompt_tokens, completion_tokens, finish_reason, time_s,
    and (with `texts`) instruction, answer, reference_answer. Two jobs with identical content share
    one verdict, so `item_key` can repeat across records. `run` selects one run (default: all).
    """
    path = Path(db_path)
    if not path.is_file():
        raise StoreError(f"{path}: no such run database")
    conn = sqlite3.connect(str(path), timeout=30)
    try:
        check_run_db(conn, path)
        where, params = ("WHERE v.run_id = ?", (run,)) if run is not None else ("", ())
        df = pd.read_sql_query(_READ_SQL.format(where=where), conn, params=params)
    finally:
        conn.close()
    df["valid"] = df["valid"].astype(bool)
    if not texts:
        df = df.drop(columns=["instruction", "answer", "reference_answer"])
    return df.drop(columns=["position"])


def read_runs(db_path: str | Path) -> list[Run]:
    path = Path(db_path)
    if not path.is_file():
        raise StoreError(f"{path}: no such run database")
    conn = sqlite3.connect(str(path), timeout=30)
    try:
        rows = conn.execute("SELECT run_id, judge, config_json, config_hash, created_at FROM runs ORDER BY run_id").fetchall()
    except sqlite3.DatabaseError as e:
        raise StoreError(f"{path}: not a pollux run database ({e})") from None
    finally:
        conn.close()
    return [Run(r[0], r[1], json.loads(r[2]), r[3], r[4]) for r in rows]


def pending(store: RunStore, run_id: int, judge: str, keys: Sequence[str]) -> list[str]:
    """The keys (in order, without repeats) that still need a successful verdict."""
    done = store.done_keys(run_id, judge)
    seen: set[str] = set()
    out = []
    for key in keys:
        if key not in done and key not in seen:
            seen.add(key)
            out.append(key)
    return out
