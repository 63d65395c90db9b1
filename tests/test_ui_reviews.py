"""Reviews in the web UI's data layer: validation, storage beside the verdict, and the export that
`pollux meta-eval` reads back as expert scores (the real CLI, in-process)."""

from __future__ import annotations

import html
import json
import re
import sqlite3
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from scipy import stats
from typer.testing import CliRunner

from pollux.cli import app
from pollux.metaeval import load_experts
from pollux.records import JudgeItem
from pollux.store import JobRow, RunStore, read_verdicts
from pollux.ui.app import create_ui_app
from pollux.ui.queries import Explorer, VerdictFilter
from pollux.verdicts import Verdict
from test_ui_queries import R2, fill_run, make_ui_db
from test_ui_web import KEY, ORIGIN, csrf_of, sign_in


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return make_ui_db(tmp_path / "run.db")


def record_of(ex: Explorer, model: str, question: str, ref: str = "0-1") -> int:
    rows = ex.verdicts(ref, VerdictFilter(model=model, criterion="Полезность"), page_size=100)["rows"]
    return next(r["record_pk"] for r in rows if r["record_id"] == question)


def test_read_only_explorer_writes_nothing(db: Path, tmp_path: Path):
    before = db.read_bytes()
    with Explorer([db], cache_dir=tmp_path / "c") as ex:
        assert ex.reviews_writable is False and ex.reviews("0-1") == [] and ex.export_reviews("0-1") == []
        with pytest.raises(ValueError, match="reviews: this explorer is read-only"):
            ex.set_review("0-1", record_of(ex, "alpha", "q0"), "Полезность", 1.0, "", "anna")
    assert db.read_bytes() == before
    tables = {r[0] for r in sqlite3.connect(db).execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "ui_reviews" not in tables


def test_review_is_validated(db: Path, tmp_path: Path):
    with Explorer([db], reviews_writable=True, cache_dir=tmp_path / "c") as ex:
        pk = record_of(ex, "alpha", "q0")
        cases = [
            (("Полезность", 3.0, "", "anna"), r"score: 3 is not a level of this criterion's scale \(0, 1, 2\)"),
            (("Полезность", 1.5, "", "anna"), "score: 1.5 is not a level"),
            (("Нарушение формата", 2.0, "", "anna"), r"\(0, 1\)"),
            (("Полезность", float("nan"), "", "anna"), "score: expected a finite number"),
            (("Полезность", True, "", "anna"), "score: expected a finite number"),
            (("Полезность", "2", "", "anna"), "score: expected a finite number"),
            (("Полезность", None, "  ", "anna"), "score: give a score, a comment, or both"),
            (("Полезность", 1.0, "", " "), "reviewer: a reviewer name is required"),
            (("Полезность", 1.0, "bad \ud800 text", "anna"), r"comment: invalid text: a lone surrogate U\+D800"),
            (("Полезность", 1.0, "nul\x00", "anna"), "comment: invalid text: a NUL"),
            (("Полезность", 1.0, "x" * 10_001, "anna"), "comment: longer than 10000 characters"),
            (("Полезность", 1.0, "", "a\x00"), "reviewer: invalid text"),
            (("Нет такого", 1.0, "", "anna"), f"criteria_name: answer {pk} of run 0-1 has no criterion 'Нет такого'"),
        ]
        for (criterion, score, comment, reviewer), message in cases:
            with pytest.raises(ValueError, match=message):
                ex.set_review("0-1", pk, criterion, score, comment, reviewer)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="record_pk: run 0-1 has no answer 999"):
            ex.set_review("0-1", 999, "Полезность", 1.0, "", "anna")
        assert ex.reviews("0-1") == []


def test_reviews_are_stored_beside_the_verdict_and_updated(db: Path, tmp_path: Path):
    judged = read_verdicts(db)
    with Explorer([db], reviews_writable=True, cache_dir=tmp_path / "c") as ex:
        assert ex.reviews_writable and ex.run("0-1")["reviews_writable"]
        pk = record_of(ex, "beta", "q2")
        first = ex.set_review("0-1", pk, "Полезность", 0.0, "Ответ не по делу", "anna")
        assert first["score"] == 0.0 and first["comment"] == "Ответ не по делу" and first["reviewer"] == "anna"
        assert first["model_id"] == "beta" and first["judge_score"] is not None
        time.sleep(1.1)  # timestamps have a resolution of one second in ISO form
        again = ex.set_review("0-1", pk, "Полезность", 2.0, "Передумала <b>", "anna")
        assert again["review_id"] == first["review_id"] and again["score"] == 2.0
        assert again["created_at"] == first["created_at"] and again["updated_at"] > first["updated_at"]
        ex.set_review("0-1", pk, "Полезность", 1.0, "", "boris")
        ex.set_review("0-1", pk, "Грамотность", None, "только комментарий", "boris")
        ex.set_review("0-2", pk, "Полезность", 1.0, "другой прогон", "anna")
        reviews = ex.reviews("0-1")
        assert len(reviews) == 3 and reviews[0]["criteria_name"] == "Грамотность"  # newest first
        assert {(r["reviewer"], r["criteria_name"], r["score"]) for r in reviews} == {
            ("anna", "Полезность", 2.0), ("boris", "Полезность", 1.0), ("boris", "Грамотность", None)}
        crits = {c["criteria_name"]: c for c in ex.answer("0-1", pk)["criteria"]}
        assert {r["reviewer"] for r in crits["Полезность"]["reviews"]} == {"anna", "boris"}
        assert [r["comment"] for r in crits["Грамотность"]["reviews"]] == ["только комментарий"]
        assert crits["Нарушение формата"]["reviews"] == []
        assert [r["comment"] for r in ex.reviews("0-2")] == ["другой прогон"]
    after = read_verdicts(db)
    assert after.equals(judged)  # the judge's verdicts are untouched


def test_expert_pseudo_runs_take_no_reviews(db: Path, tmp_path: Path):
    with Explorer([db], reviews_writable=True, cache_dir=tmp_path / "c") as ex:
        pk = record_of(ex, "alpha", "q0")
        ex.set_review("0-1", pk, "Полезность", 2.0, "", "anna")
        export = tmp_path / "reviews.jsonl"
        export.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ex.export_reviews("0-1")),
                          encoding="utf-8")
    with Explorer([db], experts=[export], reviews_writable=True, cache_dir=tmp_path / "c") as ex:
        assert ex.runs()[-1]["kind"] == "experts"
        with pytest.raises(ValueError, match=r"run: 1-1 holds expert scores \(reviews.jsonl\), which take no reviews"):
            ex.set_review("1-1", 1, "Полезность", 2.0, "", "anna")


def test_export_is_read_back_by_pollux_meta_eval(tmp_path: Path):
    db = tmp_path / "one-judge.db"
    with RunStore(db) as store:
        fill_run(store, "judge-a")
    reviewed = []
    with Explorer([db], reviews_writable=True, cache_dir=tmp_path / "c") as ex:
        rows = ex.verdicts("0-1", VerdictFilter(score_max=2), page_size=500)["rows"]
        for i, row in enumerate(r for r in rows if r["criteria_name"] != "Нарушение формата"):
            # two reviewers: one agrees with the judge, the other is off by one on every third row
            mine = row["score"] if i % 3 else min(2.0, row["score"] + 1)
            ex.set_review("0-1", row["record_pk"], row["criteria_name"], row["score"], "согласна", "anna")
            ex.set_review("0-1", row["record_pk"], row["criteria_name"], mine, "", "boris")
            reviewed.append((row["model_id"], row["score"], (row["score"] + mine) / 2))
        ex.set_review("0-1", rows[0]["record_pk"], "Нарушение формата", None, "без оценки", "anna")
        exported = ex.export_reviews("0-1")
    assert len(exported) == len(reviewed)
    first = exported[0]
    assert [a["reviewer"] for a in first["annotations"]] == ["anna", "boris"]
    assert first["criteria_score"] == sum(a["score"] for a in first["annotations"]) / 2
    path = tmp_path / "reviews.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in exported), encoding="utf-8")

    experts = load_experts(path)
    assert len(experts.frame) == len(reviewed) and experts.skipped == []
    res = CliRunner().invoke(app, ["meta-eval", str(path), "--scores", str(db), "--split", "all",
                                   "--bootstrap", "0", "--format", "json", "--metrics", "all"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    overall = [m for m in json.loads(res.stdout)["metrics"] if m["group"] == "all"]
    metrics = {(m["model"], m["metric"]): m["value"] for m in overall}
    rows_of = {m["model"]: m["n_rows"] for m in overall}
    for model in ("alpha", "beta", "gamma"):
        judge = [r[1] for r in reviewed if r[0] == model]
        expert = [r[2] for r in reviewed if r[0] == model]
        mae = sum(abs(a - b) for a, b in zip(judge, expert, strict=True)) / len(judge)
        assert rows_of[model] == len(judge) and metrics[(model, "mae")] == pytest.approx(mae)
        assert metrics[(model, "spearman")] == pytest.approx(stats.spearmanr(judge, expert).statistic)


def test_a_later_review_keeps_what_it_leaves_blank(db: Path, tmp_path: Path):
    """Issue 23 item 15: a comment-only review wiped the reviewer's earlier score."""
    with Explorer([db], reviews_writable=True, cache_dir=tmp_path / "c") as ex:
        pk = record_of(ex, "alpha", "q0")
        ex.set_review("0-1", pk, "Полезность", 2.0, "сначала оценка", "anna")
        commented = ex.set_review("0-1", pk, "Полезность", None, "потом комментарий", "anna")
        assert (commented["score"], commented["comment"]) == (2.0, "потом комментарий")
        rescored = ex.set_review("0-1", pk, "Полезность", 1.0, "", "anna")
        assert (rescored["score"], rescored["comment"]) == (1.0, "потом комментарий")
        [exported] = ex.export_reviews("0-1")
        assert exported["annotations"] == [{"comment": "потом комментарий", "score": 1.0, "reviewer": "anna"}]


def test_a_criterion_named_with_trailing_whitespace_is_reviewed_over_http(tmp_path: Path):
    """Issue 23 item 7: the review form's criterion went through a stripping text parameter, so a
    criterion whose name ends in spaces (as the input file had it) could never be found (400)."""
    db = tmp_path / "run.db"
    names = ("Полезность  ", "Полезность", " Грамотность\t")
    with RunStore(db) as store:
        run, _ = store.open_run("judge-a", {"judge": "judge-a"})
        pk = store.upsert_record({
            "source": "answers.jsonl", "record_id": "q0", "model_id": "alpha", "line": 1, "answer_key": "k0",
            "instruction": "Вопрос", "answer": "Ответ", "reference_answer": "", "task_type": None,
            "task_subtype": None, "task_subsubtype": None, "task_group": None, "extra_json": "{}"})
        jobs = [JobRow(pk, name, None, None, R2, JudgeItem("Вопрос", "Ответ", name, R2).key, n)
                for n, name in enumerate(names)]
        store.add_jobs(run.run_id, jobs)
        for job in jobs:
            store.write_verdict(run.run_id, job.item_key, Verdict(job.criteria_name, head_score=1.0, valid=True,
                                                                   scale_min=0.0, scale_max=2.0, judge="judge-a"))
    with Explorer([db], reviews_writable=True, cache_dir=tmp_path / "c") as ex, \
            TestClient(create_ui_app(ex, key=KEY)) as c:
        assert sign_in(c).status_code == 303
        page = c.get(f"/ui/runs/0-1/answers/{pk}").text
        # the names exactly as the page's forms post them back
        posted = [html.unescape(v) for v in re.findall(r'name="criteria_name" value="([^"]*)"', page)]
        assert sorted(posted) == sorted(names)
        for n, name in enumerate(posted):
            r = c.post(f"/ui/runs/0-1/answers/{pk}/review", follow_redirects=False, headers={"Origin": ORIGIN},
                       data={"csrf": csrf_of(page), "criteria_name": name, "score": str(n % 3), "reviewer": "anna"})
            assert r.status_code == 303, (name, r.status_code, r.text[:300])
        assert {(r["criteria_name"], r["score"]) for r in ex.reviews("0-1")} == {
            (name, float(n % 3)) for n, name in enumerate(posted)}
