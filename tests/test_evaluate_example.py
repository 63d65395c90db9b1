"""README's main command on examples/answers.jsonl, end to end through the real CLI (tiny judge)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "answers.jsonl"


def test_example_rows_expand_through_the_taxonomy():
    from pollux.evaluate import expand

    exp = expand([EXAMPLE])
    assert exp.problems == []
    assert len(exp.records) == 24
    assert {r.fields["model_id"] for r in exp.records} == {"alpha-7b", "beta-3b"}
    assert all(r.fields["task_group"] for r in exp.records)
    assert sum(len(r.items) for r in exp.records) == 266


@pytest.mark.slow
def test_readme_command_end_to_end(tmp_path: Path, tiny_judge_path: Path):
    pollux = Path(sys.executable).parent / "pollux"
    cmd = [str(pollux)] if pollux.exists() else [sys.executable, "-c", "from pollux.cli import main; main()"]
    db, out = tmp_path / "run.db", tmp_path / "report"
    command = (
        f"{' '.join(cmd)} evaluate {EXAMPLE} --judge {tiny_judge_path} --db {db} --max-new-tokens 4 --device cpu "
        f"&& {' '.join(cmd)} report {db} --out {out}"
    )
    result = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "judgements/s" in result.stderr  # the progress bar
    assert "Leaderboard" in result.stderr
    summary = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert summary["counts"]["judgements"] == 266 and summary["counts"]["answers"] == 24
    assert {r["model_id"] for r in summary["leaderboard"]} == {"alpha-7b", "beta-3b"}
    assert (out / "report.html").stat().st_size > 50_000
