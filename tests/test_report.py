"""The report builder: exports, aggregated numbers, escaping of untrusted text, the CLI verb."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pollux.report import build_report
from pollux.store import JobRow, RunStore, StoreError
from pollux.verdicts import Verdict

XSS = '</script><img src=x onerror="document.title=\'pwned\'"><script>document.title="pwned"</script>'
R2 = "0: плохо.\n\n1: средне.\n\n2: хорошо."
R1 = "0: нарушения нет.\n\n1: нарушение есть."


def make_run_db(path: Path, n_questions: int = 6) -> Path:
    """A run store with two models: alpha scores 2/2, beta 1/2; beta's answer q0 fails a gate;
    one verdict failed with an error; one answer carries an HTML/script injection."""
    with RunStore(path) as store:
        run, _ = store.open_run("tiny-judge", {"judge": "tiny-judge", "engine": {"template": {}, "sampling": {}},
                                               "pollux_version": "0.1.0"})
        for model, good in (("alpha", 2.0), ("beta", 1.0)):
            for i in range(n_questions):
                group = "Поиск информации" if i % 2 == 0 else "Решение технических задач"
                answer = XSS if (model == "beta" and i == 1) else f"Ответ {model} на вопрос {i}"
                pk = store.upsert_record({
                    "source": "answers.jsonl", "record_id": f"q{i}", "model_id": model, "line": i + 1,
                    "answer_key": f"{model}-{i}", "instruction": f"Вопрос {i}", "answer": answer,
                    "reference_answer": "", "task_type": "Объяснить концепт", "task_subtype": None,
                    "task_subsubtype": None, "task_group": group, "extra_json": "{}",
                })
                jobs = [JobRow(pk, "Полезность", "value", "subjective", R2, f"k-{model}-{i}-v", 0),
                        JobRow(pk, "Грамотность", "grammar", "general", R2, f"k-{model}-{i}-g", 1),
                        JobRow(pk, "Нарушение формата", "narushenie_formata", "critical", R1, f"k-{model}-{i}-n", 2)]
                store.add_jobs(run.run_id, jobs)
                gate = 1.0 if (model == "beta" and i == 0) else 0.0
                for job, score in zip(jobs, (good, good, gate), strict=True):
                    smax = 1.0 if job.criteria_name == "Нарушение формата" else 2.0
                    if model == "alpha" and i == 5 and job.criterion_id == "grammar":
                        store.write_verdict(run.run_id, job.item_key, Verdict(job.criteria_name, error="boom", judge="tiny-judge"))
                        continue
                    store.write_verdict(run.run_id, job.item_key, Verdict(
                        job.criteria_name, head_score=score, valid=True, scale_min=0.0, scale_max=smax,
                        rationale=f"Обоснование {model} {i} {job.criterion_id} уникальноеслово{model}{i}",
                        judge="tiny-judge"))
    return path


def test_report_files_and_numbers(tmp_path: Path):
    db = make_run_db(tmp_path / "run.db")
    files = build_report(db, tmp_path / "out")
    names = sorted(p.name for p in files.files)
    assert names == ["by_criterion.csv", "by_group.csv", "cells.csv", "leaderboard.csv", "report.html",
                     "report.json", "verdicts.csv"]
    board = pd.read_csv(tmp_path / "out" / "leaderboard.csv").set_index("model_id")
    assert board.loc["alpha", "grand_mean"] == pytest.approx(1.0)
    # beta: 1/2 everywhere, except q0 (group "Поиск информации") gated to 0 → that group: (0 + 0.5 + 0.5) / 3
    expected_search = (0.0 + 0.5 + 0.5) / 3
    assert board.loc["beta", "Поиск информации"] == pytest.approx(expected_search)
    assert board.loc["beta", "grand_mean"] == pytest.approx((expected_search + 0.5) / 2)
    assert board.loc["beta", "gated_answers"] == 1 and board.loc["alpha", "errors"] == 1
    assert board.loc["alpha", "rank"] == 1
    summary = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert summary["run_id"] == 1 and summary["judge"] == "tiny-judge"
    assert summary["counts"] == {"judgements": 36, "answers": 12, "models": 2, "counted": 23, "errors": 1, "invalid": 0}
    assert [r["model_id"] for r in summary["leaderboard"]] == ["alpha", "beta"]
    by_crit = pd.read_csv(tmp_path / "out" / "by_criterion.csv")
    assert "Нарушение формата" not in set(by_crit["criteria_name"])  # gates are not averaged


def test_html_is_standalone_and_escapes_untrusted_text(tmp_path: Path):
    db = make_run_db(tmp_path / "run.db")
    html = build_report(db, tmp_path / "out").html.read_text(encoding="utf-8")
    assert "<script src" not in html and "<link" not in html and "http://" not in html and "https://" not in html
    assert XSS not in html and "<img src=x" not in html
    assert html.count("</script>") == 2  # the data block and the page script, nothing from the answers
    assert html.count('<svg class="chart') == 4
    assert "уникальноесловоbeta3" in html  # verdicts are embedded for the search


def test_report_errors(tmp_path: Path):
    with pytest.raises(StoreError, match="no such run database"):
        build_report(tmp_path / "missing.db", tmp_path / "out")
    with RunStore(tmp_path / "empty.db"):
        pass
    with pytest.raises(StoreError, match="no run yet"):
        build_report(tmp_path / "empty.db", tmp_path / "out")
    db = make_run_db(tmp_path / "run.db")
    with pytest.raises(StoreError, match="no run 7"):
        build_report(db, tmp_path / "out", run=7)


def test_report_cli(tmp_path: Path):
    from typer.testing import CliRunner

    from pollux.cli import app

    db = make_run_db(tmp_path / "run.db")
    out = tmp_path / "rep"
    result = CliRunner().invoke(app, ["report", str(db), "--out", str(out), "--gates", "critical"])
    assert result.exit_code == 0, result.output
    assert "Leaderboard" in result.stderr and "alpha" in result.stderr
    data = json.loads(result.stdout)
    assert data["html"] == str(out / "report.html") and (out / "report.html").is_file()
    assert data["leaderboard"][0]["model_id"] == "alpha"
    bad = CliRunner().invoke(app, ["report", str(tmp_path / "nope.db")])
    assert bad.exit_code == 2 and "no such run database" in bad.stderr


def test_per_model_criterion_by_group_tables(tmp_path: Path):
    db = make_run_db(tmp_path / "run.db")
    html = build_report(db, tmp_path / "out").html.read_text(encoding="utf-8")
    assert html.count('<table class="criterion-table"') == 2
    beta = html.split('data-model="beta"')[1].split("</table>")[0]
    # rows: 2 criteria + "mean over criteria"; columns: 2 groups + "mean over groups"
    assert beta.count("<tr") == 1 + 3 and "mean over groups" in beta and "mean over criteria" in beta
    assert f"{(0.0 + 0.5 + 0.5) / 3:.3f}" in beta  # Полезность in the gated group
