"""`pollux synth` end to end on real processes: two fake OpenAI-compatible servers (tests/synth_fakes.py)
for generators, answer models and the teacher, plus a tiny pollux checkpoint as the third answer model;
then `pollux train` on the export; then the same run killed with SIGKILL during `answers` and again
during `annotate`, resumed, and compared byte for byte with the uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from pollux.metaeval.domains import DEFAULT_OOD_TASKS
from pollux.synth import load_config, run
from pollux.synth.export import TRAIN_COLUMNS
from synth_fakes import FakeServer

pytestmark = pytest.mark.slow

TASKS = ["Написать код / Python", "Написать код / SQL", "Проанализировать код / Python", "Угадать объект по описанию",
         "Проверить факт", "Решить задачу (STEM) / Физика", "Анализ данных",
         "Изменить код / Python"]  # the last one is an out-of-domain (held-out) task type


def write_config(folder: Path, gen_url: str, ans_url: str, tiny: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tasks = ", ".join(f'"{t}"' for t in TASKS)
    path = folder / "synth.toml"
    path.write_text(f"""
[run]
dir = "run"
seed = 7
[taxonomy]
tasks = [{tasks}]
[models.gen-a]
model = "gen-a"
base_url = "{gen_url}"
[models.gen-b]
model = "gen-b"
base_url = "{gen_url}"
[models.ans-a]
model = "ans-a"
base_url = "{ans_url}"
concurrency = 4
[models.ans-b]
model = "ans-b"
base_url = "{ans_url}"
concurrency = 4
[models.tiny]
model = "local:{tiny}"
dtype = "float32"
device = "cpu"
[models.teacher]
model = "teacher"
base_url = "{ans_url}"
concurrency = 16
[instructions]
generators = ["gen-a", "gen-b"]
[answers]
models = ["ans-a", "ans-b", "tiny"]
max_tokens = 10
[annotate]
teacher = "teacher"
[sample]
size = 300
[executor]
batch_size = 16
""", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def servers() -> Any:
    with FakeServer() as gen, FakeServer("--delay", "0.01") as ans:
        yield gen.url, ans.url


@pytest.fixture(scope="module")
def reference(servers: tuple[str, str], tiny_judge_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The uninterrupted run, in process, through the Python API."""
    config = load_config(write_config(tmp_path_factory.mktemp("ref"), *servers, tiny_judge_path))
    started = time.monotonic()
    result = run(config)
    return {"config": config, "result": result, "seconds": time.monotonic() - started,
            "export": config.run_dir / "export" / "train.parquet"}


def test_end_to_end_then_pollux_train(reference: dict, tiny_judge_path: Path, tmp_path: Path) -> None:
    result, config = reference["result"], reference["config"]
    import sqlite3 as _sqlite3

    db = _sqlite3.connect(config.db_path)
    instructions = [r for (r,) in db.execute("SELECT data FROM instructions")]
    assert result["instructions"]["total"] >= 40 and len(instructions) >= 40
    leaves = {r for (r,) in db.execute("SELECT json_extract(data, '$.task_leaf') FROM instructions")}
    assert len(leaves) >= 5
    rejected = result["filter"]["rejected"]
    assert rejected.get("non_russian", 0) >= 1 and rejected.get("exact_duplicate", 0) >= 1
    kept = result["filter"]["kept"]
    models = dict(db.execute("SELECT json_extract(data, '$.answer_model'), COUNT(*) FROM answers GROUP BY 1"))
    assert models == {"ans-a": kept, "ans-b": kept, "tiny": kept}
    assert sum(result["annotate"]["dropped"].values()) >= 1  # broken teacher replies, asked again, some dropped
    retried = db.execute("SELECT COUNT(*) FROM annotations WHERE json_extract(data, '$.attempts') > 1").fetchone()[0]
    assert retried >= 10

    table = pq.read_table(reference["export"]).to_pylist()
    assert len(table) == result["sample"]["selected"] == min(300, result["sample"]["candidates"])
    assert set(TRAIN_COLUMNS) <= set(table[0])
    held_out_made = {r for (r,) in db.execute("SELECT json_extract(data, '$.task_type') FROM filtered")} & set(
        DEFAULT_OOD_TASKS)
    assert held_out_made == {"Изменить код"}  # made, annotated …
    assert not {r["task_type"] for r in table} & set(DEFAULT_OOD_TASKS)  # … and never exported
    assert result["sample"]["held_out_excluded"] > 0
    assert {r["answer_model"] for r in table} == {"ans-a", "ans-b", "tiny"}
    assert all(r["instruction_prompt"].startswith("instruction@") and r["rationale"] for r in table)
    summary = (reference["export"].parent / "summary.html").read_text(encoding="utf-8")
    assert summary.count("<svg") >= 2

    out = tmp_path / "trained"
    proc = subprocess.run([sys.executable, "-m", "pollux.cli", "train", "--model", str(tiny_judge_path), "--train",
                           str(reference["export"]), "--output", str(out), "--max-steps", "2", "--batch-size", "2",
                           "--micro-batch-size", "2", "--lr", "1e-4"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "final" / "config.json").is_file()


def _count(db: Path, table: str) -> int:
    try:
        with sqlite3.connect(db, timeout=1) as conn:
            return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def _run_until(config: Path, db: Path, table: str, at_least: int, below: int) -> None:
    """Start `pollux synth run CONFIG` and SIGKILL it once `table` holds between the two counts."""
    proc = subprocess.Popen([sys.executable, "-m", "pollux.cli", "synth", "run", str(config), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        n = _count(db, table)
        if at_least <= n < below:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"never saw {table} with {at_least}..{below - 1} rows (exit {proc.poll()}): "
                         f"{proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")


def test_kill_9_during_answers_and_annotate_then_resume_gives_the_same_export(
        reference: dict, servers: tuple[str, str], tiny_judge_path: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "crash", *servers, tiny_judge_path)
    db = tmp_path / "crash" / "run" / "synth.db"
    total_answers = reference["result"]["answers"]["total"]
    total_annotations = reference["result"]["annotate"]["total"]
    _run_until(config, db, "answers", 1, total_answers)
    answers_after_kill = _count(db, "answers")
    _run_until(config, db, "annotations", 1, total_annotations)
    annotations_after_kill = _count(db, "annotations")
    assert 0 < annotations_after_kill < total_annotations and answers_after_kill < total_answers
    proc = subprocess.run([sys.executable, "-m", "pollux.cli", "synth", "run", str(config), "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = json.loads(proc.stdout)  # the last run asked only for what the killed ones had not stored
    assert resumed["answers"]["already_done"] == total_answers and resumed["answers"]["new"] == 0
    assert resumed["annotate"]["already_done"] >= annotations_after_kill
    assert resumed["annotate"]["new"] == total_annotations - resumed["annotate"]["already_done"]

    export = tmp_path / "crash" / "run" / "export" / "train.parquet"
    assert export.read_bytes() == reference["export"].read_bytes()  # same config + seed: byte-identical
    keys = pq.read_table(export, columns=["key"]).column("key").to_pylist()
    reference_keys = pq.read_table(reference["export"], columns=["key"]).column("key").to_pylist()
    assert len(keys) == len(set(keys)) == len(reference_keys)  # 0 duplicated …
    assert set(keys) == set(reference_keys)  # … 0 lost
    for table in ("instructions", "answers", "annotations"):
        assert _count(db, table) == _count(reference["config"].db_path, table)
