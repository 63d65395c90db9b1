"""The SQLite run store: WAL, runs by configuration, one verdict per (item, judge, run), read_verdicts."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pandas as pd
import pytest

import pollux.store as store_module
import pollux.ui as ui_package
from pollux.store import JobRow, RunStore, StoreError, read_runs, read_verdicts
from pollux.ui import reviews, sources
from pollux.verdicts import Verdict

CONFIG = {"judge": "j", "engine": {"sampling": {"temperature": 0.0}}, "pollux_version": "0.1.0"}


def record(i: int, model: str = "m") -> dict:
    return {
        "source": "a.jsonl", "record_id": str(i), "model_id": model, "line": i, "answer_key": f"ak{i}{model}",
        "instruction": f"Вопрос {i}", "answer": f"Ответ {i}", "reference_answer": "", "task_type": "Т",
        "task_subtype": None, "task_subsubtype": None, "task_group": "Г", "extra_json": "{}",
    }


def fill(store: RunStore, run_id: int, n: int = 2) -> list[str]:
    keys = []
    for i in range(n):
        pk = store.upsert_record(record(i))
        jobs = [JobRow(pk, c, f"id_{c}", "general", "0: a\n\n1: b", f"key-{i}-{c}", pos)
                for pos, c in enumerate(("К1", "К2"))]
        store.add_jobs(run_id, jobs)
        keys += [j.item_key for j in jobs]
    return keys


def test_wal_and_schema(tmp_path: Path):
    db = tmp_path / "run.db"
    with RunStore(db):
        pass
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"runs", "records", "jobs", "verdicts"} <= tables
    conn.close()


def test_runs_resume_by_config_and_refuse_a_different_one(tmp_path: Path):
    db = tmp_path / "run.db"
    with RunStore(db) as store:
        run, created = store.open_run("j", CONFIG)
        assert created and run.run_id == 1
        again, created = store.open_run("j", dict(CONFIG))
        assert not created and again.run_id == 1
        other = {**CONFIG, "engine": {"sampling": {"temperature": 0.1}}}
        with pytest.raises(StoreError) as e:
            store.open_run("j", other)
        assert "engine.sampling.temperature: 0.0 → 0.1" in str(e.value)
        assert "--new-run" in str(e.value)
        second, created = store.open_run("j", other, new_run=True)
        assert created and second.run_id == 2
        # both configurations now resume their own run
        assert store.open_run("j", CONFIG)[0].run_id == 1
        assert store.open_run("j", other)[0].run_id == 2
    assert [r.run_id for r in read_runs(db)] == [1, 2]


def test_verdicts_are_written_once_and_errors_are_retried(tmp_path: Path):
    db = tmp_path / "run.db"
    with RunStore(db) as store:
        run, _ = store.open_run("j", CONFIG)
        keys = fill(store, run.run_id)
        ok = Verdict("К1", head_score=1.0, rationale="хорошо", valid=True, scale_min=0, scale_max=1, judge="j")
        assert store.write_verdict(run.run_id, keys[0], ok)
        # a second successful verdict for the same (item, judge, run) is refused, the first is kept
        assert not store.write_verdict(run.run_id, keys[0], Verdict("К1", head_score=0.0, judge="j"))
        failed = Verdict("К2", error="boom", judge="j")
        assert store.write_verdict(run.run_id, keys[1], failed)
        assert store.done_keys(run.run_id, "j") == {keys[0]}
        # a failed one is replaced by a later success
        assert store.write_verdict(run.run_id, keys[1], Verdict("К2", text_score=1.0, valid=True, judge="j"))
        assert store.done_keys(run.run_id, "j") == {keys[0], keys[1]}
        with pytest.raises(sqlite3.IntegrityError):
            store.conn.execute(
                "INSERT INTO verdicts (run_id, item_key, judge, criteria_name, valid, rationale, raw_text, "
                "prompt_tokens, completion_tokens, time_s, created_at) VALUES (?, ?, 'j', 'К1', 1, '', '', 0, 0, 0, 0)",
                (run.run_id, keys[0]),
            )
        counts = store.counts(run.run_id)
        assert counts == {"jobs": 4, "items": 4, "judged": 2, "failed": 0}

    df = read_verdicts(db)
    assert len(df) == 2
    first = df[df["item_key"] == keys[0]].iloc[0]
    assert first["score"] == 1.0 and first["rationale"] == "хорошо" and bool(first["valid"])
    assert first["model_id"] == "m" and first["record_id"] == "0" and first["criterion_id"] == "id_К1"
    for col in ("item_key", "judge", "criteria_name", "criterion_id", "model_id", "task_type", "score", "head_score",
                "text_score", "valid", "error", "rationale", "record_id", "instruction", "answer"):
        assert col in df.columns
    assert "answer" not in read_verdicts(db, texts=False).columns


def test_shared_content_is_judged_once_but_read_per_job(tmp_path: Path):
    db = tmp_path / "run.db"
    with RunStore(db) as store:
        run, _ = store.open_run("j", CONFIG)
        a = store.upsert_record(record(1, "alpha"))
        b = store.upsert_record(record(1, "beta"))
        store.add_jobs(run.run_id, [JobRow(a, "К", None, None, "0: a\n\n1: b", "same", 0),
                                    JobRow(b, "К", None, None, "0: a\n\n1: b", "same", 0)])
        store.write_verdict(run.run_id, "same", Verdict("К", head_score=1.0, valid=True, judge="j"))
    df = read_verdicts(db)
    assert sorted(df["model_id"]) == ["alpha", "beta"]
    assert (df["score"] == 1.0).all()


def test_a_record_keeps_its_texts_and_a_changed_answer_is_another_record(tmp_path: Path):
    with RunStore(tmp_path / "run.db") as store:
        pk = store.upsert_record(record(1))
        moved = {**record(1), "line": 9, "task_group": "Другая"}
        assert store.upsert_record(moved) == pk  # the same answer: line and task fields refreshed
        row = store.conn.execute("SELECT line, task_group, answer FROM records WHERE record_pk=?", (pk,)).fetchone()
        assert tuple(row) == (9, "Другая", "Ответ 1")
        changed = {**record(1), "answer": "Исправленный ответ", "answer_key": "ak-new"}
        new_pk = store.upsert_record(changed)
        assert new_pk != pk
        assert store.conn.execute("SELECT answer FROM records WHERE record_pk=?", (pk,)).fetchone()[0] == "Ответ 1"


def test_replace_jobs_retires_the_jobs_of_an_older_answer_in_this_run_only(tmp_path: Path):
    db = tmp_path / "run.db"
    with RunStore(db) as store:
        run1, _ = store.open_run("j", CONFIG)
        run2, _ = store.open_run("j", {**CONFIG, "x": 1}, new_run=True)
        old = store.upsert_record(record(1))
        for run in (run1, run2):
            store.replace_jobs(run.run_id, old, [JobRow(old, "К1", None, None, "r", "k-old-1", 0),
                                                 JobRow(old, "К2", None, None, "r", "k-old-2", 1)])
        new = store.upsert_record({**record(1), "answer": "Новый", "answer_key": "ak-new"})
        store.replace_jobs(run2.run_id, new, [JobRow(new, "К1", None, None, "r", "k-new-1", 0)])
        jobs = store.conn.execute("SELECT run_id, record_pk, item_key FROM jobs ORDER BY run_id, item_key").fetchall()
    assert [tuple(j) for j in jobs] == [(1, old, "k-old-1"), (1, old, "k-old-2"), (2, new, "k-new-1")]


def test_a_schema_1_database_is_migrated_with_its_rows(tmp_path: Path):
    from pollux.store import _SCHEMA

    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.executescript(_SCHEMA.replace("UNIQUE (source, record_id, model_id, answer_key)",
                                       "UNIQUE (source, record_id, model_id)"))
    conn.execute("INSERT INTO store_meta VALUES ('schema_version', '1')")
    rec = record(0)
    conn.execute(f"INSERT INTO records ({', '.join(rec)}) VALUES ({', '.join('?' * len(rec))})", list(rec.values()))
    conn.commit()
    conn.close()
    with RunStore(db) as store:
        run, _ = store.open_run("j", CONFIG)
        keys = fill(store, run.run_id, n=1)  # upserts record 0: the migrated row, not a new one
        store.write_verdict(run.run_id, keys[0], Verdict("К1", head_score=1.0, valid=True, judge="j"))
    with RunStore(db) as store:  # reopening a migrated store is a no-op
        pk = store.upsert_record({**record(0), "answer": "Другой", "answer_key": "other"})
        assert store.conn.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 2 and pk == 2
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT value FROM store_meta WHERE key='schema_version'").fetchone()[0] == "3"
    conn.close()
    assert read_verdicts(db)["answer"].tolist() == ["Ответ 0"]


def test_a_schema_2_database_gains_the_expected_score_columns(tmp_path: Path):
    from pollux.store import _SCHEMA

    db = tmp_path / "v2.db"
    conn = sqlite3.connect(db)
    conn.executescript(_SCHEMA.replace("    expected_score REAL,\n    score_probs TEXT,\n", ""))
    assert "expected_score" not in {r[1] for r in conn.execute("PRAGMA table_info(verdicts)")}
    conn.execute("INSERT INTO store_meta VALUES ('schema_version', '2')")
    conn.commit()
    conn.close()
    with RunStore(db) as store:
        run, _ = store.open_run("j", CONFIG)
        keys = fill(store, run.run_id, n=2)
        store.write_verdict(run.run_id, keys[0], Verdict("К1", head_score=1.0, valid=True, judge="j"))
        store.write_verdict(run.run_id, keys[1], Verdict("К1", text_score=2.0, expected_score=1.75,
                                                         score_probs={"1": 0.25, "2": 0.75}, valid=True, judge="j"))
    df = read_verdicts(db).sort_values("item_key")
    by_key = dict(zip(df["item_key"], zip(df["expected_score"], df["score_probs"], strict=True), strict=True))
    assert by_key[keys[1]] == (1.75, '{"1": 0.25, "2": 0.75}')
    assert pd.isna(by_key[keys[0]][0]) and pd.isna(by_key[keys[0]][1])


def test_not_a_store(tmp_path: Path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError):
        RunStore(junk)
    with pytest.raises(StoreError, match="no such run database"):
        read_verdicts(tmp_path / "missing.db")
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    with pytest.raises(StoreError, match="not a pollux run database"):
        read_verdicts(empty)


def test_the_run_database_schema_is_defined_once(tmp_path: Path):
    """Issue 24 item 5: the store's names (tables, columns, indexes, the reviews table) are what a
    store really has, and the UI uses them instead of a copy (no DDL of run tables in pollux.ui)."""
    with RunStore(tmp_path / "run.db") as store:
        def columns(table: str) -> tuple[str, ...]:
            return tuple(r[1] for r in store.conn.execute(f"PRAGMA table_info({table})"))

        assert columns("records") == store_module.RECORD_COLUMNS and columns("jobs") == store_module.JOB_COLUMNS
        assert set(store_module.RUN_TABLES) <= store_module.table_names(store.conn)
        assert store_module.missing_indexes(store.conn) == [] and len(store_module.INDEX_NAMES) == 7
        reviews.ensure_table(store.conn)
        assert reviews.has_table(store.conn) and store_module.REVIEWS_TABLE == "ui_reviews"
    assert sources.UI_INDEXES is store_module.INDEX_NAMES
    for path in Path(ui_package.__file__).parent.glob("*.py"):
        ddl = re.findall(r"CREATE (?:VIRTUAL )?(?:TABLE|INDEX) IF NOT EXISTS ([\w.]+)", path.read_text("utf-8"))
        assert all(name.startswith("fts.") for name in ddl), (path.name, ddl)  # only the search sidecar's own
