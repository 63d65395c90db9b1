"""Expert data hygiene (issue 23, item 11) and the review export round trip without task types
(item 15): bad expert rows — out of the rubric's scale, not finite, duplicated — are counted, named
by line and excluded (an error with `strict`), never silently used or read as "not applicable"."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from pollux.cli import app
from pollux.metaeval import MetaEvalWarning, load_experts, meta_evaluate, scores_from_frame
from pollux.records import JudgeItem
from pollux.store import JobRow, RunStore
from pollux.verdicts import Verdict

RUBRIC = "0: нет\n\n1: частично\n\n2: да"


def rows(n: int = 8) -> list[dict]:
    """n answers of model "a" on one out-of-domain task, one criterion, two experts each."""
    out = []
    for i in range(n):
        scores = [i % 3, (i + 1) % 3]
        out.append({"instruction": f"Задание {i}", "reference_answer": "", "answer": f"Ответ {i}",
                    "model_id": "a", "task_type": "Стайл-трансфер", "criteria_name": "Грамотность",
                    "rubrics": RUBRIC, "annotations": [{"comment": "", "score": s} for s in scores],
                    "criteria_score": sum(scores) / 2})
    return out


def write_jsonl(path: Path, data: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in data), encoding="utf-8")
    return path


def load_quietly(source, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MetaEvalWarning)
        experts = load_experts(source, **kwargs)
    return experts, [str(w.message) for w in caught]


def test_out_of_scale_expert_scores_are_excluded_and_named(tmp_path: Path):
    data = rows()
    data[2]["criteria_score"] = 7  # the aggregate off a 0–2 scale
    data[4]["annotations"][0]["score"] = 7  # one expert off the scale
    data[5]["annotations"][1]["score"] = 1.5  # one expert's score between levels: no rating of this rubric
    data[7]["annotations"][1]["score"] = -2  # below the scale (-1 alone means "not applicable")
    data[6]["criteria_score"] = 1.5  # an aggregate between levels is legitimate
    experts, messages = load_quietly(write_jsonl(tmp_path / "e.jsonl", data))
    text = " | ".join(messages)
    assert "e.jsonl:3: 'criteria_score' 7 is outside the rubric's scale [0, 2]" in text
    assert "e.jsonl:5: 'annotations': an expert's score 7 outside the rubric's scale [0, 2]" in text
    assert "e.jsonl:6: 'annotations': an expert's score 1.5 is not one of the rubric's levels 0, 1, 2" in text
    assert "e.jsonl:8: 'annotations': an expert's score -2 outside the rubric's scale [0, 2]" in text
    assert experts.excluded == {"out of scale": ["e.jsonl:3", "e.jsonl:5", "e.jsonl:6", "e.jsonl:8"]}
    assert experts.frame["answer"].tolist() == [f"Ответ {i}" for i in (0, 1, 3, 6)]
    assert "excluded 4 expert row(s) of" in text and "4 out of scale" in text
    # a judge that agrees with the good rows is not pulled off by the bad ones
    scores = scores_from_frame(pd.DataFrame({"key": [JudgeItem.from_dict(r).key for r in data],
                                             "score": [r["criteria_score"] for r in rows()]}), judge="J")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetaEvalWarning)
        result = meta_evaluate(experts, scores, n_bootstrap=0, by_group=False)
    mae = result.table("mae").loc["a", "J"]
    assert mae == pytest.approx(abs(1.5 - rows()[6]["criteria_score"]) / 4)
    assert result.settings["expert_rows_excluded"] == {"out of scale": 4}


def test_non_finite_scores_are_excluded_not_read_as_not_applicable(tmp_path: Path):
    data = rows()
    data[1]["criteria_score"] = "NaN"
    data[2]["criteria_score"] = math.inf  # json.dumps writes Infinity
    data[3]["criteria_score"] = "inf"
    data[4]["annotations"][1]["score"] = "NaN"
    data[5]["criteria_score"] = None  # an empty cell: not applicable, kept
    data[6]["criteria_score"] = -1  # not applicable, kept
    experts, messages = load_quietly(write_jsonl(tmp_path / "e.jsonl", data))
    text = " | ".join(messages)
    for line, value in ((2, "'NaN'"), (3, "inf"), (4, "'inf'")):
        assert f"e.jsonl:{line}: 'criteria_score' is not a finite number: {value}" in text
    assert "e.jsonl:5: expert score in 'annotations' is not a finite number: 'NaN'" in text
    assert experts.excluded == {"not finite": ["e.jsonl:2", "e.jsonl:3", "e.jsonl:4", "e.jsonl:5"]}
    assert experts.frame["answer"].tolist() == [f"Ответ {i}" for i in (0, 5, 6, 7)]
    assert experts.frame["expert"].isna().tolist() == [False, True, True, False]


def test_duplicate_rows_count_once_and_conflicting_duplicates_not_at_all(tmp_path: Path):
    data = rows(4)
    data.append(dict(data[1]))  # line 5: the same row again
    data.append({**data[2], "criteria_score": 0.0,  # line 6: same texts, another score
                 "annotations": [{"comment": "", "score": 0}, {"comment": "", "score": 0}]})
    data.append({**data[3], "model_id": "b"})  # the same texts from another LLM: not a duplicate
    experts, messages = load_quietly(write_jsonl(tmp_path / "e.jsonl", data))
    text = " | ".join(messages)
    assert "e.jsonl:5: duplicate of e.jsonl:2 (same texts, LLM and scores)" in text
    assert "e.jsonl:6: conflicting duplicate of e.jsonl:3 (same texts and LLM, other scores); both left out" in text
    assert experts.excluded == {"duplicate": ["e.jsonl:5"], "conflicting duplicate": ["e.jsonl:3", "e.jsonl:6"]}
    assert list(zip(experts.frame["answer"], experts.frame["model_id"], strict=True)) == [
        ("Ответ 0", "a"), ("Ответ 1", "a"), ("Ответ 3", "a"), ("Ответ 3", "b")]


def test_strict_makes_excluded_rows_an_error(tmp_path: Path):
    data = rows()
    data[2]["criteria_score"] = 7
    data.append(dict(data[0]))
    path = write_jsonl(tmp_path / "e.jsonl", data)
    with pytest.raises(ValueError, match=r"2 expert row\(s\) of .*e\.jsonl cannot be used \(strict\): "
                                         r"1 out of scale \(first: e\.jsonl:3: .*\); 1 duplicate \(first: e\.jsonl:9"):
        load_experts(path, strict=True)
    scores = tmp_path / "s.jsonl"
    write_jsonl(scores, [{"key": JudgeItem.from_dict(r).key, "score": 1} for r in rows()])
    res = CliRunner().invoke(app, ["meta-eval", str(path), "--scores", str(scores), "--strict", "--bootstrap", "0"],
                             catch_exceptions=False)
    assert res.exit_code == 2 and "cannot be used (strict)" in res.stderr and res.stdout == ""
    res = CliRunner().invoke(app, ["meta-eval", str(path), "--scores", str(scores), "--bootstrap", "0"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "e.jsonl:3: 'criteria_score' 7 is outside" in res.stderr


def run_without_task_types(db: Path) -> list[dict]:
    """A real run store whose records have no task_type (answers files without one), and the
    reviews export of it: POLLUX expert rows with `task_type` null."""
    exported = []
    with RunStore(db) as store:
        run, _ = store.open_run("judge-a", {"judge": "judge-a"})
        for q in range(6):
            for model in ("alpha", "beta"):
                answer = f"Ответ {model} {q}"
                pk = store.upsert_record({
                    "source": "answers.jsonl", "record_id": f"q{q}", "model_id": model, "line": q + 1,
                    "answer_key": f"{model}-{q}", "instruction": f"Вопрос {q}", "answer": answer,
                    "reference_answer": "", "task_type": None, "task_subtype": None, "task_subsubtype": None,
                    "task_group": None, "extra_json": "{}"})
                item = JudgeItem(f"Вопрос {q}", answer, "Грамотность", RUBRIC)
                job = JobRow(pk, "Грамотность", "c0", "general", RUBRIC, item.key, 0)
                store.add_jobs(run.run_id, [job])
                judge = float((q + len(model)) % 3)
                store.write_verdict(run.run_id, item.key, Verdict("Грамотность", head_score=judge, valid=True,
                                                                  scale_min=0.0, scale_max=2.0, judge="judge-a"))
                expert = [judge, float(q % 3)]
                exported.append({"id": f"answers.jsonl:q{q}", "instruction": f"Вопрос {q}", "reference_answer": "",
                                 "answer": answer, "model_id": model, "task_type": None, "task_subtype": None,
                                 "criteria_name": "Грамотность", "criteria_group": "general", "rubrics": RUBRIC,
                                 "annotations": [{"comment": "", "score": s, "reviewer": r}
                                                 for s, r in zip(expert, ("anna", "boris"), strict=True)],
                                 "criteria_score": sum(expert) / 2, "judge_score": judge})
    return exported


def test_export_round_trip_without_task_types_uses_every_row(tmp_path: Path):
    """docs/ui.md: `pollux meta-eval EXPORT.jsonl --scores run.db` reads reviews back — with the
    default split, also when the runs had no task_type."""
    db = tmp_path / "run.db"
    path = write_jsonl(tmp_path / "export.jsonl", run_without_task_types(db))
    res = CliRunner().invoke(app, ["meta-eval", str(path), "--scores", str(db), "--bootstrap", "0",
                                   "--format", "json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["settings"]["split"] == "all" and data["settings"]["split_requested"] == "ood"
    assert {m["model"]: m["n_rows"] for m in data["metrics"] if m["group"] == "all" and m["metric"] == "mae"} == {
        "alpha": 6, "beta": 6, "Avg.": 12}
    assert "no row has a task_type: split 'ood' does not apply; all 12 rows are used" in res.stderr
    # data with task types keeps the split (and its error when a split is empty)
    typed = [{**r, "task_type": "Объяснить концепт"} for r in json.loads("[" + ",".join(
        path.read_text(encoding="utf-8").splitlines()) + "]")]
    res = CliRunner().invoke(app, ["meta-eval", str(write_jsonl(tmp_path / "typed.jsonl", typed)), "--scores", str(db),
                                   "--bootstrap", "0"], catch_exceptions=False)
    assert res.exit_code == 2 and "no expert rows in split 'ood'" in res.stderr


def test_the_verb_is_the_api(tmp_path: Path):
    """`pollux meta-eval` is `pollux.metaeval.run` plus flag parsing: the same inputs give the same
    output, and every request is checked before any data is read."""
    from pollux.metaeval import run

    examples = Path(__file__).resolve().parents[1] / "examples"
    experts = examples / "expert_annotations.jsonl"
    scores = [examples / "expert_annotations.judge-regression.jsonl",
              examples / "expert_annotations.judge-generative.jsonl"]
    args = ["--split", "all,ood", "--bootstrap", "30", "--seed", "2", "--format", "json", "--judge-name", "R",
            "--judge-name", "G", "--common-rows"]
    res = CliRunner().invoke(app, ["meta-eval", str(experts), "--scores", str(scores[0]), "--scores", str(scores[1]),
                                   *args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetaEvalWarning)
        done = run(experts, scores=scores, names=["R", "G"], splits="all,ood", n_bootstrap=30, seed=2,
                   common_rows=True)
    assert done.render("json") == res.stdout
    assert json.loads(res.stdout)["splits"]["ood"]["settings"]["common_rows"] is True
    for bad, message in ((dict(splits="train"), "unknown split 'train'"), (dict(score="bogus"), "unknown score"),
                         (dict(compare="paper"), "unknown --compare 'paper'"),
                         (dict(names=["a", "b"]), "2 --judge-name for 1 judge sources")):
        with pytest.raises(ValueError, match=message):
            run(tmp_path / "missing.parquet", scores=[scores[0]], **bad)
    with pytest.raises(ValueError, match="at least one judge"):
        run(tmp_path / "missing.parquet")


def test_one_parquet_reader_reads_only_the_columns_asked_for(tmp_path: Path):
    from pollux.inputs import read_parquet_columns, read_rows

    path = tmp_path / "x.parquet"
    pd.DataFrame({"a": ["x", "y"], "b": [1.5, math.nan], "c": [[{"score": 1}], None]}).to_parquet(path)
    columns, n = read_parquet_columns(path, ["b", "c", "missing"])
    assert n == 2 and columns == {"b": [1.5, None], "c": [[{"score": 1}], None]}  # NaN: a missing cell
    assert [r.data for r in read_rows(path).rows] == [{"a": "x", "b": 1.5, "c": [{"score": 1}]},
                                                      {"a": "y", "b": None, "c": None}]
