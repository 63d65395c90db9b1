"""The databases behind the UI: run stores opened read-only (or for reviews), expert files as stores.

Every source is one SQLite connection with the run store's schema, so every query of
`pollux.ui.queries` runs unchanged on both: a run database is opened as it is (`mode=ro` unless
reviews are writable), an expert file (POLLUX format, `pollux.metaeval.load_experts`) is loaded
into an in-memory `RunStore` as one run whose verdicts are the experts' aggregate scores.

Results that need a whole run (counts, facets, the leaderboard) are cached per source and
dropped when the database changes: SQLite's `PRAGMA data_version` changes on this connection
whenever another connection (a running `pollux evaluate`) has committed.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import numpy as np

from pollux.metaeval import load_experts
from pollux.store import (
    INDEX_NAMES,
    JOB_COLUMNS,
    RECORD_COLUMNS,
    RunStore,
    StoreError,
    check_run_db,
    insert_rows,
    missing_indexes,
)
from pollux.ui import reviews, textindex

log = logging.getLogger("pollux.ui")
T = TypeVar("T")
# The store's indexes the UI's filters rely on (defined in pollux.store); older databases lack them.
UI_INDEXES = INDEX_NAMES
MAX_CACHED = 64


@dataclass
class Source:
    """One opened database: its connection (guarded by `lock`), what it is, and its caches."""

    index: int
    path: Path
    kind: str  # "run" | "experts"
    conn: sqlite3.Connection
    writable: bool
    sidecar: str  # the full-text index file, ":memory:" for expert data
    lock: threading.RLock = field(default_factory=threading.RLock)
    fts_attached: bool = False
    version: int = -1
    cache: dict[Any, Any] = field(default_factory=dict)

    def version_now(self) -> int:
        with self.lock:
            return int(self.conn.execute("PRAGMA data_version").fetchone()[0])

    def cached(self, key: Any, compute: Callable[[], T]) -> T:
        """`compute()` once per database state (see the module docstring)."""
        with self.lock:
            version = self.version_now()
            if version != self.version:
                self.cache.clear()
                self.version = version
            if key not in self.cache:
                if len(self.cache) >= MAX_CACHED:
                    self.cache.clear()
                self.cache[key] = compute()
            return self.cache[key]

    def search_ready(self) -> None:
        """Attach and update the full-text index (call with the lock held)."""
        if not self.fts_attached:
            textindex.attach(self.conn, self.sidecar)
            self.fts_attached = True
        added = textindex.sync(self.conn)
        if added:
            log.info("%s: %d texts added to the full-text index %s", self.path, added, self.sidecar)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pollux" / "ui"


def open_run_db(index: int, path: str | Path, *, writable: bool, cache_dir: Path) -> Source:
    """A run database as a Source; ValueError when it is missing or not a pollux run store."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such run database")
    conn = _connect(path, read_only=True)
    try:
        check_run_db(conn, path)
    except StoreError as e:
        conn.close()
        raise ValueError(str(e)) from None
    if writable:
        conn.close()
        try:  # what `pollux evaluate` does on open: migrations and the current indexes
            RunStore(path).close()
        except StoreError as e:
            raise ValueError(str(e)) from None
        conn = _connect(path, read_only=False)
        reviews.ensure_table(conn)
    missing = missing_indexes(conn)
    if missing:
        log.warning("%s was written by an older pollux without the indexes the UI filters use (%s): "
                    "queries scan whole tables and are slower; opening it once with --writable (or "
                    "resuming it with pollux evaluate) adds them", path, ", ".join(missing))
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    cache_dir.mkdir(parents=True, exist_ok=True)
    sidecar = str(cache_dir / f"{path.stem}-{digest}.fts.sqlite")
    return Source(index, path, "run", conn, writable, sidecar)


def _connect(path: Path, *, read_only: bool) -> sqlite3.Connection:
    if read_only:
        conn = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True, check_same_thread=False,
                               timeout=30)
    else:
        conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
    conn.row_factory = sqlite3.Row
    return conn


def open_experts(index: int, path: str | Path) -> Source:
    """An expert file as a one-run in-memory store: one record per answer, one job and one
    "verdict" (the experts' aggregate score, per-expert scores as its rationale) per row."""
    data = load_experts(path)
    frame = data.frame
    store = RunStore(":memory:")
    name = Path(path).name
    run, _ = store.open_run(f"experts:{name}", {"experts": str(path), "rows": len(frame)})
    first = frame.drop_duplicates("answer_id")
    records = [(int(r.answer_id) + 1, name, str(int(r.answer_id) + 1), r.model_id, int(r.answer_id) + 1,
                f"answer-{r.answer_id}", r.instruction, r.answer, r.reference_answer, r.task_type or None,
                None, None, None, "{}") for r in first.itertuples(index=False)]
    jobs, verdicts = [], []
    for position, (r, experts) in enumerate(zip(frame.itertuples(index=False), data.annotations, strict=True)):
        jobs.append((run.run_id, int(r.answer_id) + 1, r.criteria_name, None, r.group, r.rubrics, r.key, position))
        verdicts.append(_expert_verdict(run.run_id, name, r, experts))
    with store.transaction():
        insert_rows(store.conn, "records", RECORD_COLUMNS, records)
        insert_rows(store.conn, "jobs", JOB_COLUMNS, jobs)
        insert_rows(store.conn, "verdicts", _EXPERT_VERDICT_COLUMNS, verdicts)
    log.info("%s: %d expert rows (%d skipped) loaded as run %d", path, len(frame), len(data.skipped), run.run_id)
    return Source(index, Path(path), "experts", store.conn, False, ":memory:")


_EXPERT_VERDICT_COLUMNS = ("run_id", "item_key", "judge", "criteria_name", "score", "head_score", "scale_min",
                           "scale_max", "valid", "invalid_reason", "rationale", "raw_text", "prompt_tokens",
                           "completion_tokens", "time_s", "created_at")


def _expert_verdict(run_id: int, name: str, r: Any, experts: np.ndarray) -> tuple[Any, ...]:
    score = None if math.isnan(r.expert) else float(r.expert)
    lo = None if math.isnan(r.scale_min) else float(r.scale_min)
    hi = None if math.isnan(r.scale_max) else float(r.scale_max)
    valid = score is not None and (lo is None or hi is None or lo <= score <= hi)
    reason = None if valid else ("not applicable (-1)" if score is None else f"score {score:g} outside the scale")
    scores = ", ".join(f"{s:g}" for s in experts if not math.isnan(s))
    rationale = f"Оценки экспертов: {scores}" if scores else ""
    return (run_id, r.key, f"experts:{name}", r.criteria_name, score, score, lo, hi, int(valid), reason, rationale,
            "", 0, 0, 0.0, 0.0)
