"""`pollux report` beside reference models: other runs, an expert-scored file, CIs, the per-1k table."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pollux.cli import app
from pollux.report import build_report
from pollux.report.beside import beside_tables, load_entries, per_1k
from pollux.store import JobRow, RunStore
from pollux.taxonomy import load_catalog
from pollux.verdicts import Verdict
from test_report import make_run_db

EXPERTS = Path(__file__).resolve().parents[1] / "examples" / "expert_annotations.jsonl"
R2 = "0: плохо.\n\n1: средне.\n\n2: хорошо."


def _scale(rubrics: str) -> tuple[float, float]:
    marks = [float(m) for m in re.findall(r"^\s*(\d+)\s*:", rubrics, flags=re.M)]
    return min(marks), max(marks)


def _experts_by_hand() -> pd.DataFrame:
    """The official rules in plain pandas, straight from the JSONL file: grand mean per model."""
    df = pd.read_json(EXPERTS, lines=True)
    df = df[df["criteria_score"] != -1]  # POLLUX's "not applicable" mark: no score
    catalog = load_catalog()
    df[["smin", "smax"]] = [_scale(r) for r in df["rubrics"]]
    df["answer"] = df["model_id"] + "|" + df["instruction"] + "|" + df["answer"]
    df["group"] = [str(catalog.task_group(t)) for t in df["task_type"]]
    gate = (df["smin"] == 0) & (df["smax"] == 1)
    failed = set(df.loc[gate & (df["criteria_score"] >= 0.5), "answer"])
    rest = df[~gate].copy()
    rest["norm"] = np.where(rest["answer"].isin(failed), 0.0, rest["criteria_score"] / rest["smax"])
    cells = rest.groupby(["model_id", "group", "criteria_name"])["norm"].mean()
    return cells.groupby(["model_id", "group"]).mean().groupby("model_id").mean()


def test_expert_rows_equal_a_pandas_computation_by_hand(tmp_path: Path) -> None:
    run = make_run_db(tmp_path / "run.db")
    files = build_report(run, tmp_path / "out", experts=EXPERTS, n_resamples=50)
    assert files.beside is not None
    experts = {r["model_id"]: r["mean"] for r in files.beside["leaderboard"] if r["kind"] == "experts"}
    expected = _experts_by_hand()
    assert sorted(experts) == sorted(expected.index)
    for model, value in expected.items():
        assert experts[model] == pytest.approx(value, abs=1e-12)
    judged = {r["model_id"]: r["mean"] for r in files.beside["leaderboard"] if r["kind"] == "judged"}
    main = {r["model_id"]: r["grand_mean"] for r in files.leaderboard}
    assert judged == pytest.approx(main)  # the run's own leaderboard numbers, unchanged


def _spread_db(path: Path, n_answers: int) -> Path:
    """One model, one group, one 0–2 criterion; scores cycle 0, 1, 2 so the mean is 0.5 at any size."""
    with RunStore(path) as store:
        run, _ = store.open_run("j", {"judge": "j"})
        for i in range(n_answers):
            pk = store.upsert_record({
                "source": "a.jsonl", "record_id": f"q{i}", "model_id": "m", "line": i + 1, "answer_key": f"m-{i}",
                "instruction": f"В{i}", "answer": f"О{i}", "reference_answer": "", "task_type": "Объяснить концепт",
                "task_subtype": None, "task_subsubtype": None, "task_group": "Поиск информации", "extra_json": "{}"})
            job = JobRow(pk, "Полезность", "value", "subjective", R2, f"k{i}", 0)
            store.add_jobs(run.run_id, [job])
            store.write_verdict(run.run_id, job.item_key, Verdict(
                "Полезность", head_score=float(i % 3), valid=True, scale_min=0.0, scale_max=2.0, judge="j",
                prompt_tokens=100 + i, completion_tokens=10 + i % 4, time_s=0.25 + 0.01 * i))
    return path


def test_cis_contain_the_estimate_and_shrink_with_more_data(tmp_path: Path) -> None:
    widths = []
    for n in (30, 300):
        entries = load_entries([_spread_db(tmp_path / f"s{n}.db", n)], None)
        table = beside_tables(entries, n_resamples=400, seed=1)
        for _, row in table.iterrows():
            assert row["ci_low"] <= row["mean"] <= row["ci_high"]
        overall = table[table["scope"] == "overall"].iloc[0]
        assert overall["mean"] == pytest.approx(0.5)
        assert set(table["scope"]) == {"overall", "task_group", "criterion_group"}
        widths.append(overall["ci_high"] - overall["ci_low"])
    assert 0 < widths[1] < widths[0] / 2


def test_per_1k_table_equals_a_hand_computation(tmp_path: Path) -> None:
    db = _spread_db(tmp_path / "c.db", 12)
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"j": {"input": 3.0, "output": 15.0}}), encoding="utf-8")
    row = per_1k([db], prices).iloc[0]
    n = 12
    prompt = sum(100 + i for i in range(n))
    completion = sum(10 + i % 4 for i in range(n))
    seconds = sum(0.25 + 0.01 * i for i in range(n))
    assert row["judgements"] == n
    assert row["latency_s_per_1k"] == pytest.approx(seconds / n * 1000)
    assert row["prompt_tokens_per_1k"] == pytest.approx(prompt / n * 1000)
    assert row["completion_tokens_per_1k"] == pytest.approx(completion / n * 1000)
    assert row["cost_per_1k_usd"] == pytest.approx((prompt * 3.0 + completion * 15.0) / 1e6 / n * 1000)
    assert per_1k([db]).iloc[0]["cost_per_1k_usd"] is None


def test_cli_places_runs_beside_each_other_and_the_experts(tmp_path: Path) -> None:
    a, b = make_run_db(tmp_path / "a.db"), _spread_db(tmp_path / "b.db", 9)
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"tiny-judge": {"input": 1, "output": 2}, "j": {"input": 1, "output": 2}}))
    out = tmp_path / "rep"
    result = CliRunner().invoke(app, ["report", str(a), str(b), "--beside-experts", str(EXPERTS),
                                      "--prices", str(prices), "--resamples", "50", "--out", str(out)])
    assert result.exit_code == 0, result.output
    board = pd.read_csv(out / "beside_leaderboard.csv")
    assert set(board["kind"]) == {"judged", "experts"}
    assert {"alpha", "beta", "m", "model-alpha"} <= set(board["model_id"])
    assert list(board["rank"]) == list(range(1, len(board) + 1))
    assert (out / "beside_by_task_group.csv").is_file() and (out / "beside_by_criterion_group.csv").is_file()
    assert len(pd.read_csv(out / "beside_per_1k.csv")) == 2
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Beside reference models" in html and "model-alpha" in html and "Per 1000 judgements" in html


def test_cli_names_a_judge_missing_from_the_price_table(tmp_path: Path) -> None:
    a = make_run_db(tmp_path / "a.db")
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"other": {"input": 1, "output": 2}}))
    result = CliRunner().invoke(app, ["report", str(a), "--prices", str(prices), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "tiny-judge" in result.output


def test_report_of_a_real_evaluate_run_beside_the_experts(tmp_path: Path, tiny_judge) -> None:
    """A run store written by `pollux evaluate` (tiny judge), placed beside the expert file: its
    rows equal its own leaderboard, and the per-1k table equals the store's sums by hand."""
    import sqlite3

    from pollux.evaluate import evaluate

    rows = (Path(__file__).resolve().parents[1] / "examples" / "answers.jsonl").read_text(encoding="utf-8")
    src = tmp_path / "answers.jsonl"
    src.write_text("".join(rows.splitlines(keepends=True)[:4]), encoding="utf-8")
    db = tmp_path / "run.db"
    evaluate(src, db, tiny_judge)
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({tiny_judge.name: {"input": 2.0, "output": 8.0}}), encoding="utf-8")
    files = build_report(db, tmp_path / "out", experts=EXPERTS, prices=prices, n_resamples=100)
    assert files.beside is not None
    judged = {r["model_id"]: r["mean"] for r in files.beside["leaderboard"] if r["kind"] == "judged"}
    assert judged == pytest.approx({r["model_id"]: r["grand_mean"] for r in files.leaderboard})
    with sqlite3.connect(db) as conn:
        n, seconds, prompt, completion = conn.execute(
            "SELECT COUNT(*), SUM(time_s), SUM(prompt_tokens), SUM(completion_tokens) FROM verdicts").fetchone()
    row = files.beside["per_1k"][0]
    assert row["judgements"] == n > 0
    assert row["latency_s_per_1k"] == pytest.approx(seconds / n * 1000)
    assert row["prompt_tokens_per_1k"] == pytest.approx(prompt / n * 1000)
    assert row["cost_per_1k_usd"] == pytest.approx((prompt * 2.0 + completion * 8.0) / 1e6 / n * 1000)


def test_a_model_without_one_usable_score_is_a_row_without_numbers(tmp_path: Path) -> None:
    """A judge whose every verdict is invalid (a random tiny judge does that) must not stop the report."""
    with RunStore(tmp_path / "bad.db") as store:
        run, _ = store.open_run("j", {"judge": "j"})
        pk = store.upsert_record({
            "source": "a.jsonl", "record_id": "q0", "model_id": "m", "line": 1, "answer_key": "m-0",
            "instruction": "В", "answer": "О", "reference_answer": "", "task_type": "Объяснить концепт",
            "task_subtype": None, "task_subsubtype": None, "task_group": "Поиск информации", "extra_json": "{}"})
        job = JobRow(pk, "Полезность", "value", "subjective", R2, "k0", 0)
        store.add_jobs(run.run_id, [job])
        store.write_verdict(run.run_id, "k0", Verdict("Полезность", valid=False, invalid_reason="no score", judge="j"))
    files = build_report(tmp_path / "bad.db", tmp_path / "out", experts=EXPERTS, n_resamples=20)
    assert files.beside is not None
    row = next(r for r in files.beside["leaderboard"] if r["model_id"] == "m")
    assert row["mean"] is None and row["ci_low"] is None and row["answers"] == 0
    assert row["rank"] == len(files.beside["leaderboard"])  # last, after every scored model
