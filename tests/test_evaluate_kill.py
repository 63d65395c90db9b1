"""Crash safety of the real `pollux evaluate` CLI: SIGKILL at two points (before the first verdict
and mid-run), resume, every (item, criterion) judged exactly once; SIGINT stops cleanly with
exit code 130. Each run is a new process that loads torch and the judge, the bulk of the time."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

R2 = "0: плохо.\n\n1: средне.\n\n2: хорошо."
CRITERIA = ["Полезность", "Грамотность", "Доступность", "Проактивность", "Общее впечатление"]

pytestmark = pytest.mark.slow


def pollux_cmd() -> list[str]:
    script = Path(sys.executable).parent / "pollux"
    return [str(script)] if script.exists() else [sys.executable, "-c", "from pollux.cli import main; main()"]


def write_input(path: Path, n_answers: int) -> None:
    crit = [{"criteria_name": c, "rubrics": R2} for c in CRITERIA]
    with path.open("w", encoding="utf-8") as f:
        for i in range(n_answers):
            row = {"id": f"q{i}", "model_id": ["alpha", "beta"][i % 2], "instruction": f"Вопрос номер {i}: что такое {i}?",
                   "answer": f"Это число {i}, и вот почему.", "criteria": crit}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def count(db: Path, sql: str) -> int:
    if not db.exists():
        return -1
    try:
        conn = sqlite3.connect(db, timeout=5)
        try:
            return conn.execute(sql).fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:  # not created yet
        return -1


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())


def wait_until(proc: subprocess.Popen, db: Path, sql: str, threshold: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = count(db, sql)
        if n >= threshold or proc.poll() is not None:
            return n
        time.sleep(0.02)
    raise AssertionError(f"no progress to {threshold} within {timeout}s")


def test_sigkill_at_several_points_then_resume(tmp_path: Path, tiny_judge_path: Path):
    src, db = tmp_path / "answers.jsonl", tmp_path / "run.db"
    write_input(src, 6)  # 6 answers × 5 criteria = 30 judgements
    args = [*pollux_cmd(), "evaluate", str(src), "--judge", str(tiny_judge_path), "--db", str(db),
            "--dtype", "float32", "--device", "cpu", "--max-new-tokens", "8", "--batch-size", "2",
            "--chunk-size", "4", "--no-progress"]
    verdicts_sql = "SELECT COUNT(*) FROM verdicts"
    kills = []
    # 1) after the run is opened, before (or just as) the first verdict lands
    proc = start(args)
    wait_until(proc, db, "SELECT COUNT(*) FROM jobs", 30)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kills.append(count(db, verdicts_sql))
    # 2) once more, mid-run: after 3 more verdicts were committed
    before = max(count(db, verdicts_sql), 0)
    proc = start(args)
    wait_until(proc, db, verdicts_sql, before + 3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    kills.append(count(db, verdicts_sql))
    assert kills[0] < kills[1] < 30, kills

    final = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    summary = json.loads(final.stdout)
    assert summary["already_done"] == kills[-1]
    assert summary["already_done"] + summary["judged"] == 30 and summary["remaining"] == 0

    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # every (item, criterion) has exactly one verdict, and no verdict is orphaned or duplicated
    per_job = conn.execute(
        "SELECT j.record_pk, j.criteria_name, COUNT(v.verdict_pk) FROM jobs j "
        "LEFT JOIN verdicts v ON v.item_key = j.item_key AND v.run_id = j.run_id GROUP BY j.record_pk, j.criteria_name"
    ).fetchall()
    assert len(per_job) == 30 and all(n == 1 for *_, n in per_job)
    assert conn.execute("SELECT COUNT(*), COUNT(DISTINCT item_key) FROM verdicts").fetchone() == (30, 30)
    assert conn.execute("SELECT COUNT(*) FROM verdicts WHERE error IS NOT NULL").fetchone()[0] == 0
    assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1
    conn.close()


def test_sigint_stops_cleanly(tmp_path: Path, tiny_judge_path: Path):
    src, db = tmp_path / "answers.jsonl", tmp_path / "run.db"
    write_input(src, 6)
    args = [*pollux_cmd(), "evaluate", str(src), "--judge", str(tiny_judge_path), "--db", str(db),
            "--dtype", "float32", "--device", "cpu", "--max-new-tokens", "8", "--batch-size", "2",
            "--chunk-size", "4", "--no-progress"]
    proc = start(args)
    wait_until(proc, db, "SELECT COUNT(*) FROM verdicts", 4)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "resume" in err
    summary = json.loads(out)
    assert summary["interrupted"] and 4 <= summary["judged"] < 30
    assert summary["remaining"] == 30 - summary["judged"]
    stored = count(db, "SELECT COUNT(*) FROM verdicts")
    assert stored == summary["judged"]
