"""Meta-evaluation inputs and outputs: expert files, score sources (JSONL, a real run database,
a judge run), score selection, the in/out-of-domain split, criterion groups, table formats."""

from __future__ import annotations

import json
import warnings
from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pollux.metaeval import (
    DEFAULT_OOD_TASKS,
    MetaEvalWarning,
    load_experts,
    meta_evaluate,
    parse_ood_tasks,
    read_score_jsonl,
    render,
    scores_from_db,
    scores_from_frame,
    select_scores,
)
from pollux.records import JudgeItem

RUBRIC = "0: нет\n\n1: частично\n\n2: да"


def pollux_rows(n_answers: int = 6, models: tuple[str, ...] = ("a", "b", "c")) -> list[dict]:
    """POLLUX-format rows: half the instructions of an out-of-domain task type, half in-domain."""
    rows = []
    rng = np.random.default_rng(0)
    for i in range(n_answers):
        task = "Стайл-трансфер" if i % 2 else "Объяснить концепт"
        for m in models:
            for crit in ("Грамотность", "Полезность", "Креативность"):
                scores = [int(s) for s in rng.integers(0, 3, 2)]
                rows.append({"instruction": f"Задание {i}", "reference_answer": "", "answer": f"Ответ {m} {i}",
                             "model_id": m, "task_type": task, "criteria_name": crit, "rubrics": RUBRIC,
                             "annotations": [{"comment": "ок", "score": s} for s in scores],
                             "criteria_score": float(np.mean(scores))})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def key_of(row: dict) -> str:
    return JudgeItem.from_dict(row).key


def test_parquet_and_jsonl_give_the_same_rows(tmp_path: Path):
    rows = pollux_rows()
    pd.DataFrame(rows).to_parquet(tmp_path / "e.parquet")  # annotations: list<struct<comment, score>>
    a = load_experts(tmp_path / "e.parquet")
    b = load_experts(write_jsonl(tmp_path / "e.jsonl", rows))
    assert a.frame["key"].tolist() == b.frame["key"].tolist() == [key_of(r) for r in rows]
    np.testing.assert_array_equal(a.annotations, b.annotations)
    assert a.frame["answer_id"].nunique() == 18  # 6 instructions × 3 models
    assert a.frame["ood"].tolist() == [r["task_type"] in DEFAULT_OOD_TASKS for r in rows]
    # criterion groups come from the taxonomy catalogue
    assert dict(zip(a.frame["criteria_name"], a.frame["group"], strict=True)) == {
        "Грамотность": "general", "Полезность": "subjective", "Креативность": "domain"}


def test_a_bad_row_is_skipped_with_its_number_and_the_others_kept(tmp_path: Path):
    rows = pollux_rows(2)
    rows[3]["rubrics"] = ""
    rows[5]["criteria_score"] = "много"
    with pytest.warns(MetaEvalWarning) as caught:
        e = load_experts(write_jsonl(tmp_path / "e.jsonl", rows))
    messages = " | ".join(str(w.message) for w in caught)
    assert "e.jsonl:4: field 'rubrics' is empty" in messages
    assert "e.jsonl:6: 'criteria_score' is not a number" in messages
    assert len(e.frame) == len(rows) - 2 and len(e.skipped) == 2
    with pytest.raises(ValueError, match="missing column"):
        load_experts(pd.DataFrame([{"instruction": "x", "answer": "y"}]))
    with pytest.warns(MetaEvalWarning) as caught:
        frame = load_experts(pd.DataFrame(rows)).frame
    assert "DataFrame: row 4: field 'rubrics' is empty" in " | ".join(str(w.message) for w in caught)
    assert len(frame) == len(rows) - 2
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(rows[0], ensure_ascii=False) + '\n{oops\n', encoding="utf-8")
    with pytest.warns(MetaEvalWarning, match=r"skipped broken\.jsonl:2: broken JSON"):
        assert len(load_experts(broken).frame) == 1
    broken.write_text("{oops\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"missing column.*first broken\.jsonl:1: broken JSON"):
        load_experts(broken)


def policy_file(path: Path, rows: list[dict]) -> Path:
    """Five lines with everything the one input policy covers: a BOM and CRLF (line 1), bytes that
    are not UTF-8 (2), a lone surrogate (3), a valid line (4), a NUL (5)."""
    lines = [json.dumps(r, ensure_ascii=False).encode() for r in rows[:5]]
    lines[1] = lines[1].replace("Ответ".encode(), b"\xff\xfe")
    lines[2] = json.dumps({**rows[2], "answer": "\ud800"}).encode()
    lines[4] = json.dumps({**rows[4], "rubrics": "0: нет\u0000"}).encode()
    path.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(lines) + b"\r\n")
    return path


def test_expert_and_score_files_follow_the_one_input_policy(tmp_path: Path):
    """Experts, scores and `pollux evaluate` read files through `pollux.inputs.read_rows`: the same
    lines are refused, with the same `file:line: what is wrong`."""
    from pollux.inputs import read_rows

    rows = pollux_rows(2, models=("a",))
    experts_path = policy_file(tmp_path / "e.jsonl", rows)
    expected = [str(p) for p in read_rows(experts_path).problems]
    assert [m.split(": ")[0] for m in expected] == ["e.jsonl:2", "e.jsonl:3", "e.jsonl:5"]
    assert "not valid UTF-8" in expected[0] and "field 'answer'" in expected[1] and "NUL" in expected[2]
    with pytest.warns(MetaEvalWarning) as caught:
        experts = load_experts(experts_path)
    assert sorted(str(w.message) for w in caught) == [f"skipped {m}" for m in expected]
    assert experts.frame["key"].tolist() == [key_of(rows[0]), key_of(rows[3])]  # BOM and CRLF read away
    scored = [{**r, "score": 1} for r in rows]
    scores_path = policy_file(tmp_path / "s.jsonl", scored)
    with pytest.warns(MetaEvalWarning) as caught:
        scores = read_score_jsonl(scores_path, judge="J")
    assert sorted(str(w.message) for w in caught) == [f"skipped {p}" for p in read_rows(scores_path).problems]
    assert scores["key"].tolist() == [key_of(rows[0]), key_of(rows[3])]


def test_parquet_shards_are_read_column_wise_with_the_same_checks(tmp_path: Path):
    """Parquet shards are read with column projection (only what meta-eval uses), not row by row
    through read_rows: the rows, keys, scores and the refused rows with their messages are those
    of the same data as JSONL; bad text in a column meta-eval never reads does not cost the row."""
    from pollux.inputs import read_rows

    rows = pollux_rows(2)
    rows[1]["rubrics"] = "0: нет\u0000"
    rows[3]["criteria_name"] = ""
    rows[7]["criteria_score"] = None  # not applicable
    jsonl = write_jsonl(tmp_path / "e.jsonl", rows)
    data = tmp_path / "data"
    data.mkdir()
    extra = [{**r, "criteria_description": "не читается"} for r in rows]
    extra[4]["criteria_description"] = "NUL \u0000 in a column meta-eval does not read"
    pd.DataFrame(extra[:6]).to_parquet(data / "test-00000-of-00002.parquet")
    pd.DataFrame(extra[6:]).to_parquet(data / "test-00001-of-00002.parquet")
    with pytest.warns(MetaEvalWarning) as caught:
        shards = load_experts(data)
    with pytest.warns(MetaEvalWarning):
        lines = load_experts(jsonl)
    problems = [str(p).replace("e.jsonl:", "test-00000-of-00002.parquet:") for p in read_rows(jsonl).problems]
    problems += [m.replace("e.jsonl:", "test-00000-of-00002.parquet:") for m in lines.skipped[len(problems):]]
    assert shards.skipped == problems and len(problems) == 2
    assert [str(w.message) for w in caught] == [f"skipped {m}" for m in problems]
    assert shards.frame["key"].tolist() == lines.frame["key"].tolist()
    assert len(shards.frame) == len(rows) - 2  # row 5 (bad text in criteria_description) is kept
    np.testing.assert_array_equal(shards.frame["expert"], lines.frame["expert"])
    np.testing.assert_array_equal(shards.annotations, lines.annotations)


def test_expert_files_in_every_format_give_the_same_rows(tmp_path: Path):
    rows = pollux_rows(1)
    frame = pd.DataFrame(rows)
    frame.assign(annotations=frame["annotations"].map(json.dumps)).to_csv(tmp_path / "e.csv", index=False)
    (tmp_path / "e.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    frame.to_parquet(tmp_path / "e.parquet")
    loaded = [load_experts(tmp_path / f"e.{ext}") for ext in ("csv", "json", "parquet")]
    for e in loaded:
        assert e.frame["key"].tolist() == [key_of(r) for r in rows]
        np.testing.assert_array_equal(e.annotations, loaded[0].annotations)
        assert e.frame["expert"].tolist() == [r["criteria_score"] for r in rows]


def test_score_jsonl_by_key_or_by_texts(tmp_path: Path):
    rows = pollux_rows(1, models=("a",))
    lines = [
        {"key": key_of(rows[0]), "score": 1.5, "head_score": 1.5},
        {**{k: rows[1][k] for k in ("instruction", "answer", "criteria_name", "rubrics")}, "text_score": 2},
        {"score": 1},  # neither key nor texts
    ]
    path = write_jsonl(tmp_path / "judge-x.jsonl", lines)
    with pytest.warns(MetaEvalWarning, match="judge-x.jsonl:3"):
        s = read_score_jsonl(path)
    assert s["judge"].tolist() == ["judge-x", "judge-x"]  # named after the file
    assert s["key"].tolist() == [key_of(rows[0]), key_of(rows[1])]
    assert s["score"].tolist() == [1.5, 2.0]  # score falls back to the text score
    with pytest.warns(MetaEvalWarning):
        assert read_score_jsonl(path, judge="J")["judge"].tolist() == ["J", "J"]


def test_score_selection():
    s = scores_from_frame(pd.DataFrame({"key": list("abcd"), "head_score": [1.5, 0.5, 2.49, None],
                                        "text_score": [2, 0, None, 1], "error": [None, None, None, None]}),
                          judge="J")
    assert select_scores(s, "auto").tolist()[:3] == [1.5, 0.5, 2.49] and select_scores(s, "auto")[3] == 1
    assert select_scores(s, "head-rounded").tolist()[:3] == [2.0, 1.0, 2.0]
    assert select_scores(s, "text").tolist()[:2] == [2.0, 0.0]
    assert np.isnan(select_scores(s, "text")[2])
    generative = scores_from_frame(pd.DataFrame({"key": ["a"], "text_score": [2]}), judge="G")
    with pytest.raises(ValueError, match="no head_score"):
        select_scores(generative, "head")
    with pytest.raises(ValueError, match="unknown score"):
        select_scores(s, "best")


def test_split_and_ood_task_list(tmp_path: Path):
    rows = pollux_rows()
    experts = load_experts(pd.DataFrame(rows))
    scores = scores_from_frame(pd.DataFrame({"key": experts.frame["key"],
                                             "score": experts.frame["expert"] + 0.1}), judge="J")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetaEvalWarning)
        ood = meta_evaluate(experts, scores, split="ood", n_bootstrap=0)
        ind = meta_evaluate(experts, scores, split="id", n_bootstrap=0)
    assert set(ood.coverage["n_rows"]) == {9} and set(ind.coverage["n_rows"]) == {9}
    assert parse_ood_tasks("Объяснить концепт, Стайл-трансфер") == ("Объяснить концепт", "Стайл-трансфер")
    (tmp_path / "ood.txt").write_text("# held out\nОбъяснить концепт\n\n", encoding="utf-8")
    assert parse_ood_tasks(str(tmp_path / "ood.txt")) == ("Объяснить концепт",)
    swapped = load_experts(pd.DataFrame(rows), ood_tasks=parse_ood_tasks(str(tmp_path / "ood.txt")))
    assert swapped.frame["ood"].tolist() == (~experts.frame["ood"]).tolist()
    with pytest.raises(ValueError, match="unknown split"):
        meta_evaluate(experts, scores, split="train")


def build_run_db(db: Path, rows: list[dict], judge: str = "pollux-judge-test") -> None:
    """A real pollux run database: row 0 never judged, row 1 an error, the rest 0.25 off the experts."""
    from pollux.store import JobRow, RunStore
    from pollux.verdicts import Verdict

    with RunStore(db) as store:
        run, _ = store.open_run(judge, {"judge": judge})
        for i, r in enumerate(rows):
            pk = store.upsert_record({"source": "e.jsonl", "record_id": f"{r['instruction']}|{r['answer']}",
                                      "model_id": r["model_id"], "line": i, "answer_key": r["answer"],
                                      "instruction": r["instruction"], "answer": r["answer"],
                                      "reference_answer": "", "task_type": r["task_type"], "task_subtype": None,
                                      "task_subsubtype": None, "task_group": None, "extra_json": "{}"})
            store.add_jobs(run.run_id, [JobRow(pk, r["criteria_name"], None, None, r["rubrics"], key_of(r), 0)])
            if i == 0:
                continue  # never judged
            off = 0.25 if r["criteria_score"] < 1 else -0.25
            verdict = (Verdict(r["criteria_name"], error="timeout", judge=judge) if i == 1 else
                       Verdict(r["criteria_name"], head_score=r["criteria_score"] + off, valid=True, judge=judge))
            store.write_verdict(run.run_id, key_of(r), verdict)


def test_real_run_database(tmp_path: Path):
    rows = pollux_rows(2, models=("a", "b"))
    experts = load_experts(pd.DataFrame(rows))
    db = tmp_path / "run.db"
    build_run_db(db, rows)
    scores = scores_from_db(db)
    assert set(scores["judge"]) == {"pollux-judge-test"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetaEvalWarning)
        result = meta_evaluate(experts, scores, split="all", n_bootstrap=100)
    cov = result.coverage.set_index("model")
    assert cov.loc["a", "missing"] == 1 and cov.loc["a", "error"] == 1 and cov.loc["a", "used"] == 4
    assert cov.loc["b", "used"] == 6
    assert result.table("mae")["pollux-judge-test"]["Avg."] == pytest.approx(0.25)
    renamed = scores_from_db(db, judge="R")
    assert set(renamed["judge"]) == {"R"}


def test_cli_reads_a_run_database(tmp_path: Path):
    from typer.testing import CliRunner

    from pollux.cli import app

    rows = pollux_rows(2, models=("a", "b"))
    write_jsonl(tmp_path / "experts.jsonl", rows)
    build_run_db(tmp_path / "run.db", rows)
    res = CliRunner().invoke(app, ["meta-eval", str(tmp_path / "experts.jsonl"), "--scores", str(tmp_path / "run.db"),
                                   "--split", "all", "--format", "json", "--bootstrap", "20"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["judges"] == ["pollux-judge-test"]
    mae = [m for m in data["metrics"] if m["metric"] == "mae" and m["model"] == "Avg." and m["group"] == "all"]
    assert mae[0]["value"] == pytest.approx(0.25)
    assert "missing 1, error 1" in res.stderr
    res = CliRunner().invoke(app, ["meta-eval", str(tmp_path / "experts.jsonl"), "--scores", str(tmp_path / "x.db")])
    assert res.exit_code == 2 and "no such file" in res.stderr


def test_running_a_judge(tiny_judge_path: Path):
    from pollux.engine import SamplingParams
    from pollux.judge import Judge
    from pollux.metaeval import scores_from_judge

    rows = pollux_rows(2, models=("a", "b"))[:8]
    experts = load_experts(pd.DataFrame(rows))
    judge = Judge.from_pretrained(str(tiny_judge_path), dtype="float32", device="cpu",
                                  sampling=SamplingParams(max_new_tokens=8))
    progress = []
    scores = scores_from_judge(judge, experts, name="tiny", on_progress=lambda d, t: progress.append((d, t)))
    assert len(scores) == 8 and progress[-1] == (8, 8)
    assert scores["head_score"].notna().all()  # the regression head always gives a number
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetaEvalWarning)
        result = meta_evaluate(experts, scores, split="all", n_bootstrap=20, out_of_scale="clip")
    assert result.judges == ["tiny"] and result.coverage["used"].sum() == 8


def small_result():
    experts = load_experts(pd.DataFrame(pollux_rows()))
    rng = np.random.default_rng(1)
    scores = [scores_from_frame(pd.DataFrame({"key": experts.frame["key"],
                                              "score": np.clip(experts.frame["expert"] + rng.normal(0, s, len(
                                                  experts.frame)), 0, 2)}), judge=name)
              for name, s in (("Судья-1", 0.3), ("judge <2>", 0.8))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetaEvalWarning)
        return meta_evaluate(experts, scores, split="all", n_bootstrap=100)


def test_table_formats():
    result = small_result()
    md = render(result, "markdown")
    assert "| Evaluated LLM | Судья-1 | judge <2> |" in md and "| **Avg.** |" in md
    assert "### Spearman — all task types, by criterion group" in md
    spearman_avg = result.table("spearman")["Судья-1"]["Avg."]
    assert f"{spearman_avg:.3f}" in md
    csv = pd.read_csv(StringIO(render(result, "csv", ("spearman", "mae"))))
    assert set(csv["metric"]) == {"spearman", "mae"} and set(csv["table"]) == {"models", "groups"}
    avg = csv[(csv["table"] == "models") & (csv["metric"] == "spearman") & (csv["row"] == "Avg.")]
    assert avg["Судья-1"].iloc[0] == pytest.approx(spearman_avg, abs=1e-5)
    html = render(result, "html")
    assert html.startswith("<!doctype html>") and "judge &lt;2&gt;" in html and "<table>" in html
    data = json.loads(render(result, "json"))
    assert data["judges"] == ["Судья-1", "judge <2>"] and len(data["metrics"]) == len(result.metrics)
    terminal = render(result, "table")
    assert "Avg." in terminal and "Coverage" in terminal
    with pytest.raises(ValueError, match="unknown format"):
        render(result, "xlsx")


def test_missing_reference_and_task_type_cells_are_empty_texts():
    rows = pollux_rows(1, models=("a",))
    rows[0]["reference_answer"] = None
    rows[1]["reference_answer"] = "Эталон"
    rows[2]["task_type"] = None
    frame = pd.DataFrame(rows)  # pandas spells the missing cells NaN
    experts = load_experts(frame)
    assert len(experts.frame) == 3 and not experts.skipped
    assert experts.frame["key"].tolist() == [key_of({**r, "reference_answer": r["reference_answer"] or ""})
                                             for r in rows]
    assert experts.frame["task_type"].tolist()[2] == ""


def test_a_folder_or_glob_without_data_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.md").write_text("no data here", encoding="utf-8")
    with pytest.raises(ValueError, match=r"a folder without \.parquet, \.jsonl, \.json or \.csv files"):
        load_experts(tmp_path / "empty")
    with pytest.raises(ValueError, match="no file matches this pattern"):
        load_experts(str(tmp_path / "data" / "test-*.parquet"))
    with pytest.raises(ValueError, match="no such file or folder"):
        load_experts(tmp_path / "missing.parquet")
