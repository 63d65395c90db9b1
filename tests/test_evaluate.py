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
