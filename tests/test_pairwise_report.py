"""`pollux report` over side-by-side verdicts (issue 19 item 4): a "Side by side" section whose
numbers are `pollux compare`'s own (the same `pollux.pairwise` statistics), with or without an
evaluate run in the same database.

The store is real: `pollux compare` with a loopback OpenAI-compatible judge (tests/test_pairwise.py's
`JudgeServer`) writes a real SQLite file, which `pollux report` then reads."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from pollux.cli import app
from pollux.report import build_report
from pollux.store import StoreError
from test_pairwise import JudgeServer, compare, write_files
from test_report import make_run_db

HOSTILE = "<script>alert(1)</script>\u202e"


def judged(folder: Path, db: Path, *, fair: bool = True) -> dict:
    """`pollux compare` of two tiny answer files into `db`; its JSON summary. The judges' model
    names differ: the same texts under the same judge are the same (reused) judgements."""
    folder.mkdir(parents=True, exist_ok=True)
    a, b = write_files(folder)
    with JudgeServer(fair=fair) as server:
        code, out = compare(str(a), str(b), "--judge", f"openai:sbs-{fair}", "--base-url", server.url, "--db", str(db))
    assert code == 0, out
    return out


def test_a_database_of_compare_alone_gets_a_side_by_side_report(tmp_path: Path):
    db = tmp_path / "cmp.db"
    expected = judged(tmp_path / HOSTILE, db)
    files = build_report(db, tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert files.run_id == 0 and files.leaderboard == [] and report["run_id"] is None
    [cmp] = report["pairwise"]
    assert cmp["a"] == str(tmp_path / HOSTILE / "a.jsonl") and cmp["b"].endswith("b.jsonl")
    for key in ("overall", "per_criterion", "per_task"):
        assert cmp[key] == expected[key]  # the very numbers `pollux compare` printed
    assert cmp["overall"]["win"]["count"] == 4 and cmp["overall"]["flip"]["rate"] == 0.0
    html = files.html.read_text(encoding="utf-8")
    assert 'id="side-by-side"' in html and "80% [" in html  # A wins 4 of 5
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert f"<bdi>{tmp_path}/&lt;script&gt;" in html
    csv = pd.read_csv(tmp_path / "out" / "pairwise.csv")
    overall = csv[csv["scope"] == "overall"].iloc[0]
    assert overall["pairs"] == 5 and overall["win_rate"] == pytest.approx(0.8)
    assert overall["win_ci_low"] == pytest.approx(expected["overall"]["win"]["ci"][0])
    assert set(csv.loc[csv["scope"] == "task", "group"]) == {"Арифметика", "Факты"}


def test_a_run_database_with_comparisons_gets_both(tmp_path: Path):
    db = make_run_db(tmp_path / "run.db")
    fair = judged(tmp_path / "fair", db)
    always_one = judged(tmp_path / "biased", db, fair=False)  # a second comparison in the same file
    files = build_report(db, tmp_path / "out", n_resamples=1000)
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert report["leaderboard"] and files.run_id == report["run_id"]
    by_a = {Path(c["a"]).parent.name: c for c in report["pairwise"]}
    assert set(by_a) == {"fair", "biased"}
    assert by_a["fair"]["overall"] == fair["overall"]
    assert by_a["biased"]["overall"] == always_one["overall"] and by_a["biased"]["overall"]["flip"]["rate"] == 1.0
    html = files.html.read_text(encoding="utf-8")
    assert 'id="leaderboard"' in html and 'id="side-by-side"' in html and "100% [" in html


def test_a_run_database_without_comparisons_has_no_section(tmp_path: Path):
    db = make_run_db(tmp_path / "run.db")
    files = build_report(db, tmp_path / "out")
    assert files.pairwise is None and 'id="side-by-side"' not in files.html.read_text(encoding="utf-8")
    assert "pairwise" not in json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))


def test_an_empty_database_is_a_clear_error(tmp_path: Path):
    db = tmp_path / "empty.db"
    sqlite3.connect(db).execute("CREATE TABLE pairwise_judgements (key TEXT)").connection.close()
    with pytest.raises(StoreError, match=r"not a pollux run database.*nor side-by-side"):
        build_report(db, tmp_path / "out")


def test_report_cli_over_a_compare_database(tmp_path: Path):
    db = tmp_path / "cmp.db"
    judged(tmp_path / "in", db)
    result = CliRunner().invoke(app, ["report", str(db), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["pairwise"][0]["overall"]["pairs"] == 5 and out["leaderboard"] == []
    assert "A vs B" in result.stderr  # the terminal table, as `pollux compare` prints it
    bad = CliRunner().invoke(app, ["report", str(db), "--run", "1", "--out", str(tmp_path / "o2")])
    assert bad.exit_code == 2 and "side-by-side judgements only" in bad.stderr
