"""Full-text search over a run database's answers and rationales: SQLite FTS5 in a sidecar file.

Why a sidecar and not a table in the run store: the UI opens run databases read-only, databases
written by older pollux versions have no such table, and `pollux evaluate` should not pay for an
index only the UI uses. So the index is a separate SQLite file (in the user's cache folder),
ATTACHed to the UI's connection as `fts` and filled by plain SQL from the run store — no row
travels through Python, 161k rationales are indexed in a few seconds on first use.

It is kept in sync, not rebuilt: before each search, answers with a `record_pk` and verdicts with
a `verdict_pk` above the last indexed ones are added (both keys only grow). A failed verdict may
later be replaced in place by a successful attempt (same `verdict_pk`), so failed verdicts are
remembered and indexed once they succeed. A database replaced by another file under the same
name is detected by its first run (creation time and configuration hash) and re-indexed.

Texts are indexed with ё folded to е (FTS5's unicode61 tokenizer folds case, not ё), and a query
is a list of words, all required, each matched as a prefix (Russian inflects: "ответ" finds
"ответа").
"""

from __future__ import annotations

import re
import sqlite3

_FOLD = "replace(replace({col}, 'ё', 'е'), 'Ё', 'Е')"
_TABLES = """
CREATE TABLE IF NOT EXISTS fts.meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS fts.failed (verdict_pk INTEGER PRIMARY KEY);
CREATE VIRTUAL TABLE IF NOT EXISTS fts.answers USING fts5(answer, content='', tokenize='unicode61');
CREATE VIRTUAL TABLE IF NOT EXISTS fts.rationales USING fts5(rationale, content='', tokenize='unicode61');
"""
MAX_WORDS = 16
# Failed verdicts that have since succeeded (CROSS JOIN: without it SQLite scans every verdict).
RECOVERED_SQL = ("SELECT f.verdict_pk FROM fts.failed f CROSS JOIN main.verdicts v ON v.verdict_pk = f.verdict_pk "
                 "WHERE v.error IS NULL")


def fts_query(text: str) -> str:
    """A user's search text as an FTS5 query: every word required, each a prefix. ValueError
    naming `q` when there is no word in it."""
    words = re.findall(r"\w+", text.lower().replace("ё", "е"))
    if not words:
        raise ValueError(f"q: no word to search for in {text!r}")
    if len(words) > MAX_WORDS:
        raise ValueError(f"q: at most {MAX_WORDS} words, got {len(words)}")
    return " ".join(f'"{w}"*' for w in words)


def attach(conn: sqlite3.Connection, sidecar: str) -> None:
    """ATTACH the index file (":memory:" for an in-memory database) as `fts` and create its tables."""
    target = sidecar if sidecar == ":memory:" else f"file:{sidecar}?mode=rwc"
    conn.execute("ATTACH DATABASE ? AS fts", (target,))
    conn.executescript(_TABLES)


def sync(conn: sqlite3.Connection) -> int:
    """Bring the attached index up to date with the run store; returns how many texts were added.

    Safe with other processes on the same index file: the index's write lock is taken before its
    watermarks are read, and rows are added up to the maxima read then, never beyond."""
    if _is_current(conn):
        return 0
    with conn:
        conn.execute("INSERT OR REPLACE INTO fts.meta VALUES ('lock', '')")  # the write lock, first
        meta = dict(conn.execute("SELECT key, value FROM fts.meta").fetchall())
        fingerprint = _fingerprint(conn)
        if meta.get("fingerprint") != fingerprint:  # a new index, or another database under this name
            for table in ("answers", "rationales"):
                conn.execute(f"INSERT INTO fts.{table} ({table}) VALUES ('delete-all')")
            conn.execute("DELETE FROM fts.failed")
            meta = {}
        old_records, old_verdicts = int(meta.get("record_max", 0)), int(meta.get("verdict_max", 0))
        records, verdicts = _maxima(conn)
        added = conn.execute(f"INSERT INTO fts.answers (rowid, answer) SELECT record_pk, {_FOLD.format(col='answer')} "
                             "FROM main.records WHERE record_pk > ? AND record_pk <= ?",
                             (old_records, records)).rowcount
        added += _add_rationales(conn, "verdict_pk > ? AND verdict_pk <= ? AND error IS NULL", (old_verdicts, verdicts))
        conn.execute("INSERT OR IGNORE INTO fts.failed SELECT verdict_pk FROM main.verdicts "
                     "WHERE verdict_pk > ? AND verdict_pk <= ? AND error IS NOT NULL", (old_verdicts, verdicts))
        for (pk,) in conn.execute(RECOVERED_SQL).fetchall():
            added += _add_rationales(conn, "verdict_pk = ?", (pk,))
            conn.execute("DELETE FROM fts.failed WHERE verdict_pk = ?", (pk,))
        conn.executemany("INSERT OR REPLACE INTO fts.meta VALUES (?, ?)",
                         [("fingerprint", fingerprint), ("record_max", str(records)), ("verdict_max", str(verdicts))])
    return added


def _is_current(conn: sqlite3.Connection) -> bool:
    """The index holds every text now (a cheap check without the write lock)."""
    meta = dict(conn.execute("SELECT key, value FROM fts.meta").fetchall())
    if meta.get("fingerprint") != _fingerprint(conn):
        return False
    indexed = (int(meta.get("record_max", 0)), int(meta.get("verdict_max", 0)))
    return indexed == _maxima(conn) and conn.execute(RECOVERED_SQL).fetchone() is None


def _maxima(conn: sqlite3.Connection) -> tuple[int, int]:
    records = conn.execute("SELECT COALESCE(MAX(record_pk), 0) FROM main.records").fetchone()[0]
    verdicts = conn.execute("SELECT COALESCE(MAX(verdict_pk), 0) FROM main.verdicts").fetchone()[0]
    return int(records), int(verdicts)


def _add_rationales(conn: sqlite3.Connection, where: str, params: tuple[int, ...]) -> int:
    sql = (f"INSERT INTO fts.rationales (rowid, rationale) SELECT verdict_pk, {_FOLD.format(col='rationale')} "
           f"FROM main.verdicts WHERE {where}")
    return int(conn.execute(sql, params).rowcount)


def _fingerprint(conn: sqlite3.Connection) -> str:
    row = conn.execute("SELECT created_at, config_hash FROM main.runs ORDER BY run_id LIMIT 1").fetchone()
    return "" if row is None else f"{row[0]!r}:{row[1]}"


def matching_jobs_sql() -> str:
    """A subquery: the rowids of a run's jobs whose answer or rationale matches; parameters
    (run_id, query, run_id, query)."""
    return ("SELECT jm.rowid FROM main.jobs jm WHERE jm.run_id = ? AND jm.record_pk IN "
            "(SELECT rowid FROM fts.answers WHERE answers MATCH ?) "
            "UNION SELECT jr.rowid FROM main.verdicts vr CROSS JOIN main.jobs jr "
            "ON jr.run_id = +vr.run_id AND jr.item_key = vr.item_key "
            "WHERE +vr.run_id = ? AND vr.verdict_pk IN (SELECT rowid FROM fts.rationales WHERE rationales MATCH ?)")
