"""The web UI's data layer (`pollux.ui.queries.Explorer`) on real run stores written by `pollux.store`.

Results are checked against independent oracles where one exists: filtered verdicts against a
pandas filter over `pollux.store.read_verdicts`, the leaderboard against `pollux.aggregate`, the
agreement statistics against scipy on the joined scores.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from scipy import stats

from pollux.aggregate import aggregate
from pollux.records import JudgeItem
from pollux.store import JobRow, RunStore, read_verdicts
from pollux.ui import textindex
from pollux.ui.queries import _ORDER, Explorer, RunRef, VerdictFilter, _plan
from pollux.ui.sources import UI_INDEXES
from pollux.verdicts import Verdict

R2 = "0: плохо.\n\n1: средне.\n\n2: хорошо."
R1 = "0: нарушения нет.\n\n1: нарушение есть."
CRITERIA = (("Полезность", "subjective", R2), ("Грамотность", "general", R2), ("Нарушение формата", "critical", R1))
MODELS = ("alpha", "beta", "gamma")
TASKS = ("Объяснить концепт", "Написать код")


def answer_text(model: str, q: int) -> str:
    if (model, q) == ("beta", 1):
        return "Ёжик в тумане <script>alert(1)</script>"
    return f"Ответ {model} на вопрос {q}: " + "слово " * 80


def score_of(judge: str, m: int, q: int, c: int) -> float:
    """A deterministic score per judge; judge-b disagrees with judge-a on some rows."""
    if c == 2:
        return float((m + q) % 5 == 0)
    base = (m + q + c) % 3
    return float(base if judge == "judge-a" else (base + (q % 2) * (1 + c)) % 3)


def fill_run(store: RunStore, judge: str, *, n_questions: int = 6, new_run: bool = False, skip: int = 0) -> int:
    """One run of `judge` over 3 models × n_questions answers × 3 criteria, with one failed and one
    out-of-scale verdict; `skip` leaves the last jobs unjudged. Returns the run id."""
    run, _ = store.open_run(judge, {"judge": judge}, new_run=new_run)
    pending = []
    for m, model in enumerate(MODELS):
        for q in range(n_questions):
            answer = answer_text(model, q)
            pk = store.upsert_record({
                "source": "answers.jsonl", "record_id": f"q{q}", "model_id": model, "line": q + 1,
                "answer_key": f"{model}-{q}", "instruction": f"Вопрос {q}", "answer": answer,
                "reference_answer": "", "task_type": TASKS[q % 2], "task_subtype": None,
                "task_subsubtype": None, "task_group": f"Группа {q % 2}", "extra_json": "{}"})
            jobs = [JobRow(pk, name, f"c{c}", group, rubric, JudgeItem(f"Вопрос {q}", answer, name, rubric).key, c)
                    for c, (name, group, rubric) in enumerate(CRITERIA)]
            store.add_jobs(run.run_id, jobs)
            pending += [(job, m, q, c) for c, job in enumerate(jobs)]
    for job, m, q, c in pending[: len(pending) - skip]:
        store.write_verdict(run.run_id, job.item_key, make_verdict(judge, job, m, q, c))
    return run.run_id


def make_verdict(judge: str, job: JobRow, m: int, q: int, c: int) -> Verdict:
    if (m, q, c) == (0, 5, 1):
        return Verdict(job.criteria_name, error="CUDA out of memory", judge=judge)
    score = 3.0 if (m, q, c) == (2, 4, 0) else score_of(judge, m, q, c)
    top = 1.0 if c == 2 else 2.0
    return Verdict(job.criteria_name, head_score=score, valid=score <= top, scale_min=0.0, scale_max=top,
                   invalid_reason=None if score <= top else "outside", judge=judge,
                   rationale=f"Обоснование {judge} {MODELS[m]} {q} {c}: метка{MODELS[m]}{q}x{c} зелёный")


def make_ui_db(path: Path, *, second_run: bool = True) -> Path:
    """judge-a as run 1 and (optionally) judge-b as run 2 of one database."""
    with RunStore(path) as store:
        fill_run(store, "judge-a")
        if second_run:
            fill_run(store, "judge-b", new_run=True)
    return path


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_ui_db(tmp_path_factory.mktemp("ui") / "run.db")


@pytest.fixture(scope="module")
def explorer(db: Path, tmp_path_factory: pytest.TempPathFactory):
    with Explorer([db], cache_dir=tmp_path_factory.mktemp("cache")) as ex:
        yield ex


def keys(rows) -> list[tuple[str, str]]:
    return [(r["model_id"], r["record_id"], r["criteria_name"]) for r in rows]


def all_rows(ex: Explorer, ref: str, f: VerdictFilter, sort: str = "default", page_size: int = 7) -> list[dict]:
    first = ex.verdicts(ref, f, page_size=page_size, sort=sort)
    rows = list(first["rows"])
    for page in range(2, first["pages"] + 1):
        rows += ex.verdicts(ref, f, page=page, page_size=page_size, sort=sort)["rows"]
    assert len(rows) == first["total"]
    return rows


def test_run_ref_parse():
    assert RunRef.parse("0-1") == RunRef(0, 1) and str(RunRef(3, 12)) == "3-12"
    assert RunRef.parse(" 2-5 ") == RunRef(2, 5)
    for bad in ("", "1", "a-1", "1-", "-1-2", "1-2-3", "1.0-2"):
        with pytest.raises(ValueError, match="not a run reference") as e:
            RunRef.parse(bad)
        assert repr(bad) in str(e.value)


def test_filter_values_are_checked():
    f = VerdictFilter.from_params({"model": "alpha", "score_min": "0,5", "score_max": " ", "only": "", "x": "1"})
    assert f == VerdictFilter(model="alpha", score_min=0.5)
    assert VerdictFilter.from_params(f.to_params()) == f
    assert VerdictFilter(model="  ").model is None
    cases = [({"score_min": "abc"}, "score_min: expected a number"), ({"only": "bad"}, "only: expected one of"),
             ({"score_min": "2", "score_max": "1"}, "score_min: 2 is above score_max"),
             ({"score_max": "nan"}, "score_max: expected a finite number"), ({"q": "!!!"}, "q: no word"),
             ({"model": "a\x00b"}, "model: invalid text: a NUL"), ({"criterion": "x" * 2001}, "criterion: longer")]
    for params, message in cases:
        with pytest.raises(ValueError, match=message):
            VerdictFilter.from_params(params)
    with pytest.raises(ValueError, match="score_min: expected a finite number"):
        VerdictFilter(score_min=True)  # type: ignore[arg-type]


def test_runs_counts_and_unknown_refs(explorer: Explorer, db: Path):
    runs = explorer.runs()
    assert [(r["ref"], r["judge"], r["kind"]) for r in runs] == [("0-1", "judge-a", "run"), ("0-2", "judge-b", "run")]
    df = read_verdicts(db, run=1)
    a = runs[0]
    assert a["jobs"] == 54 and a["items"] == 54 and a["judged"] == int(df["error"].isna().sum()) == 53
    assert a["failed"] == 1 and a["invalid"] == int((~df["valid"] & df["error"].isna()).sum()) == 1
    assert a["pending"] == 0 and a["finished"] and a["progress"] == 1.0
    assert a["config"] == {"judge": "judge-a"} and a["created_at"].endswith("+00:00") and not a["reviews_writable"]
    assert explorer.run(RunRef(0, 2)) == runs[1] == explorer.run("0-2")
    with pytest.raises(ValueError, match="no database 3"):
        explorer.run("3-1")
    with pytest.raises(ValueError, match=r"has no run 9 \(its runs: 0-1, 0-2\)"):
        explorer.verdicts("0-9")
    with pytest.raises(ValueError, match="not a run reference"):
        explorer.facets("zero")


def test_facets(explorer: Explorer):
    facets = explorer.facets("0-1")
    assert facets["models"] == sorted(MODELS) and facets["task_types"] == sorted(TASKS)
    assert facets["criteria"] == sorted(c[0] for c in CRITERIA)
    assert facets["groups"] == ["critical", "general", "subjective"]
    assert (facets["score_min"], facets["score_max"]) == (0.0, 3.0)


@pytest.mark.parametrize("params", [
    {}, {"model": "beta"}, {"criterion": "Полезность"}, {"group": "general", "task_type": TASKS[1]},
    {"model": "gamma", "criterion": "Полезность", "score_min": "1", "score_max": "2"},
    {"score_max": "0.5"}, {"score_min": "1", "model": "alpha"}, {"only": "invalid"}, {"only": "error"},
    {"only": "error", "criterion": "Полезность"}, {"model": "nobody"},
])
def test_filters_match_a_pandas_oracle(explorer: Explorer, db: Path, params: dict[str, str]):
    f = VerdictFilter.from_params(params)
    df = read_verdicts(db, run=1)
    keep = pd.Series(True, index=df.index)
    for field, column in (("model", "model_id"), ("task_type", "task_type"), ("criterion", "criteria_name"),
                          ("group", "criterion_group")):
        if getattr(f, field) is not None:
            keep &= df[column] == getattr(f, field)
    if f.score_min is not None:
        keep &= df["score"] >= f.score_min
    if f.score_max is not None:
        keep &= df["score"] <= f.score_max
    if f.only == "invalid":
        keep &= ~df["valid"] & df["error"].isna()
    if f.only == "error":
        keep &= df["error"].notna()
    want = sorted(zip(df.loc[keep, "model_id"], df.loc[keep, "record_id"], df.loc[keep, "criteria_name"],
                      strict=True))
    got = all_rows(explorer, "0-1", f)
    assert sorted(keys(got)) == want
    assert len(set(keys(got))) == len(got)  # no row twice across pages


def test_pages_and_sorts(explorer: Explorer):
    everything = all_rows(explorer, "0-1", VerdictFilter(), page_size=5)
    assert len(everything) == 54  # the failed judgement is a row too
    assert [(r["record_pk"]) for r in everything] == sorted(r["record_pk"] for r in everything)
    last = explorer.verdicts("0-1", page=11, page_size=5)
    assert last["pages"] == 11 and len(last["rows"]) == 4
    assert explorer.verdicts("0-1", page=12, page_size=5)["rows"] == []
    one = explorer.verdicts("0-1", page_size=1)
    assert one["pages"] == 54 and len(one["rows"]) == 1
    for f in (VerdictFilter(), VerdictFilter(model="beta"), VerdictFilter(score_min=1)):
        scores = [r["score"] for r in all_rows(explorer, "0-1", f, sort="score")]
        failed = [None] if f == VerdictFilter() else []  # the failed one (no score) first
        assert scores[: len(failed)] == failed and scores[len(failed):] == sorted(scores[len(failed):])
        scores = [r["score"] for r in all_rows(explorer, "0-1", f, sort="-score")]
        assert scores == sorted(scores[: len(scores) - len(failed)], reverse=True) + failed
    models = [r["model_id"] for r in all_rows(explorer, "0-1", VerdictFilter(), sort="model")]
    assert models == sorted(models)
    for kwargs, message in (({"page": 0}, "page: expected"), ({"page_size": 0}, "page_size: expected"),
                            ({"page_size": 501}, "page_size: expected"), ({"sort": "random"}, "sort: expected"),
                            ({"page": "2"}, "page: expected")):
        with pytest.raises(ValueError, match=message):
            explorer.verdicts("0-1", **kwargs)


def test_rows_carry_snippets_and_flags(explorer: Explorer):
    rows = explorer.verdicts("0-1", VerdictFilter(only="invalid"))["rows"]
    assert len(rows) == 1 and rows[0]["score"] == 3.0 and rows[0]["valid"] is False
    assert rows[0]["invalid_reason"] == "outside"
    error = explorer.verdicts("0-1", VerdictFilter(only="error"))["rows"][0]
    assert error["error"] == "CUDA out of memory" and error["score"] is None
    long = explorer.verdicts("0-1", VerdictFilter(model="alpha"), page_size=1)["rows"][0]
    assert len(long["answer"]) == 300 and long["answer"].endswith("…")
    assert long["rationale"].startswith("Обоснование judge-a alpha 0")


def test_full_text_search(explorer: Explorer):
    def found(q: str, **kw: Any) -> list[tuple[str, str, str]]:
        return sorted(keys(all_rows(explorer, "0-1", VerdictFilter(q=q, **kw))))

    assert found("меткаbeta3x1") == [("beta", "q3", "Грамотность")]  # a word of one rationale
    assert found("меткаbeta3") == sorted(("beta", "q3", c[0]) for c in CRITERIA)  # a prefix
    hedgehog = sorted(("beta", "q1", c[0]) for c in CRITERIA)  # a word of one answer, any case, ё = е
    assert found("ЕЖИК") == hedgehog == found("ёжик тумане")
    assert found("ежик", criterion="Полезность") == [("beta", "q1", "Полезность")]
    assert found("зеленый", model="gamma", score_min=1) == sorted(
        keys(all_rows(explorer, "0-1", VerdictFilter(model="gamma", score_min=1))))
    assert found("нетутакогослова") == []


def test_search_follows_a_live_run(tmp_path: Path):
    db = tmp_path / "live.db"
    with RunStore(db) as store:
        run_id = fill_run(store, "judge-a", n_questions=2, skip=4)
        with Explorer([db], cache_dir=tmp_path / "cache") as ex:
            assert ex.verdicts("0-1", VerdictFilter(q="меткаgamma1x2"))["total"] == 0
            assert ex.run("0-1")["pending"] == 4 and not ex.run("0-1")["finished"]
            jobs = store.conn.execute("SELECT record_pk, criteria_name, criterion_id, criterion_group, rubrics, "
                                      "item_key, position FROM jobs WHERE run_id = ? ORDER BY rowid DESC LIMIT 1",
                                      (run_id,)).fetchone()
            job = JobRow(*jobs)
            store.write_verdict(run_id, job.item_key, Verdict(job.criteria_name, error="boom", judge="judge-a"))
            assert ex.verdicts("0-1", VerdictFilter(q="меткаgamma1x2"))["total"] == 0
            store.write_verdict(run_id, job.item_key, make_verdict("judge-a", job, 2, 1, 2))  # replaces the error
            assert ex.verdicts("0-1", VerdictFilter(q="меткаgamma1x2"))["total"] == 1
            assert ex.run("0-1")["pending"] == 3


def test_answer_shows_every_criterion(explorer: Explorer):
    row = explorer.verdicts("0-1", VerdictFilter(model="beta", q="ежик"), page_size=1)["rows"][0]
    answer = explorer.answer("0-1", row["record_pk"])
    assert answer["answer"] == answer_text("beta", 1) and answer["instruction"] == "Вопрос 1"
    assert answer["model_id"] == "beta" and answer["task_type"] == TASKS[1] and answer["run"]["ref"] == "0-1"
    crits = answer["criteria"]
    assert [c["criteria_name"] for c in crits] == [c[0] for c in CRITERIA]
    assert crits[0]["rationale"].startswith("Обоснование judge-a beta 1 0") and crits[0]["judged"]
    assert crits[2]["levels"] == [0.0, 1.0] and crits[2]["scale_max"] == 1.0 and crits[2]["reviews"] == []
    failed = explorer.verdicts("0-1", VerdictFilter(only="error"))["rows"][0]
    crit = next(c for c in explorer.answer("0-1", failed["record_pk"])["criteria"] if c["error"])
    assert crit["score"] is None and crit["judged"]
    with pytest.raises(ValueError, match="record_pk: run 0-1 has no answer 999"):
        explorer.answer("0-1", 999)
    with pytest.raises(ValueError, match="record_pk: expected a whole number"):
        explorer.answer("0-1", "5")  # type: ignore[arg-type]


def test_unjudged_criteria_are_shown_as_pending(tmp_path: Path):
    db = tmp_path / "partial.db"
    with RunStore(db) as store:
        fill_run(store, "judge-a", n_questions=2, skip=2)
    with Explorer([db], cache_dir=tmp_path / "cache") as ex:
        last = max(r["record_pk"] for r in all_rows(ex, "0-1", VerdictFilter()))
        crits = ex.answer("0-1", last)["criteria"]
        assert [c["judged"] for c in crits] == [True, False, False] and crits[1]["score"] is None


def test_leaderboard_is_the_official_aggregation(explorer: Explorer, db: Path):
    board = explorer.leaderboard("0-1")
    agg = aggregate(read_verdicts(db, run=1))
    want = agg.leaderboard.set_index("model_id")
    assert board["models"] == agg.leaderboard["model_id"].tolist()
    for row in board["rows"]:
        assert row["grand_mean"] == pytest.approx(want.loc[row["model_id"], "grand_mean"])
        assert row["rank"] == want.loc[row["model_id"], "rank"] and row["errors"] == want.loc[row["model_id"], "errors"]
        for group, mean in row["task_groups"].items():
            assert mean == pytest.approx(want.loc[row["model_id"], group])
    assert board["criterion_groups"] == ["general", "subjective"]  # gates are not averaged
    crit = agg.by_criterion.set_index(["model_id", "criteria_name"])["mean"]
    useful = next(r for r in board["criteria_rows"] if r["criteria_name"] == "Полезность")
    assert useful["criterion_group"] == "subjective"
    assert useful["means"]["alpha"] == pytest.approx(crit[("alpha", "Полезность")])
    alpha = next(r for r in board["rows"] if r["model_id"] == "alpha")
    assert alpha["criterion_groups"]["subjective"] == pytest.approx(crit[("alpha", "Полезность")])
    json.dumps(board)  # plain values only


def test_compare_two_runs(explorer: Explorer, db: Path):
    result = explorer.compare("0-1", "0-2", page_size=10)
    a, b = read_verdicts(db, run=1), read_verdicts(db, run=2)
    joined = a.merge(b, on="item_key", suffixes=("_a", "_b")).dropna(subset=["score_a", "score_b"])
    assert result["total"] == len(joined) == result["stats"]["n"]
    diffs = [abs(r["diff"]) for r in result["rows"]]
    assert diffs == sorted(diffs, reverse=True) and diffs[0] > 0
    assert all(r["diff"] == r["score_a"] - r["score_b"] for r in result["rows"])
    assert result["rows"][0]["rationale_a"].startswith("Обоснование judge-a")
    assert result["rows"][0]["rationale_b"].startswith("Обоснование judge-b")
    stats_ = result["stats"]
    assert stats_["spearman"] == pytest.approx(stats.spearmanr(joined["score_a"], joined["score_b"]).statistic)
    assert stats_["mae"] == pytest.approx((joined["score_a"] - joined["score_b"]).abs().mean())
    confusion = stats_["confusion"]
    assert sum(map(sum, confusion["counts"])) == len(joined) and 3.0 in confusion["labels"]
    diagonal = sum(confusion["counts"][i][i] for i in range(len(confusion["labels"])))
    assert diagonal == int((joined["score_a"].round() == joined["score_b"].round()).sum())
    every = [r["item_key"] for p in range(1, result["pages"] + 1)
             for r in explorer.compare("0-1", "0-2", page=p, page_size=10)["rows"]]
    assert sorted(every) == sorted(joined["item_key"])
    one = explorer.compare("0-1", "0-2", VerdictFilter(criterion="Полезность", model="alpha"))
    assert one["total"] == 6 and {r["model_id"] for r in one["rows"]} == {"alpha"}
    assert explorer.compare("0-1", "0-2", VerdictFilter(only="error"))["stats"]["n"] == 0
    with pytest.raises(ValueError, match="no run 7"):
        explorer.compare("0-1", "0-7")


def test_compare_with_an_expert_file_and_across_databases(tmp_path: Path, db: Path):
    other = tmp_path / "other.db"
    with RunStore(other) as store:
        fill_run(store, "judge-b")
    experts = tmp_path / "experts.jsonl"
    rows = read_verdicts(db, run=1)
    with experts.open("w", encoding="utf-8") as out:
        for r in rows.itertuples():
            if r.score is not None and r.score == r.score:
                out.write(json.dumps({"instruction": r.instruction, "answer": r.answer, "reference_answer": "",
                                      "model_id": r.model_id, "task_type": r.task_type, "criteria_name": r.criteria_name,
                                      "rubrics": r.rubrics, "criteria_score": min(r.score, r.scale_max),
                                      "annotations": [{"comment": "", "score": min(r.score, r.scale_max)}]},
                                     ensure_ascii=False) + "\n")
    with Explorer([db, other], experts=[experts], cache_dir=tmp_path / "cache") as ex:
        runs = ex.runs()
        assert [r["ref"] for r in runs] == ["0-1", "0-2", "1-1", "2-1"] and runs[3]["kind"] == "experts"
        assert runs[3]["judged"] == len(rows) - 1
        across = ex.compare("0-2", "1-1")  # the same judge's verdicts in two databases: no disagreement
        assert across["total"] > 0 and across["stats"]["mae"] == 0.0 and across["rows"][0]["diff"] == 0.0
        vs_experts = ex.compare("0-1", "2-1")
        assert vs_experts["total"] == len(rows) - 1 and vs_experts["rows"][0]["diff"] == 1.0  # the clipped 3 → 2
        assert ex.verdicts("2-1", VerdictFilter(criterion="Полезность", model="alpha"))["total"] == 6
        assert ex.facets("2-1")["models"] == sorted(MODELS)
        hedgehog = ex.verdicts("2-1", VerdictFilter(q="ежик"))["rows"]  # searching an in-memory source
        assert {(r["model_id"], r["record_id"]) for r in hedgehog} == {("beta", hedgehog[0]["record_id"])}
        assert len(hedgehog) == 3 and ex.answer("2-1", hedgehog[0]["record_pk"])["answer"] == answer_text("beta", 1)
        assert ex.leaderboard("2-1")["models"]


def test_typical_filters_use_indexes(explorer: Explorer, db: Path):
    conn = sqlite3.connect(db)
    filters = [VerdictFilter(), VerdictFilter(model="beta", criterion="Полезность", score_min=1, score_max=2),
               VerdictFilter(criterion="Полезность"), VerdictFilter(model="beta"), VerdictFilter(task_type=TASKS[0]),
               VerdictFilter(group="general", task_type=TASKS[0]), VerdictFilter(score_max=0.5),
               VerdictFilter(only="invalid"), VerdictFilter(only="error", score_min=0), VerdictFilter(model="a", score_min=1)]
    for f in filters:
        plan = _plan(1, f, match=None, records=False)
        for sql, params in ((f"SELECT COUNT(*) {plan.source} WHERE {plan.where}", plan.params),
                            plan.select("j.rowid", "j.record_pk, j.position", 50, 100)):
            steps = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
            tables = [s for s in steps if s.startswith(("SCAN", "SEARCH"))]
            assert tables and all(s.startswith("SEARCH") and " USING " in s for s in tables), (f, steps)
            # inner loops look one row up by its key (a score range searched per job took minutes)
            assert all(any(k in s for k in ("item_key=?", "record_pk=?", "rowid=?")) for s in tables[1:]), (f, steps)
            assert not any("TEMP B-TREE FOR ORDER BY" in s for s in steps) or f != VerdictFilter(), steps
    for sort in ("score", "-score"):  # unfiltered sorts by score walk the score index (ties: a partial sort)
        sql, params = _plan(1, VerdictFilter(), match=None, records=False, by_score=True).select("j.rowid", _ORDER[sort], 50)
        steps = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
        assert "verdicts_score" in steps[0] and not any("TEMP B-TREE FOR ORDER BY" in s for s in steps), steps
    conn.close()


def test_search_queries_use_indexes(db: Path, tmp_path: Path):
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    textindex.attach(conn, str(tmp_path / "side.fts.sqlite"))
    assert textindex.sync(conn) > 0 and textindex.sync(conn) == 0
    match = textindex.fts_query("зелёный ответ")
    plan = _plan(1, VerdictFilter(q="зелёный ответ", model="beta"), match=match, records=False)
    for sql, params in ((textindex.RECOVERED_SQL, ()), (textindex.matching_jobs_sql(), (1, match, 1, match)),
                        plan.select("j.rowid", "j.record_pk, j.position", 50)):
        steps = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
        scans = [s for s in steps if s.startswith("SCAN") and not s.startswith(("SCAN fts.", "SCAN f"))]
        assert not scans, steps
    conn.close()


def test_one_index_file_shared_by_processes(db: Path, tmp_path: Path):
    """Two `pollux ui` on one database share its index file: syncing at once adds each text once."""
    sidecar = str(tmp_path / "shared.fts.sqlite")
    barrier = threading.Barrier(4)
    added: list[int] = []
    errors: list[BaseException] = []

    def sync() -> None:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            textindex.attach(conn, sidecar)
            barrier.wait()
            added.append(textindex.sync(conn))
        except BaseException as e:  # reported by the test
            errors.append(e)
        finally:
            conn.close()

    threads = [threading.Thread(target=sync) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    answers, rationales = sqlite3.connect(db).execute(
        "SELECT (SELECT COUNT(*) FROM records), (SELECT COUNT(*) FROM verdicts WHERE error IS NULL)").fetchone()
    assert sorted(added) == [0, 0, 0, answers + rationales]
    conn = sqlite3.connect(sidecar)  # every rationale says "зелёный" (indexed as "зеленый"), each once
    assert conn.execute("SELECT COUNT(*) FROM rationales WHERE rationales MATCH 'зеленый'").fetchone()[0] == rationales
    conn.close()


def test_old_database_without_indexes(tmp_path: Path, db: Path, caplog: pytest.LogCaptureFixture):
    old = tmp_path / "old.db"
    shutil.copy(db, old)
    conn = sqlite3.connect(old)
    for name in UI_INDEXES:
        conn.execute(f"DROP INDEX {name}")
    conn.commit()
    conn.close()
    before = old.read_bytes()
    with caplog.at_level(logging.WARNING, logger="pollux.ui"), Explorer([old], cache_dir=tmp_path / "c") as ex:
        f = VerdictFilter(model="beta", criterion="Полезность", score_min=1)
        with Explorer([db], cache_dir=tmp_path / "c2") as new:
            assert ex.verdicts("0-1", f) == new.verdicts("0-1", f)
            assert ex.runs() == [dict(r, path=str(old)) for r in new.runs()]
    assert "without the indexes" in caplog.text and "slower" in caplog.text
    assert old.read_bytes() == before  # read-only: nothing was written


def test_runs_show_a_live_writer(tmp_path: Path):
    """`pollux evaluate` commits verdict by verdict in WAL mode: the explorer sees progress grow
    while the writer runs, and neither blocks the other."""
    db = tmp_path / "live.db"
    with RunStore(db) as store:
        run_id = fill_run(store, "judge-a", n_questions=6, skip=54)
        todo = store.conn.execute("SELECT record_pk, criteria_name, criterion_id, criterion_group, rubrics, item_key, "
                                  "position FROM jobs WHERE run_id = ? ORDER BY rowid", (run_id,)).fetchall()
    done = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with RunStore(db) as store:
                for i, row in enumerate(todo):
                    job = JobRow(*row)
                    store.write_verdict(run_id, job.item_key, make_verdict("judge-a", job, i % 3, 1, i % 2))
                    time.sleep(0.002)
        except BaseException as e:  # reported by the test
            errors.append(e)
        finally:
            done.set()

    seen = []
    with Explorer([db], cache_dir=tmp_path / "cache") as ex:
        thread = threading.Thread(target=writer)
        thread.start()
        while not done.is_set():
            seen.append(ex.runs()[0]["judged"] + ex.runs()[0]["failed"])
        thread.join()
        final = ex.run("0-1")
    assert not errors
    assert seen == sorted(seen) and len(set(seen)) >= 3  # progress seen growing, never going back
    assert final["pending"] == 0 and final["finished"] and final["progress"] == 1.0


def test_not_a_run_database(tmp_path: Path):
    with pytest.raises(ValueError, match="no such run database"):
        Explorer([tmp_path / "missing.db"])
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(ValueError, match="not a pollux run database"):
        Explorer([other], reviews_writable=True)
    assert [r[0] for r in sqlite3.connect(other).execute("SELECT name FROM sqlite_master")] == ["t"]
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(ValueError, match="not a SQLite database"):
        Explorer([junk])


def test_store_migrations_keep_the_ui_indexes(tmp_path: Path):
    """A schema-1 store is rebuilt on open (its records table dropped and recreated): the UI's
    indexes come back with it; an older store without them gets them when next opened."""
    from pollux.store import _SCHEMA

    db = tmp_path / "v1.db"
    conn = sqlite3.connect(db)
    conn.executescript(_SCHEMA.replace("UNIQUE (source, record_id, model_id, answer_key)",
                                       "UNIQUE (source, record_id, model_id)"))
    for name in UI_INDEXES:
        conn.execute(f"DROP INDEX {name}")
    conn.execute("INSERT INTO store_meta VALUES ('schema_version', '1')")
    conn.commit()
    conn.close()
    RunStore(db).close()
    have = {r[0] for r in sqlite3.connect(db).execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert set(UI_INDEXES) <= have
