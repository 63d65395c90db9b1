"""The evaluate run on the tiny real judge: expansion, storing, resuming, failures, configuration checks."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from pollux.evaluate import EvaluateError, evaluate, expand
from pollux.store import read_runs, read_verdicts

R2 = "0: плохо.\n\n1: средне.\n\n2: хорошо."
R1 = "0: нет.\n\n1: да."


@pytest.fixture(scope="module")
def judge(tiny_judge_path: Path):
    from pollux.engine import SamplingParams
    from pollux.judge import Judge

    return Judge.from_pretrained(str(tiny_judge_path), dtype="float32", device="cpu", batch_size=8,
                                 sampling=SamplingParams(max_new_tokens=8))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def answers(n: int = 3) -> list[dict]:
    crit = [{"criteria_name": "Полезность", "rubrics": R2}, {"criteria_name": "Грамотность", "rubrics": R2}]
    rows = []
    for i in range(n):
        rows.append({"id": f"q{i}", "model_id": "alpha" if i % 2 == 0 else "beta",
                     "instruction": f"Сколько будет {i} + {i}?", "answer": f"Будет {2 * i}.", "criteria": crit})
    return rows


class CountingJudge:
    """The real judge, interrupted (as by Ctrl-C) after `stop_after` stored verdicts, or failing on
    items whose answer contains `fail_on` — fault injection around a real engine."""

    def __init__(self, judge, stop_after: int | None = None, fail_on: str | None = None):
        self.inner, self.stop_after, self.fail_on = judge, stop_after, fail_on
        self.name, self.kind = judge.name, judge.kind
        self.judged: list[str] = []

    def describe(self):
        return self.inner.describe()

    def judge_many(self, items, on_verdict=None):
        if self.fail_on and any(self.fail_on in it.answer for it in items):
            raise RuntimeError("CUDA out of memory (injected)")

        def wrapped(i, verdict):
            on_verdict(i, verdict)
            self.judged.append(items[i].key)
            if self.stop_after is not None and len(self.judged) >= self.stop_after:
                raise KeyboardInterrupt

        return self.inner.judge_many(items, on_verdict=wrapped)


def test_evaluate_stores_every_judgement_and_resumes_nothing(tmp_path: Path, judge):
    src = write_jsonl(tmp_path / "a.jsonl", answers(3))
    db = tmp_path / "run.db"
    first = evaluate(src, db, judge, chunk_size=4)
    assert (first.jobs, first.items, first.judged, first.failed, first.remaining) == (6, 6, 6, 0, 0)
    assert first.new_run and first.run_id == 1 and not first.interrupted
    df = read_verdicts(db)
    assert len(df) == 6
    assert set(df["record_id"]) == {"q0", "q1", "q2"}
    assert set(df["model_id"]) == {"alpha", "beta"}
    assert df["error"].isna().all()
    assert df["head_score"].notna().all()  # a regression judge
    assert (df["scale_max"] == 2).all()
    assert df["line"].tolist() == [1, 1, 2, 2, 3, 3]
    # the stored configuration names the judge, template, sampling and pollux version
    (run,) = read_runs(db)
    assert run.config["engine"]["sampling"]["max_new_tokens"] == 8
    assert "template" in run.config["engine"] and run.config["pollux_version"]
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()

    again = CountingJudge(judge)
    second = evaluate(src, db, again)
    assert (second.already_done, second.judged, second.new_run) == (6, 0, False)
    assert again.judged == []


def test_interrupt_then_resume_judges_only_the_rest(tmp_path: Path, judge):
    src = write_jsonl(tmp_path / "a.jsonl", answers(4))
    db = tmp_path / "run.db"
    first = CountingJudge(judge, stop_after=3)
    summary = evaluate(src, db, first, chunk_size=4)
    assert summary.interrupted and summary.judged == 3 and summary.remaining == 5
    assert len(read_verdicts(db)) == 3

    second = CountingJudge(judge)
    summary = evaluate(src, db, second, chunk_size=4)
    assert not summary.interrupted and summary.already_done == 3 and summary.judged == 5
    assert not set(first.judged) & set(second.judged)
    conn = sqlite3.connect(db)
    dupes = conn.execute("SELECT item_key, COUNT(*) FROM verdicts GROUP BY item_key, judge, run_id HAVING COUNT(*) > 1").fetchall()
    assert dupes == [] and conn.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0] == 8
    conn.close()


def test_failed_batch_is_recorded_and_the_run_goes_on(tmp_path: Path, judge):
    rows = answers(4)
    rows[1]["answer"] = "ПАДАЕТ"
    src = write_jsonl(tmp_path / "a.jsonl", rows)
    db = tmp_path / "run.db"
    faulty = CountingJudge(judge, fail_on="ПАДАЕТ")
    summary = evaluate(src, db, faulty, chunk_size=2)  # one chunk per answer: only q1's chunk fails
    assert (summary.judged, summary.failed, summary.remaining) == (6, 2, 2)
    df = read_verdicts(db)
    failed = df[df["error"].notna()]
    assert set(failed["record_id"]) == {"q1"}
    assert failed["error"].str.contains("CUDA out of memory").all()
    # a resume retries only the failed judgements, replacing the error rows
    summary = evaluate(src, db, CountingJudge(judge), chunk_size=2)
    assert (summary.already_done, summary.judged, summary.failed) == (6, 2, 0)
    df = read_verdicts(db)
    assert len(df) == 8 and df["error"].isna().all()


def test_a_different_configuration_needs_new_run(tmp_path: Path, judge, tiny_judge_path: Path):
    from pollux.engine import SamplingParams
    from pollux.judge import Judge

    src = write_jsonl(tmp_path / "a.jsonl", answers(1))
    db = tmp_path / "run.db"
    evaluate(src, db, judge)
    other = Judge.from_pretrained(str(tiny_judge_path), dtype="float32", device="cpu",
                                  sampling=SamplingParams(max_new_tokens=4))
    with pytest.raises(EvaluateError, match="--new-run") as e:
        evaluate(src, db, other)
    assert "max_new_tokens: 8 → 4" in str(e.value)
    summary = evaluate(src, db, other, new_run=True)
    assert summary.run_id == 2 and summary.judged == 2
    assert len(read_verdicts(db, run=1)) == 2 and len(read_verdicts(db, run=2)) == 2


def test_task_type_expands_through_the_taxonomy():
    from pollux.taxonomy import load_catalog

    catalog = load_catalog()
    leaf = catalog.criteria_for_task("Решить задачу (STEM)", "Математика")
    row = {"instruction": "Решите: 2 + 2.", "answer": "4", "task_type": "Решить задачу (STEM)", "task_subtype": "Математика"}
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        exp = expand([write_jsonl(Path(d) / "t.jsonl", [row])], catalog=catalog)
    assert exp.problems == []
    (rec,) = exp.records
    assert [it.criteria_name for it in rec.items] == [c.name for c in leaf]
    assert [it.meta["criterion_id"] for it in rec.items] == [c.id for c in leaf]
    assert rec.fields["task_group"] == catalog.task_group("Решить задачу (STEM)")
    assert all(it.meta["model_id"] == "unknown" and it.meta["record_id"] == "1" for it in rec.items)


def test_same_content_from_two_models_is_judged_once(tmp_path: Path, judge):
    row = {"instruction": "Привет?", "answer": "Привет!", "criteria_name": "Полезность", "rubrics": R2}
    src = write_jsonl(tmp_path / "a.jsonl", [{**row, "model_id": "a"}, {**row, "model_id": "b"}])
    counting = CountingJudge(judge)
    summary = evaluate(src, tmp_path / "run.db", counting)
    assert (summary.jobs, summary.items, summary.judged) == (2, 1, 1)
    assert len(counting.judged) == 1
    df = read_verdicts(tmp_path / "run.db")
    assert sorted(df["model_id"]) == ["a", "b"] and df["item_key"].nunique() == 1


def test_user_criteria_file_applies_to_rows_without_criteria(tmp_path: Path, judge):
    from pollux.taxonomy import load_catalog, load_user_criteria

    crit = tmp_path / "criteria.json"
    crit.write_text(json.dumps([{"criteria_name": "Вежливость", "rubrics": R1}], ensure_ascii=False), encoding="utf-8")
    catalog = load_catalog()
    src = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Здравствуй", "answer": "Добрый день!"}])
    summary = evaluate(src, tmp_path / "run.db", judge, catalog=catalog,
                       user_criteria=load_user_criteria(crit, catalog))
    assert summary.judged == 1
    assert read_verdicts(tmp_path / "run.db")["criteria_name"].tolist() == ["Вежливость"]


def test_pollux_dataset_and_instructions_columns_as_they_are(tmp_path: Path, judge):
    import pandas as pd

    from pollux.aggregate import prepare

    gate_rubric = "0: нарушения нет.\n\n1: нарушение есть."
    base = {"instruction": "Переведи «кот».", "reference_answer": "", "answer": "cat", "model_id": "GPT-4o",
            "task_type": "Перевод на русский или английский", "task_subtype": "Слова (внутри контекста или культурный перевод)",
            "task_subsubtype": None, "difficulty": "Easy", "domain": "Общее", "is_provocative": False,
            "criteria_description": "…", "rubrics_example": "…", "criteria_score": 1.5,
            "annotations": [{"comment": "ок", "score": 1}, {"comment": "хорошо", "score": 2}]}
    dataset = pd.DataFrame([
        {**base, "criteria_name": "Есть ли критичное нарушение формата?", "rubrics": gate_rubric},
        {**base, "criteria_name": "Полезность", "rubrics": R2},
    ])
    dataset.to_parquet(tmp_path / "pollux.parquet")
    instructions = [{"prompt_id": 17, "instruction": "Назови столицу России.", "reference_answer": "Москва",
                     "answer": "Москва.", "meta": "Поиск информации", "task_type": "Проверить факт",
                     "criteria": [{"criteria_name": "Правильность ответа", "rubrics": R2}]}]
    write_jsonl(tmp_path / "instr.jsonl", instructions)
    summary = evaluate([tmp_path / "pollux.parquet", tmp_path / "instr.jsonl"], tmp_path / "run.db", judge)
    assert summary.problems == [] and summary.judged == 3
    df = read_verdicts(tmp_path / "run.db")
    parquet_rows = df[df["source"] == "pollux.parquet"]
    assert sorted(parquet_rows["line"]) == [1, 2] and parquet_rows["answer_key"].nunique() == 1  # one answer
    assert parquet_rows["task_group"].notna().all()
    instr = df[df["source"] == "instr.jsonl"].iloc[0]
    assert instr["record_id"] == "17" and instr["task_group"] == "Поиск информации"
    assert instr["reference_answer"] == "Москва"
    scores = prepare(parquet_rows)
    assert scores["is_gate"].tolist() == [True, False]  # the 0/1 criterion gates its answer's other rows


def assert_each_verdict_is_on_its_own_text(df) -> None:
    """The verdict shown beside a text was judged on that text: the row's texts hash to its item_key."""
    from pollux.records import JudgeItem

    for r in df.itertuples(index=False):
        item = JudgeItem(instruction=r.instruction, answer=r.answer, criteria_name=r.criteria_name,
                         rubrics=r.rubrics, reference_answer=r.reference_answer)
        assert item.key == r.item_key, (r.record_id, r.answer)


def store_jobs(db: Path, run_id: int) -> int:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT COUNT(*) FROM jobs WHERE run_id=?", (run_id,)).fetchone()[0]
    finally:
        conn.close()


def test_duplicate_id_with_different_answers_is_rejected_naming_both_lines(tmp_path: Path, judge):
    """Defect 3 of issue 11: the second row used to overwrite the first's record, so a verdict judged
    on answer A was shown under answer B and the summary's job count disagreed with the store."""
    rows = answers(3)
    rows.append({**rows[1], "answer": "Совсем другой ответ."})  # line 4: q1 of beta again, another answer
    src = write_jsonl(tmp_path / "a.jsonl", rows)
    db = tmp_path / "run.db"
    summary = evaluate(src, db, judge)
    assert len(summary.problems) == 2
    assert summary.problems[0].startswith("a.jsonl:2: ") and "line 4" in summary.problems[0]
    assert summary.problems[1].startswith("a.jsonl:4: ") and "line 2" in summary.problems[1]
    assert all("'q1'" in p and "'beta'" in p for p in summary.problems)
    assert (summary.jobs, summary.judged, summary.remaining) == (4, 4, 0)
    assert store_jobs(db, summary.run_id) == summary.jobs
    df = read_verdicts(db)
    assert sorted(set(df["record_id"])) == ["q0", "q2"]
    assert_each_verdict_is_on_its_own_text(df)


def test_two_input_files_with_one_name_are_refused_and_one_file_twice_is_read_once(tmp_path: Path):
    from pollux.taxonomy import load_catalog

    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    a, b = write_jsonl(tmp_path / "x" / "a.jsonl", answers(2)), write_jsonl(tmp_path / "y" / "a.jsonl", answers(3))
    with pytest.raises(EvaluateError, match=r"two input files are named 'a\.jsonl'"):
        expand([a, b], catalog=load_catalog())
    twice = expand([a, tmp_path / "x" / ".." / "x" / "a.jsonl"], catalog=load_catalog())
    assert twice.problems == [] and len(twice.records) == 2


def test_rows_of_one_answer_with_one_criterion_each_make_one_record(tmp_path: Path, judge):
    """The POLLUX dataset layout (one row per answer × criterion) may repeat an id: same texts, other criteria."""
    base = {"id": "a1", "model_id": "m", "instruction": "Сколько будет 2 + 2?", "answer": "4"}
    rows = [{**base, "criteria_name": "Полезность", "rubrics": R2},
            {**base, "criteria_name": "Грамотность", "rubrics": R2},
            {**base, "criteria_name": "Грамотность", "rubrics": R1}]  # line 3: a criterion this answer already has
    db = tmp_path / "run.db"
    summary = evaluate(write_jsonl(tmp_path / "a.jsonl", rows), db, judge)
    assert len(summary.problems) == 1
    assert summary.problems[0].startswith("a.jsonl:3: ") and "'Грамотность'" in summary.problems[0]
    assert "line 2" in summary.problems[0]
    assert (summary.jobs, summary.judged) == (2, 2) and store_jobs(db, summary.run_id) == 2
    df = read_verdicts(db)
    assert sorted(df["criteria_name"]) == ["Грамотность", "Полезность"] and set(df["record_id"]) == {"a1"}
    assert_each_verdict_is_on_its_own_text(df)


def test_a_changed_answer_never_shows_an_old_verdict(tmp_path: Path, judge, tiny_judge_path: Path):
    """Across resumes and runs: a file that changed the answer of an id (and its criteria) must not show
    the verdict judged on the old answer under the new one — in the resumed run or in an older run."""
    from pollux.engine import SamplingParams
    from pollux.judge import Judge

    db = tmp_path / "run.db"
    src = tmp_path / "a.jsonl"
    rows = answers(2)
    write_jsonl(src, rows)
    first = evaluate(src, db, judge)
    assert first.judged == 4
    old = read_verdicts(db, run=1)
    rows[1] = {**rows[1], "answer": "Исправленный ответ.", "criteria": rows[1]["criteria"][:1]}
    write_jsonl(src, rows)
    resumed = evaluate(src, db, judge)
    assert (resumed.run_id, resumed.already_done, resumed.judged) == (1, 2, 1)
    df = read_verdicts(db, run=1)
    assert_each_verdict_is_on_its_own_text(df)
    assert len(df) == resumed.jobs == store_jobs(db, 1) == 3
    assert df[df["record_id"] == "q1"]["answer"].tolist() == ["Исправленный ответ."]
    # a second configuration judges the new file; run 1's verdicts on the old answer stay with the old text
    other = Judge.from_pretrained(str(tiny_judge_path), dtype="float32", device="cpu",
                                  sampling=SamplingParams(max_new_tokens=4))
    rows[0] = {**rows[0], "answer": "Ещё один ответ."}
    write_jsonl(src, rows)
    evaluate(src, db, other, new_run=True)
    for run in (1, 2):
        assert_each_verdict_is_on_its_own_text(read_verdicts(db, run=run))
    run1 = read_verdicts(db, run=1)
    assert run1[run1["record_id"] == "q0"]["answer"].tolist() == [old["answer"].iloc[0]] * 2


def test_progress_rate_and_eta_count_only_this_sessions_judgements():
    """Issue 11: `27/266 … ETA 0:00:01` was shown for 6 s when ~55 s remained, and `ETA -:--:--`
    while the first batch ran. The rate is this session's judgements over the time since judging
    started; before the first verdict there is no measurement: "ETA ?" and the first batch is running."""
    from pollux.evaluate import Throughput

    now = [100.0]
    meter = Throughput(total=266, done=0, clock=lambda: now[0])
    now[0] = 103.0
    assert meter.rate() is None and meter.eta_s() is None
    assert "ETA ?" in meter.text() and "first batch" in meter.text()
    now[0] = 106.0
    meter.advance(27)  # the first batch of 27 reports at once after 6 s
    assert meter.rate() == pytest.approx(4.5)
    assert meter.eta_s() == pytest.approx((266 - 27) / 4.5)
    assert meter.text() == "4.50 judgements/s, ETA 0:00:53"
    now[0] = 112.0  # no verdict for 6 more seconds: the ETA grows instead of sitting near zero
    assert meter.eta_s() == pytest.approx((266 - 27) / (27 / 12))
    # a resumed run: the 200 judgements already in the database are not this session's speed
    now[0] = 0.0
    resumed = Throughput(total=266, done=200, clock=lambda: now[0])
    now[0] = 10.0
    resumed.advance(11)
    assert resumed.rate() == pytest.approx(1.1) and resumed.eta_s() == pytest.approx(55 / 1.1)
    resumed.advance(55)
    assert resumed.eta_s() == 0.0
    assert Throughput(total=266, done=266, clock=lambda: now[0]).text() == "nothing left to judge"


def test_rich_progress_says_the_first_batch_is_running():
    import io

    from rich.console import Console

    from pollux.evaluate import RichProgress

    now = [0.0]
    out = io.StringIO()
    bar = RichProgress(clock=lambda: now[0], console=Console(file=out, force_terminal=True, width=160))
    bar.start(total=10, done=0)
    bar.refresh()
    assert "ETA ?" in out.getvalue() and "first batch" in out.getvalue()
    now[0] = 2.0
    bar.advance(4)
    bar.stop()
    assert "2.00 judgements/s, ETA 0:00:03" in out.getvalue()


def test_a_finished_run_is_resumed_without_loading_the_judge(tmp_path: Path, tiny_judge_path: Path):
    """Issue 11: a resumed run with nothing left to judge still loaded the weights. A loader that
    describes what it would load finds its finished run; here the second loader cannot load at all."""
    import shutil

    from pollux.evaluate import JudgeLoader
    from pollux.judge import Judge

    weights = tmp_path / "judge"
    shutil.copytree(tiny_judge_path, weights)
    options = {"dtype": "float32", "device": "cpu", "max_new_tokens": 8}

    def loader() -> JudgeLoader:
        return JudgeLoader({"judge": str(weights), "options": options},
                           lambda: Judge.from_spec(str(weights), **options))

    src = write_jsonl(tmp_path / "a.jsonl", answers(2))
    db = tmp_path / "run.db"
    first = evaluate(src, db, loader())
    assert (first.judged, first.remaining) == (4, 0)
    shutil.rmtree(weights)  # loading now fails
    logged: list[str] = []
    again = evaluate(src, db, loader(), log=logged.append)
    assert (again.run_id, again.new_run, again.already_done, again.judged, again.remaining) == (1, False, 4, 0, 0)
    assert again.judge == first.judge
    assert any("not loaded" in m for m in logged)
    # something left to judge, or another request: the judge is loaded (and fails here)
    with pytest.raises(Exception, match="checkpoint"):
        evaluate(write_jsonl(tmp_path / "b.jsonl", answers(3)), db, loader())
    other = JudgeLoader({"judge": str(weights), "options": {**options, "max_new_tokens": 4}},
                        lambda: Judge.from_spec(str(weights), **options))
    with pytest.raises(Exception, match="checkpoint"):
        evaluate(src, db, other)


def test_cli_resumes_a_finished_run_without_the_weights(tmp_path: Path, tiny_judge_path: Path):
    """`pollux evaluate` run twice: the second run has nothing to judge, so it must not need the judge
    (here its folder is gone) — the summary says all done, exit 0."""
    import shutil

    from typer.testing import CliRunner

    from pollux.cli import app

    weights = tmp_path / "judge"
    shutil.copytree(tiny_judge_path, weights)
    src = write_jsonl(tmp_path / "a.jsonl", answers(2))
    command = ["evaluate", str(src), "--judge", str(weights), "--db", str(tmp_path / "run.db"), "--dtype", "float32",
               "--device", "cpu", "--max-new-tokens", "8", "--no-progress"]
    first = CliRunner().invoke(app, command)
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["judged"] == 4
    shutil.rmtree(weights)
    again = CliRunner().invoke(app, command)
    assert again.exit_code == 0, again.output
    summary = json.loads(again.stdout)
    assert (summary["already_done"], summary["judged"], summary["remaining"]) == (4, 0, 0)
    assert "the judge is not loaded" in again.stderr
