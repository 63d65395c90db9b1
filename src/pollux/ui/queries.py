"""The web UI's data layer: read-only queries over pollux run databases, expert files and reviews.

`Explorer` is the only thing the web layer (`pollux.ui.app`) calls: every method returns plain
dicts / lists (JSON-able, Jinja-renderable) and raises `ValueError` naming the bad argument (a bad
run reference, filter value, page, review score …), which the web layer turns into a 4xx.

Notes for the web layer (kept up to date here):
* A run is named by `RunRef` — `"D-R"`: database index D (the order of `dbs`, then the expert
  files) and run id R. Expert files are pseudo-runs (`kind == "experts"`, run id 1) usable wherever
  a run is: verdicts, answer, leaderboard, compare; they take no reviews.
* `verdicts(..., sort=...)` accepts `SORTS`: "default" (answer order, then criterion), "score",
  "-score" (score ascending / descending; failed judgements, which have no score, come first /
  last), "model", "criterion".
* `VerdictFilter.from_params(mapping)` builds a filter from query-string values (blank → None).
* Every method taking a run accepts a `RunRef` or its text ("0-1"). `Explorer.reviews_writable`
  (bool) says whether reviews can be written. `run(ref)`, `runs()`, `facets` and `leaderboard`
  are cached until the database changes, so calling them on every page is cheap.
* Tests: pass `cache_dir=tmp_path` — the full-text index files go to ~/.cache/pollux/ui otherwise.

Why it is built this way:
* Databases are opened read-only (`mode=ro`) unless reviews are writable: the UI must never change
  a run, and a WAL database can be read while `pollux evaluate` writes it (readers never block the
  writer), so `runs()` shows live progress.
* Filters and pages are answered by SQL with the store's indexes (`pollux.store`), never by loading
  161k verdicts into memory; the leaderboard, which needs them all, is `pollux.aggregate` over the
  run's score columns, cached until the database changes (`PRAGMA data_version`).
* Full-text search uses SQLite FTS5 in a sidecar cache file per database (built on first search,
  brought up to date before each search), so read-only and older databases can be searched too and
  `pollux evaluate` pays nothing for it.
* Compare joins two runs on the judged content (`item_key` = `JudgeItem.key`), the key
  `pollux meta-eval` joins judges and experts on, so two databases, or a run and an expert file,
  meet on the same (answer, criterion) whatever their record ids.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pollux.aggregate import aggregate
from pollux.metaeval.metrics import point_metrics
from pollux.metaeval.scores import round_half_away
from pollux.records import text_problem
from pollux.scales import parse_scale
from pollux.store import RUN_TABLES, table_names
from pollux.ui import reviews as rv
from pollux.ui import textindex
from pollux.ui.sources import Source, default_cache_dir, open_experts, open_run_db

SORTS = ("default", "score", "-score", "model", "criterion")
ONLY = ("invalid", "error")
MAX_PAGE_SIZE = 500
SNIPPET_CHARS = 300
MAX_FILTER_CHARS = 2000
_REF = re.compile(r"(\d+)-(\d+)")
_TEXT_FILTERS = ("model", "task_type", "criterion", "group", "only", "q")


@dataclass(frozen=True)
class RunRef:
    """One run in one of the opened databases; its text form is "D-R" (db index, run id), e.g. "0-1"."""

    db: int
    run_id: int

    @classmethod
    def parse(cls, text: str) -> RunRef:
        """"0-1" → RunRef(0, 1). ValueError naming the bad text otherwise."""
        match = _REF.fullmatch(text.strip()) if isinstance(text, str) else None
        if match is None:
            raise ValueError(f"run: {text!r} is not a run reference (expected DB-RUN, e.g. '0-1')")
        return cls(int(match[1]), int(match[2]))

    def __str__(self) -> str:
        return f"{self.db}-{self.run_id}"


@dataclass(frozen=True)
class VerdictFilter:
    """Which verdicts to show; every field optional (None = no condition). Conditions combine with AND.

    `criterion` is a `criteria_name`, `group` a `criterion_group`; `score_min` / `score_max` bound
    the judge's score (inclusive; rows without a score drop out when either is set); `only` is
    "invalid" (a verdict without a usable score, not an error) or "error" (the judgement failed);
    `q` is a full-text search in the answer and the rationale (words, all required, each matching
    as a prefix, case- and ё/е-insensitive). Construction checks the values (ValueError naming
    the field); blank texts become None."""

    model: str | None = None
    task_type: str | None = None
    criterion: str | None = None
    group: str | None = None
    score_min: float | None = None
    score_max: float | None = None
    only: str | None = None
    q: str | None = None

    def __post_init__(self) -> None:
        for name in _TEXT_FILTERS:
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, str):
                raise ValueError(f"{name}: expected text, got {type(value).__name__}")
            problem = text_problem(value)
            if problem is not None:
                raise ValueError(f"{name}: {problem}")
            if len(value) > MAX_FILTER_CHARS:
                raise ValueError(f"{name}: longer than {MAX_FILTER_CHARS} characters")
            object.__setattr__(self, name, value if value.strip() else None)
        for name in ("score_min", "score_max"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name}: expected a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.score_min is not None and self.score_max is not None and self.score_min > self.score_max:
            raise ValueError(f"score_min: {self.score_min:g} is above score_max ({self.score_max:g})")
        if self.only is not None and self.only not in ONLY:
            raise ValueError(f"only: expected one of {', '.join(ONLY)}, got {self.only!r}")
        if self.q is not None:
            textindex.fts_query(self.q)

    @classmethod
    def from_params(cls, params: Mapping[str, str | None]) -> VerdictFilter:
        """A filter from query-string values: blank → None, numbers parsed ("1,5" too). Unknown keys
        are ignored. ValueError naming the parameter on a bad value."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = params.get(f.name)
            if raw is None or not str(raw).strip():
                continue
            if f.name in ("score_min", "score_max"):
                try:
                    values[f.name] = float(str(raw).strip().replace(",", "."))
                except ValueError:
                    raise ValueError(f"{f.name}: expected a number, got {raw!r}") from None
            else:
                values[f.name] = str(raw)
        return cls(**values)

    def to_params(self) -> dict[str, str]:
        """The set fields as query-string values (for pagination links)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = f"{value:g}" if isinstance(value, float) else value
        return out


# --- SQL of the verdict queries --------------------------------------------------------------------
# SQLite chooses a plan without statistics (pollux never runs ANALYZE), and with several usable
# indexes it can pick a disastrous one (a score range scanned once per job: minutes). So the plan
# is chosen here: the most selective filter's table drives (CROSS JOIN fixes the join order in
# SQLite) and a unary `+` keeps the other conditions from using an index.

_ORDER = {
    "default": "j.record_pk, j.position",
    # the order of the verdicts_score index, so an unfiltered sort by score needs no sort step;
    # failed judgements (no score) come first in "score" and last in "-score"
    "score": "v.score, v.item_key, j.rowid",
    "-score": "v.score DESC, v.item_key DESC, j.rowid DESC",
    "model": "r.model_id, j.record_pk, j.position",
    "criterion": "j.criteria_name, j.record_pk, j.position",
}
_JOIN_V = "CROSS JOIN verdicts v ON v.item_key = j.item_key AND +v.run_id = j.run_id"
_JOIN_R = "CROSS JOIN records r ON r.record_pk = j.record_pk"


@dataclass(frozen=True)
class _Plan:
    """FROM and WHERE of one filtered verdict query (aliases j = jobs, v = verdicts, r = records)."""

    source: str
    where: str
    params: tuple[Any, ...]

    def count(self, conn: Any) -> int:
        return int(conn.execute(f"SELECT COUNT(*) {self.source} WHERE {self.where}", self.params).fetchone()[0])

    def select(self, columns: str, order: str | None = None, limit: int | None = None, offset: int = 0) -> tuple[str, tuple[Any, ...]]:
        sql = f"SELECT {columns} {self.source} WHERE {self.where}"
        params = self.params
        if order:
            sql += f" ORDER BY {order}"
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            params = (*params, limit, offset)
        return sql, params


def _plan(run_id: int, f: VerdictFilter, *, match: str | None, records: bool, scored: bool = False,
          by_score: bool = False) -> _Plan:
    """The query for a run's verdicts under `f`; `match` is the FTS query of `f.q`; `records`
    joins the records table even without a records filter; `scored` keeps rows with a score only;
    `by_score` (a sort by score) lets the verdicts drive when no jobs/records filter is set."""
    # which table drives: the first of full-text matches, a jobs filter, a records filter (or a
    # sort by model), a verdicts filter (or a sort by score), else the jobs in answer order
    if match is not None:
        driver = "fts"
    elif f.criterion is not None or f.group is not None:
        driver = "jobs"
    elif f.model is not None or f.task_type is not None or (records and not by_score):
        driver = "records"  # also for a sort by model: records_model gives that order
    elif f.only is not None or f.score_min is not None or f.score_max is not None or scored or by_score:
        driver = "verdicts"
    else:
        driver = "jobs"
    need_r = records or f.model is not None or f.task_type is not None
    if driver == "records":
        source = f"FROM records r CROSS JOIN jobs j ON j.run_id = ? AND j.record_pk = r.record_pk {_JOIN_V}"
        conds: list[str] = []
        params: list[Any] = [run_id]
    elif driver == "verdicts":
        source = "FROM verdicts v CROSS JOIN jobs j ON j.run_id = v.run_id AND j.item_key = v.item_key"
        source += f" {_JOIN_R}" if need_r else ""
        conds, params = ["v.run_id = ?"], [run_id]
    else:
        source = f"FROM jobs j {_JOIN_R if need_r else ''} {_JOIN_V}"
        conds, params = [("+" if driver == "fts" else "") + "j.run_id = ?"], [run_id]
    if match is not None:
        conds.append(f"j.rowid IN ({textindex.matching_jobs_sql()})")
        params += [run_id, match, run_id, match]

    def add(table: str, sql: str, value: Any, *, indexed: bool = True) -> None:
        if value is not None:
            conds.append(sql if table == driver and indexed else "+" + sql)
            params.append(value)

    add("jobs", "j.criteria_name = ?", f.criterion)
    add("jobs", "j.criterion_group = ?", f.group)
    add("records", "r.model_id = ?", f.model)
    add("records", "r.task_type = ?", f.task_type)
    add("verdicts", "v.score >= ?", f.score_min, indexed=f.only is None)
    add("verdicts", "v.score <= ?", f.score_max, indexed=f.only is None)
    if f.only is not None:
        valid = "v.valid = 0" if driver == "verdicts" else "+v.valid = 0"
        conds.append(f"{valid} AND v.error IS {'NULL' if f.only == 'invalid' else 'NOT NULL'}")
    if scored:  # failed judgements carry no score (pollux.verdicts.error_verdict)
        conds.append("+v.score IS NOT NULL")
    return _Plan(source, " AND ".join(conds) or "1", tuple(params))


_ROW_SQL = """
SELECT j.rowid AS job_rowid, j.record_pk, r.record_id, j.item_key, r.model_id, r.task_type, j.criteria_name,
       j.criterion_group, v.verdict_pk, v.score, v.valid, v.error, v.invalid_reason,
       substr(v.rationale, 1, {n}) AS rationale, substr(r.answer, 1, {n}) AS answer
FROM jobs j {join_v} {join_r}
WHERE j.rowid IN ({marks})
"""


def snippet(text: str | None, limit: int = SNIPPET_CHARS) -> str:
    """The start of a text, at most `limit` characters, "…"-terminated when cut."""
    if not text:
        return ""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _num(value: Any) -> float | None:
    """NaN / numpy → plain float or None (JSON and Jinja safe)."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _check_page(page: int, page_size: int) -> None:
    if isinstance(page, bool) or not isinstance(page, int) or page < 1:
        raise ValueError(f"page: expected a whole number ≥ 1, got {page!r}")
    if isinstance(page_size, bool) or not isinstance(page_size, int) or not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ValueError(f"page_size: expected a whole number from 1 to {MAX_PAGE_SIZE}, got {page_size!r}")


def _check_pk(record_pk: int) -> int:
    if isinstance(record_pk, bool) or not isinstance(record_pk, int):
        raise ValueError(f"record_pk: expected a whole number, got {record_pk!r}")
    return record_pk


def _pages(total: int, page_size: int) -> int:
    return max(1, -(-total // page_size))


def compare_only(path: str | Path) -> bool:
    """Whether `path` is a database of `pollux compare` alone (its table, no run tables): no runs
    to show, but the UI opens it for the side-by-side page."""
    try:
        conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = table_names(conn)
        finally:
            conn.close()
    except sqlite3.Error:  # missing or not SQLite: open_run_db says so
        return False
    return "pairwise_judgements" in tables and not set(RUN_TABLES) & tables


class Explorer:
    """Queries over run databases and expert files for the web UI. Thread-safe (one lock per database).

    `dbs`: pollux run databases (`pollux evaluate --db`), read-only unless `reviews_writable`
    (then the `ui_reviews` table is created in each, and the store's current indexes). `experts`:
    POLLUX-format expert files (`pollux.metaeval.load_experts`), each shown as a pseudo-run.
    `cache_dir`: where full-text indexes are kept (default: `$XDG_CACHE_HOME/pollux/ui`).
    Methods taking a run accept a `RunRef` or its text ("0-1")."""

    def __init__(self, dbs: Sequence[str | Path], *, experts: Sequence[str | Path] = (),
                 reviews_writable: bool = False, cache_dir: str | Path | None = None):
        self.reviews_writable = reviews_writable
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._sources: list[Source] = []
        self._compare_cache: OrderedDict[Any, tuple[pd.DataFrame, dict[str, Any]]] = OrderedDict()
        self._compare_lock = threading.Lock()
        self._compare_only: list[Path] = []  # `pollux compare` databases: the side-by-side page alone
        try:
            for path in dbs:
                if compare_only(path):
                    self._compare_only.append(Path(path))
                    continue
                self._sources.append(open_run_db(len(self._sources), path, writable=reviews_writable, cache_dir=cache))
            for path in experts:
                self._sources.append(open_experts(len(self._sources), path))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for src in self._sources:
            with src.lock:
                src.conn.close()
        self._sources = []

    def clear_caches(self) -> None:
        """Forget cached counts, facets, leaderboards and comparisons (benchmarks time cold queries)."""
        for src in self._sources:
            with src.lock:
                src.cache.clear()
        with self._compare_lock:
            self._compare_cache.clear()

    def __enter__(self) -> Explorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- runs -----------------------------------------------------------------------------------

    def runs(self) -> list[dict[str, Any]]:
        """Every run of every database, then the expert pseudo-runs, each a dict:
        ref (str "D-R"), db (int), path (str), kind ("run" | "experts"), run_id, judge,
        created_at (ISO 8601 UTC str; None for experts), config (dict), jobs (answer × criterion
        pairs), items (distinct judgements), judged (successful verdicts), failed (verdicts with an
        error), invalid (verdicts without a usable score, no error), pending (items without any
        verdict yet), progress (0..1: (judged + failed) / items), finished (bool: pending == 0),
        reviews_writable (bool). Fresh on each call (live progress); cached while nothing changes."""
        return [dict(self._entry(src, row)) for src in self._sources for row in self._run_rows(src)]

    def run_databases(self) -> list[Path]:
        """The run databases' paths and the `pollux compare`-only ones (the side-by-side page reads them)."""
        return [src.path for src in self._sources if src.kind == "run"] + self._compare_only

    def run(self, ref: RunRef | str) -> dict[str, Any]:
        """The `runs()` entry of one run. ValueError for an unknown ref."""
        return dict(self._resolve(ref)[1])

    def _run_rows(self, src: Source) -> list[Any]:
        return src.cached("runs", lambda: src.conn.execute(
            "SELECT run_id, judge, created_at, config_json FROM runs ORDER BY run_id").fetchall())

    def _entry(self, src: Source, row: Any) -> dict[str, Any]:
        """One run's entry, its counts cached on their own (a page about one run counts that run only)."""
        return src.cached(("run", row["run_id"]), lambda: self._run_entry(src, row))

    def _run_entry(self, src: Source, row: Any) -> dict[str, Any]:
        q = src.conn.execute
        run_id = row["run_id"]
        jobs = q("SELECT COUNT(*) FROM jobs WHERE run_id = ?", (run_id,)).fetchone()[0]
        items = q("SELECT COUNT(DISTINCT item_key) FROM jobs WHERE run_id = ?", (run_id,)).fetchone()[0]
        valid = q("SELECT COUNT(*) FROM verdicts WHERE run_id = ? AND valid = 1", (run_id,)).fetchone()[0]
        # errors are stored with valid = 0, so the rare valid = 0 rows are all that is looked at
        invalid, failed = q("SELECT COUNT(*) - COUNT(error), COUNT(error) FROM verdicts WHERE run_id = ? AND valid = 0",
                            (run_id,)).fetchone()
        judged = valid + invalid
        pending = max(items - judged - failed, 0)
        experts = src.kind == "experts"
        return {
            "ref": f"{src.index}-{run_id}", "db": src.index, "path": str(src.path), "kind": src.kind,
            "run_id": run_id, "judge": row["judge"], "created_at": None if experts else rv.iso(row["created_at"]),
            "config": json.loads(row["config_json"]), "jobs": jobs, "items": items, "judged": judged,
            "failed": failed, "invalid": invalid, "pending": pending,
            "progress": 1.0 if items == 0 else min(1.0, (judged + failed) / items), "finished": pending == 0,
            "reviews_writable": src.writable,
        }

    def _resolve(self, ref: RunRef | str) -> tuple[Source, dict[str, Any]]:
        ref = ref if isinstance(ref, RunRef) else RunRef.parse(ref)
        if not 0 <= ref.db < len(self._sources):
            raise ValueError(f"run: no database {ref.db} in run {ref} (databases 0 to {len(self._sources) - 1})")
        src = self._sources[ref.db]
        rows = self._run_rows(src)
        for row in rows:
            if row["run_id"] == ref.run_id:
                return src, self._entry(src, row)
        known = ", ".join(f"{src.index}-{row['run_id']}" for row in rows) or "none"
        raise ValueError(f"run: {src.path} has no run {ref.run_id} (its runs: {known})")

    # --- facets and leaderboard -----------------------------------------------------------------

    def facets(self, ref: RunRef | str) -> dict[str, Any]:
        """Values for the filter dropdowns of a run: models, task_types, criteria (names), groups
        (criterion groups) — each a sorted list of str — and score_min / score_max (floats, None
        when nothing is scored). Cached until the database changes."""
        src, entry = self._resolve(ref)
        run_id = entry["run_id"]

        def compute() -> dict[str, Any]:
            q = src.conn.execute
            in_run = "EXISTS (SELECT 1 FROM jobs j WHERE j.run_id = ? AND j.record_pk = r.record_pk)"
            models = [m for m in _distinct(src, "records", "model_id", "")
                      if q(f"SELECT 1 FROM records r WHERE model_id = ? AND {in_run}", (m, run_id)).fetchone()]
            tasks = [t for t in _distinct(src, "records", "task_type", "")
                     if q(f"SELECT 1 FROM records r WHERE task_type = ? AND {in_run}", (t, run_id)).fetchone()]
            return {
                "models": models, "task_types": tasks,
                "criteria": _distinct(src, "jobs", "criteria_name", "run_id = ? AND ", (run_id,)),
                "groups": _distinct(src, "jobs", "criterion_group", "run_id = ? AND ", (run_id,)),
                "score_min": _num(q("SELECT MIN(score) FROM verdicts WHERE run_id = ?", (run_id,)).fetchone()[0]),
                "score_max": _num(q("SELECT MAX(score) FROM verdicts WHERE run_id = ?", (run_id,)).fetchone()[0]),
            }

        return src.cached(("facets", run_id), compute)

    def leaderboard(self, ref: RunRef | str) -> dict[str, Any]:
        """The official POLLUX aggregation of a run (`pollux.aggregate`, binary gates, out-of-scale dropped):

        * models: model ids, best first; task_groups, criterion_groups, criteria: sorted str lists;
        * rows: one per model, best first — rank, model_id, grand_mean (the official overall:
          mean over task groups), answers, judgements, counted, gated_answers, invalid, errors,
          task_groups {task group: mean}, criterion_groups {criterion group: mean over its criteria;
          gate criteria are not averaged, so the critical group is absent};
        * criteria_rows: one per criterion — criteria_name, criterion_group, means {model: mean}
          (the heatmap);
        * rules: {gates, out_of_scale, grand_mean (text)}.
        Means are floats in 0..1 or None. Empty lists when the run has no verdicts. Cached until
        the database changes."""
        src, entry = self._resolve(ref)
        return src.cached(("leaderboard", entry["run_id"]), lambda: _leaderboard(src, entry["run_id"]))

    # --- verdicts and answers -------------------------------------------------------------------

    def verdicts(self, ref: RunRef | str, f: VerdictFilter | None = None, *, page: int = 1, page_size: int = 50,
                 sort: str = "default") -> dict[str, Any]:
        """One page of a run's verdicts (judged answer × criterion pairs) matching `f`:
        {"total": int (all matching rows), "page": int, "page_size": int, "pages": int (≥ 1),
        "sort": str, "rows": [{record_pk, record_id, item_key, model_id, task_type, criteria_name,
        criterion_group, score (float | None), valid (bool), error (str | None), invalid_reason,
        rationale (snippet ≤ SNIPPET_CHARS chars, "…"-terminated when cut), answer (snippet)}]}.
        A page past the last gives no rows. ValueError on page < 1, page_size outside 1..MAX_PAGE_SIZE,
        an unknown sort, a bad filter."""
        src, entry = self._resolve(ref)
        f = f if f is not None else VerdictFilter()
        _check_page(page, page_size)
        if sort not in SORTS:
            raise ValueError(f"sort: expected one of {', '.join(SORTS)}, got {sort!r}")
        run_id = entry["run_id"]
        with src.lock:
            match = self._search(src, f)
            counted = _plan(run_id, f, match=match, records=False)  # the sort does not change the count
            total = src.cached(("count", run_id, f), lambda: counted.count(src.conn))
            plan = _plan(run_id, f, match=match, records=sort == "model", by_score=sort in ("score", "-score"))
            sql, params = plan.select("j.rowid", _ORDER[sort], page_size, (page - 1) * page_size)
            ids = [r[0] for r in src.conn.execute(sql, params)]
            rows = _rows_by_id(src, ids)
        return {"total": total, "page": page, "page_size": page_size, "pages": _pages(total, page_size),
                "sort": sort, "rows": rows}

    def _search(self, src: Source, f: VerdictFilter) -> str | None:
        """The FTS query of `f.q` with the index brought up to date (lock held), or None."""
        if f.q is None:
            return None
        src.search_ready()
        return textindex.fts_query(f.q)

    def answer(self, ref: RunRef | str, record_pk: int) -> dict[str, Any]:
        """One answer of a run with every criterion it has there:
        {record_pk, record_id, source, line, model_id, task_type, task_subtype, task_subsubtype,
        task_group, instruction, reference_answer, answer, run (the runs() entry), criteria: [
        {criteria_name, criterion_id, criterion_group, rubrics, item_key, scale_min, scale_max,
        levels (allowed scores, may be empty), score, head_score, text_score, valid, invalid_reason,
        error, rationale (full), judged (bool: a verdict exists), reviews: [review dicts, see
        `reviews`]}]}. ValueError when the run has no such answer."""
        src, entry = self._resolve(ref)
        record_pk = _check_pk(record_pk)
        with src.lock:
            crits = src.conn.execute(
                "SELECT j.criteria_name, j.criterion_id, j.criterion_group, j.rubrics, j.item_key, v.score, "
                "v.head_score, v.text_score, v.valid, v.invalid_reason, v.error, v.rationale, v.scale_min, "
                "v.scale_max, v.verdict_pk FROM jobs j LEFT JOIN verdicts v ON v.item_key = j.item_key "
                "AND +v.run_id = j.run_id WHERE j.run_id = ? AND j.record_pk = ? ORDER BY j.position",
                (entry["run_id"], record_pk)).fetchall()
            if not crits:
                raise ValueError(f"record_pk: run {entry['ref']} has no answer {record_pk}")
            record = dict(src.conn.execute(
                "SELECT record_pk, record_id, source, line, model_id, task_type, task_subtype, task_subsubtype, "
                "task_group, instruction, reference_answer, answer FROM records WHERE record_pk = ?",
                (record_pk,)).fetchone())
            reviews = self._reviews(src, entry["run_id"], "AND u.record_pk = ?", (record_pk,))
        record["run"] = dict(entry)
        record["criteria"] = [_criterion(c, [r for r in reviews if r["criteria_name"] == c["criteria_name"]])
                              for c in crits]
        return record

    # --- compare --------------------------------------------------------------------------------

    def compare(self, a: RunRef | str, b: RunRef | str, f: VerdictFilter | None = None, *, page: int = 1,
                page_size: int = 50) -> dict[str, Any]:
        """Two runs joined on the judged content (answer × criterion, `item_key`), rows where both
        have a score, filtered by `f` on run a's side, sorted by |score_a − score_b| descending:
        {"a": runs() entry, "b": runs() entry, "total", "page", "page_size", "pages",
        "rows": [{record_pk (in a), item_key, model_id, task_type, criteria_name, criterion_group,
        score_a, score_b, diff (score_a − score_b), rationale_a, rationale_b (snippets), answer (snippet)}],
        "stats": {n, spearman, kendall, pearson, mae, exact, within1 (floats; None when undefined),
        confusion: {labels: [float …], counts: [[int …] …] (rows: a's rounded score, columns: b's)}}}.
        `only="error"` matches nothing here (failed verdicts have no score)."""
        src_a, run_a = self._resolve(a)
        src_b, run_b = self._resolve(b)
        f = f if f is not None else VerdictFilter()
        _check_page(page, page_size)
        frame, agreement = self._compare_frame(src_a, run_a["run_id"], src_b, run_b["run_id"], f)
        total = len(frame)
        part = frame.iloc[(page - 1) * page_size: page * page_size]
        with src_a.lock:
            details = _rows_by_id(src_a, part["job"].tolist())
        rationales_b = _rationales(src_b, part["verdict_b"].tolist())
        rows = []
        for d, r in zip(details, part.itertuples(index=False), strict=True):
            rows.append({
                **{k: d[k] for k in ("record_pk", "item_key", "model_id", "task_type", "criteria_name",
                                     "criterion_group", "answer")},
                "score_a": float(r.score_a), "score_b": float(r.score_b), "diff": float(r.score_a - r.score_b),
                "rationale_a": d["rationale"], "rationale_b": rationales_b.get(int(r.verdict_b), ""),
            })
        return {"a": dict(run_a), "b": dict(run_b), "total": total, "page": page, "page_size": page_size,
                "pages": _pages(total, page_size), "rows": rows, "stats": agreement}

    def _compare_frame(self, src_a: Source, run_a: int, src_b: Source, run_b: int,
                       f: VerdictFilter) -> tuple[pd.DataFrame, dict[str, Any]]:
        """The joined, sorted rows of a comparison and their agreement statistics; the last few are
        kept until either database changes."""
        key = (src_a.index, run_a, src_b.index, run_b, f, src_a.version_now(), src_b.version_now())
        with self._compare_lock:
            if key in self._compare_cache:
                self._compare_cache.move_to_end(key)
                return self._compare_cache[key]
        with src_a.lock:
            # only keys and scores here: the texts of a page's rows are read for that page alone
            plan = _plan(run_a, f, match=self._search(src_a, f), records=False, scored=True)
            sql, params = plan.select("j.rowid, j.record_pk, j.item_key, v.score")
            left = pd.DataFrame(_tuples(src_a, sql, params), columns=["job", "record_pk", "item_key", "score_a"])
        with src_b.lock:  # failed judgements have no score; verdicts_score covers this query
            right = pd.DataFrame(_tuples(src_b, "SELECT item_key, score, verdict_pk FROM verdicts WHERE run_id = ? "
                                         "AND score IS NOT NULL", (run_b,)),
                                 columns=["item_key", "score_b", "verdict_b"])
        frame = left.merge(right, on="item_key", how="inner")
        frame["absdiff"] = (frame["score_a"] - frame["score_b"]).abs()
        frame = frame.sort_values(["absdiff", "record_pk", "job"], ascending=[False, True, True]).reset_index(drop=True)
        result = (frame, _agreement(frame))
        with self._compare_lock:
            self._compare_cache[key] = result
            while len(self._compare_cache) > 4:
                self._compare_cache.popitem(last=False)
        return result

    # --- reviews --------------------------------------------------------------------------------

    def set_review(self, ref: RunRef | str, record_pk: int, criteria_name: str, score: float | None, comment: str,
                   reviewer: str) -> dict[str, Any]:
        """Store (or update: one per run × answer × criterion × reviewer) a reviewer's expert score and
        comment on a verdict, beside it — the judge's verdict is never changed. `score` must lie on
        the criterion's scale (its levels when the rubric lists them); None = a comment only. Returns
        the review dict (see `reviews`). ValueError naming the field: read-only explorer, expert
        pseudo-run, unknown answer or criterion, score off the scale, bad text (`text_problem`),
        empty reviewer, too long comment."""
        src, entry = self._resolve(ref)
        if src.kind == "experts":
            raise ValueError(f"run: {entry['ref']} holds expert scores ({src.path.name}), which take no reviews")
        if not src.writable:
            raise ValueError("reviews: this explorer is read-only (start `pollux ui` with --writable to review)")
        record_pk = _check_pk(record_pk)
        if not isinstance(criteria_name, str):
            raise ValueError(f"criteria_name: expected text, got {type(criteria_name).__name__}")
        run_id = entry["run_id"]
        with src.lock:
            job = src.conn.execute("SELECT rubrics FROM jobs WHERE run_id = ? AND record_pk = ? AND criteria_name = ?",
                                   (run_id, record_pk, criteria_name)).fetchone()
            if job is None:
                if src.conn.execute("SELECT 1 FROM jobs WHERE run_id = ? AND record_pk = ?",
                                    (run_id, record_pk)).fetchone() is None:
                    raise ValueError(f"record_pk: run {entry['ref']} has no answer {record_pk}")
                raise ValueError(f"criteria_name: answer {record_pk} of run {entry['ref']} has no criterion "
                                 f"{criteria_name!r}")
            score, comment, reviewer = rv.check_review(score, comment, reviewer, job["rubrics"])
            review_id = rv.upsert(src.conn, run_id, record_pk, criteria_name, score, comment, reviewer)
            return self._reviews(src, run_id, "AND u.review_id = ?", (review_id,))[0]

    def reviews(self, ref: RunRef | str) -> list[dict[str, Any]]:
        """Every review of a run, newest first: {review_id, run_id, record_pk, criteria_name,
        reviewer, score, comment, created_at, updated_at (ISO 8601 UTC), judge_score, model_id,
        task_type}. Empty when the database has no reviews table."""
        src, entry = self._resolve(ref)
        with src.lock:
            return self._reviews(src, entry["run_id"])

    def export_reviews(self, ref: RunRef | str) -> list[dict[str, Any]]:
        """The run's reviews as POLLUX expert rows (facts §6), one per (answer, criterion) with at least
        one scored review: instruction, reference_answer, answer, model_id, task_type, task_subtype,
        task_subsubtype, criteria_name, criteria_group, rubrics, annotations [{comment, score,
        reviewer}], criteria_score (mean of the reviewers' scores), plus id (source:record_id),
        judge_score. Written as JSONL, `pollux meta-eval FILE --scores RUN.db` reads it back as
        expert scores. Comment-only reviews are not exported (an expert row needs a score)."""
        src, entry = self._resolve(ref)
        with src.lock:
            if not rv.has_table(src.conn):
                return []
            rows = src.conn.execute(rv.SELECT_SQL.format(extra=""), (entry["run_id"],)).fetchall()
        return rv.expert_rows(rows)

    def _reviews(self, src: Source, run_id: int, extra: str = "", params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        if not rv.has_table(src.conn):
            return []
        rows = src.conn.execute(rv.SELECT_SQL.format(extra=extra), (run_id, *params)).fetchall()
        return [rv.public(row) for row in rows]


def _distinct(src: Source, table: str, column: str, where: str, params: tuple[Any, ...] = ()) -> list[str]:
    """The sorted distinct non-null values of an indexed column, one index seek per value (a
    "loose index scan": 15 criteria of 161k jobs cost 15 seeks, not a walk over 161k entries)."""
    out: list[str] = []
    sql = f"SELECT MIN({column}) FROM {table} WHERE {where}{column} > ?"
    value = src.conn.execute(sql, (*params, "")).fetchone()[0]  # "" < every other text
    while value is not None:
        out.append(value)
        value = src.conn.execute(sql, (*params, value)).fetchone()[0]
    return out


def _tuples(src: Source, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    """Rows as plain tuples (sqlite3.Row costs a third of the time on 160k rows)."""
    cursor = src.conn.cursor()
    cursor.row_factory = None
    return cursor.execute(sql, params).fetchall()


def _rows_by_id(src: Source, ids: list[int]) -> list[dict[str, Any]]:
    """The verdict rows of these job rowids, in this order, with snippets."""
    if not ids:
        return []
    sql = _ROW_SQL.format(n=SNIPPET_CHARS + 1, join_v=_JOIN_V, join_r=_JOIN_R, marks=",".join("?" * len(ids)))
    found = {row["job_rowid"]: row for row in src.conn.execute(sql, ids)}
    out = []
    for job in ids:
        row = found[job]
        out.append({
            "record_pk": row["record_pk"], "record_id": row["record_id"], "item_key": row["item_key"],
            "model_id": row["model_id"], "task_type": row["task_type"], "criteria_name": row["criteria_name"],
            "criterion_group": row["criterion_group"], "score": _num(row["score"]), "valid": bool(row["valid"]),
            "error": row["error"], "invalid_reason": row["invalid_reason"], "rationale": snippet(row["rationale"]),
            "answer": snippet(row["answer"]),
        })
    return out


def _criterion(c: Any, reviews: list[dict[str, Any]]) -> dict[str, Any]:
    scale = parse_scale(c["rubrics"])
    lo = _num(c["scale_min"]) if c["scale_min"] is not None else (scale.min if scale else None)
    hi = _num(c["scale_max"]) if c["scale_max"] is not None else (scale.max if scale else None)
    return {
        "criteria_name": c["criteria_name"], "criterion_id": c["criterion_id"], "criterion_group": c["criterion_group"],
        "rubrics": c["rubrics"], "item_key": c["item_key"], "scale_min": lo, "scale_max": hi,
        "levels": list(scale.levels) if scale else [], "score": _num(c["score"]), "head_score": _num(c["head_score"]),
        "text_score": _num(c["text_score"]), "valid": bool(c["valid"]), "invalid_reason": c["invalid_reason"],
        "error": c["error"], "rationale": c["rationale"] or "", "judged": c["verdict_pk"] is not None,
        "reviews": reviews,
    }


def _rationales(src: Source, verdict_pks: list[Any]) -> dict[int, str]:
    """Rationale snippets by verdict_pk."""
    ids = [int(p) for p in verdict_pks]
    if not ids:
        return {}
    sql = (f"SELECT verdict_pk, substr(rationale, 1, {SNIPPET_CHARS + 1}) FROM verdicts "
           f"WHERE verdict_pk IN ({','.join('?' * len(ids))})")
    with src.lock:
        return {row[0]: snippet(row[1]) for row in src.conn.execute(sql, ids)}


def _agreement(frame: pd.DataFrame) -> dict[str, Any]:
    """Spearman, Kendall, Pearson, MAE, exact and ±1 agreement (`pollux.metaeval.metrics`) and the
    confusion matrix of the rounded scores (half away from zero, as meta-eval rounds)."""
    x = frame["score_a"].to_numpy(dtype=float)
    y = frame["score_b"].to_numpy(dtype=float)
    names = ("spearman", "kendall", "pearson", "mae", "exact", "within1")
    if len(x) == 0:
        return {"n": 0, **dict.fromkeys(names), "confusion": {"labels": [], "counts": []}}
    metrics = point_metrics(x, y, np.full((len(x), 1), np.nan), warn=False)
    a, b = round_half_away(x), round_half_away(y)
    labels = sorted(set(a.tolist()) | set(b.tolist()))
    table = pd.crosstab(pd.Series(a), pd.Series(b)).reindex(index=labels, columns=labels, fill_value=0)
    return {"n": len(x), **{k: _num(metrics[k]) for k in names},
            "confusion": {"labels": labels, "counts": table.to_numpy(dtype=int).tolist()}}


_LEADER_SQL = """
SELECT r.model_id, r.record_id, r.answer_key, r.task_group, j.criteria_name, j.criterion_id, j.criterion_group,
       v.score, v.scale_min, v.scale_max, v.error
FROM jobs j CROSS JOIN verdicts v ON v.item_key = j.item_key AND +v.run_id = j.run_id
CROSS JOIN records r ON r.record_pk = j.record_pk
WHERE j.run_id = ?
"""


def _leaderboard(src: Source, run_id: int) -> dict[str, Any]:
    columns = ["model_id", "record_id", "answer_key", "task_group", "criteria_name", "criterion_id",
               "criterion_group", "score", "scale_min", "scale_max", "error"]
    with src.lock:
        df = pd.DataFrame(_tuples(src, _LEADER_SQL, (run_id,)), columns=columns)
    rules = {"gates": "binary", "out_of_scale": "drop",
             "grand_mean": "mean over task groups of the mean over criteria of normalised scores"}
    if df.empty:
        return {"models": [], "task_groups": [], "criterion_groups": [], "criteria": [], "rows": [],
                "criteria_rows": [], "rules": rules}
    agg = aggregate(df, gates="binary", out_of_scale="drop")
    group_of = (df.dropna(subset=["criterion_group"]).drop_duplicates("criteria_name")
                .set_index("criteria_name")["criterion_group"].to_dict())
    by_crit = agg.by_criterion.assign(criterion_group=agg.by_criterion["criteria_name"].map(group_of))
    by_cgroup = by_crit.dropna(subset=["criterion_group"]).groupby(["model_id", "criterion_group"])["mean"].mean()
    task_means = agg.by_group.set_index(["model_id", "task_group"])["mean"]
    rows = []
    for r in agg.leaderboard.to_dict(orient="records"):
        model = r["model_id"]
        rows.append({
            "rank": int(r["rank"]), "model_id": model, "grand_mean": _num(r["grand_mean"]),
            **{k: int(r[k]) for k in ("answers", "judgements", "counted", "gated_answers", "invalid", "errors")},
            "task_groups": {g: _num(m) for (mm, g), m in task_means.items() if mm == model},
            "criterion_groups": {g: _num(m) for (mm, g), m in by_cgroup.items() if mm == model},
        })
    matrix = agg.model_criterion_matrix()
    criteria_rows = [{"criteria_name": c, "criterion_group": group_of.get(c),
                      "means": {m: _num(matrix.at[c, m]) if m in matrix.columns else None
                                for m in agg.leaderboard["model_id"]}}
                     for c in matrix.index]
    return {
        "models": agg.leaderboard["model_id"].tolist(),
        "task_groups": sorted(agg.by_group["task_group"].unique().tolist()),
        "criterion_groups": sorted({g for g in by_cgroup.index.get_level_values(1)}),
        "criteria": sorted(matrix.index.tolist()),
        "rows": rows, "criteria_rows": criteria_rows, "rules": rules,
    }
