"""The run's SQLite store: one table per stage, rows keyed by content, written in atomic chunks.

Each stage table is `(key TEXT PRIMARY KEY, data TEXT)` with the row as JSON. The driver is the only
writer; it inserts each result batch in one transaction with `INSERT OR IGNORE`, so a batch delivered
twice (an executor retry) is a no-op and a kill -9 loses at most the batches not yet committed —
which a rerun computes again, because it only asks for keys the table lacks. WAL mode keeps readers
(`pollux synth status`) from blocking the writer.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

Row = dict[str, Any]

TABLES = ("instructions", "instruction_failures", "filtered", "rejects", "criteria", "answers",
          "answer_failures", "annotations", "sample")


class Store:
    """A run's tables in one SQLite file (see module doc)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        for table in TABLES:
            self.conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (key TEXT PRIMARY KEY, data TEXT NOT NULL)")
        self.conn.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, data TEXT NOT NULL)")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, table: str, rows: Iterable[Row]) -> int:
        """Insert rows (each with a "key") in one transaction; existing keys are left as they are.
        Returns how many rows were new."""
        values = [(row["key"], json.dumps(row, ensure_ascii=False, sort_keys=True)) for row in rows]
        if not values:
            return 0
        with self._transaction():
            before = self.conn.total_changes
            self.conn.executemany(f"INSERT OR IGNORE INTO {_table(table)} (key, data) VALUES (?, ?)", values)
            return self.conn.total_changes - before

    def replace(self, table: str, rows: Iterable[Row]) -> None:
        """Make the table hold exactly these rows, atomically (whole-set stages: filter, sample)."""
        values = [(row["key"], json.dumps(row, ensure_ascii=False, sort_keys=True)) for row in rows]
        with self._transaction():
            self.conn.execute(f"DELETE FROM {_table(table)}")
            self.conn.executemany(f"INSERT INTO {_table(table)} (key, data) VALUES (?, ?)", values)

    def delete(self, table: str, keys: Iterable[str]) -> None:
        with self._transaction():
            self.conn.executemany(f"DELETE FROM {_table(table)} WHERE key = ?", [(k,) for k in keys])

    def keys(self, table: str) -> set[str]:
        return {k for (k,) in self.conn.execute(f"SELECT key FROM {_table(table)}")}

    def rows(self, table: str) -> list[Row]:
        """All rows, in key order (every stage reads its input in this order: deterministic)."""
        return list(self.iter_rows(table))

    def iter_rows(self, table: str) -> Iterator[Row]:
        for (data,) in self.conn.execute(f"SELECT data FROM {_table(table)} ORDER BY key"):
            yield json.loads(data)

    def count(self, table: str) -> int:
        return int(self.conn.execute(f"SELECT COUNT(*) FROM {_table(table)}").fetchone()[0])

    def set_meta(self, name: str, value: Any) -> None:
        with self._transaction():
            self.conn.execute("INSERT OR REPLACE INTO meta (name, data) VALUES (?, ?)",
                              (name, json.dumps(value, ensure_ascii=False, sort_keys=True)))

    def get_meta(self, name: str, default: Any = None) -> Any:
        found = self.conn.execute("SELECT data FROM meta WHERE name = ?", (name,)).fetchone()
        return json.loads(found[0]) if found else default

    def _transaction(self) -> _Transaction:
        return _Transaction(self.conn)


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT, ROLLBACK on error: a chunk is written whole or not at all."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


def _table(name: str) -> str:
    if name not in TABLES:
        raise ValueError(f"unknown synth table {name!r}")
    return name
