"""Greedy and expected scores side by side (`pollux meta-eval --score both`).

A generative judge may give, beside the score it wrote after `[RESULT]` (greedy), the
probability-weighted mean of the scale values at that position (expected). meta-eval evaluates
either, or both as two columns of each judge — from score files (JSONL, Parquet) and from the
run store of `--judge … --db`. Every number is checked against scipy on the same rows, and a
judgement without an expected score is counted and reported once, not silently dropped.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pollux.metaeval import DEFAULT_OOD_TASKS
from pollux.records import JudgeItem

RUBRIC = "0: плохо\n\n1: средне\n\n2: хорошо"
MODELS = ("o1", "gpt-4o", "gigachat-max")


def pollux(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pollux.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)


def dataset(folder: Path, seed: int = 2) -> pd.DataFrame:
    """Expert rows (two shards) and, per row, a judge's greedy (integer) and expected score;
    about one expected score in ten is missing."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(12):
        for m in MODELS:
            quality = rng.normal()
            for c in range(3):
                expert = float(np.clip(round(1 + quality + rng.normal(scale=0.5)), 0, 2))
                rows.append({"instruction": f"Задание {i}", "reference_answer": "", "answer": f"Ответ {m} {i}",
                             "model_id": m, "task_type": DEFAULT_OOD_TASKS[i % 2] if i < 8 else "Другое",
                             "criteria_name": f"Критерий {c}", "rubrics": RUBRIC, "criteria_score": expert,
                             "annotations": [{"comment": "", "score": expert}]})
    frame = pd.DataFrame(rows)
    frame.insert(0, "id", np.arange(len(frame)))
    truth = frame["criteria_score"].to_numpy()
    frame["greedy"] = np.clip(np.round(truth + rng.normal(scale=0.7, size=len(frame))), 0, 2)
    frame["expected"] = np.clip(truth + rng.normal(scale=0.4, size=len(frame)), 0, 2)
    frame.loc[rng.random(len(frame)) < 0.1, "expected"] = np.nan
    data = folder / "data"
    data.mkdir()
    half = len(frame) // 2
    experts = frame.drop(columns=["greedy", "expected"])
    experts.iloc[:half].to_parquet(data / "test-00000-of-00002.parquet")
    experts.iloc[half:].to_parquet(data / "test-00001-of-00002.parquet")
    return frame


def by_hand(frame: pd.DataFrame, column: str) -> dict[str, dict[str, float]]:
    """Spearman and MAE per evaluated LLM (and their mean) on the out-of-domain rows that have
    the score: scipy and numpy on the rows themselves."""
    ood = frame[frame["task_type"].isin(DEFAULT_OOD_TASKS) & frame[column].notna()]
    out: dict[str, dict[str, float]] = {"spearman": {}, "mae": {}}
    for m in MODELS:
        sub = ood[ood["model_id"] == m]
        out["spearman"][m] = float(stats.spearmanr(sub[column], sub["criteria_score"]).statistic)
        out["mae"][m] = float(np.mean(np.abs(sub[column] - sub["criteria_score"])))
    for metric in out:
        out[metric]["Avg."] = float(np.mean(list(out[metric].values())))
    return out


def check_against_scipy(result: dict, frame: pd.DataFrame, judge: str) -> None:
    assert result["sources"] == {f"{judge} [auto]": {"judge": judge, "score": "auto"},
                                 f"{judge} [expected]": {"judge": judge, "score": "expected"}}
    assert result["judges"] == [f"{judge} [auto]", f"{judge} [expected]"]
    metrics = [r for r in result["metrics"] if r["group"] == "all"]
    for label, column in ((f"{judge} [auto]", "greedy"), (f"{judge} [expected]", "expected")):
        want = by_hand(frame, column)
        for metric, per_model in want.items():
            for model, value in per_model.items():
                (got,) = [r for r in metrics if (r["judge"], r["metric"], r["model"]) == (label, metric, model)]
                assert abs(got["value"] - value) < 1e-9, (label, metric, model)
                assert got["ci_low"] <= got["value"] <= got["ci_high"]


def test_greedy_and_expected_side_by_side_from_a_jsonl_file(tmp_path: Path) -> None:
    frame = dataset(tmp_path)
    with (tmp_path / "scores.jsonl").open("w", encoding="utf-8") as fh:
        for r in frame.itertuples(index=False):
            line = {"id": int(r.id), "text_score": float(r.greedy)}
            if not np.isnan(r.expected):
                line["expected_score"] = float(r.expected)
            fh.write(json.dumps(line) + "\n")
    run = pollux("meta-eval", str(tmp_path / "data"), "--scores", str(tmp_path / "scores.jsonl"), "--on", "id",
                 "--judge-name", "J", "--score", "both", "--format", "json", "--bootstrap", "60", "--no-groups")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    check_against_scipy(result, frame, "J")

    # The rows without an expected score: counted per LLM under "no score" of the expected column
    # (the greedy column keeps them), and reported once for the judge.
    ood = frame[frame["task_type"].isin(DEFAULT_OOD_TASKS)]
    for c in result["coverage"]:
        lacking = int(ood.loc[ood["model_id"] == c["model"], "expected"].isna().sum())
        assert c["no_score"] == (lacking if c["judge"] == "J [expected]" else 0), c
        assert c["used"] == c["n_rows"] - c["no_score"]
    n_missing = int(frame["expected"].isna().sum())
    notes = [line for line in run.stderr.splitlines() if "no expected score" in line]
    assert notes == [f"warning: judge J: {n_missing} of {len(frame)} judgement(s) with a greedy score have no "
                     "expected score (no token probabilities for them); left out of the expected-score tables, "
                     "counted under 'no score'"]

    # One score alone: the expected column of `both`, under the judge's plain name.
    alone = pollux("meta-eval", str(tmp_path / "data"), "--scores", str(tmp_path / "scores.jsonl"), "--on", "id",
                   "--judge-name", "J", "--score", "expected", "--format", "json", "--bootstrap", "60", "--no-groups")
    assert alone.returncode == 0, alone.stderr
    single = {(r["metric"], r["model"]): r for r in json.loads(alone.stdout)["metrics"]}
    for r in result["metrics"]:
        if r["judge"] == "J [expected]":
            assert single[r["metric"], r["model"]] == {**r, "judge": "J"}


def test_both_in_the_model_card_comparison(tmp_path: Path) -> None:
    frame = dataset(tmp_path)
    frame[["id", "greedy", "expected"]].rename(columns={"greedy": "text_score", "expected": "expected_score"}).to_parquet(
        tmp_path / "scores.parquet")
    run = pollux("meta-eval", str(tmp_path / "data"), "--scores", str(tmp_path / "scores.parquet"), "--on", "id",
                 "--judge-name", "GPT-4o", "--score", "both", "--compare", "model-card", "--format", "csv",
                 "--bootstrap", "40")
    assert run.returncode == 0, run.stderr
    table = pd.read_csv(io.StringIO(run.stdout), keep_default_na=False)
    spearman = table[(table["metric"] == "spearman")]
    # Each card cell: the greedy row, then the expected row, side by side.
    assert spearman["score"].tolist() == ["auto", "expected"] * (len(MODELS) + 1)
    assert spearman["judge"].tolist() == ["GPT-4o [auto]", "GPT-4o [expected]"] * (len(MODELS) + 1)
    want = {"auto": by_hand(frame, "greedy"), "expected": by_hand(frame, "expected")}
    for r in spearman.itertuples(index=False):
        assert abs(float(r.ours) - want[r.score]["spearman"][r.model_id or "Avg."]) < 1e-9
    # The card's Avg. (0.674 for GPT-4o) beside both, and its per-LLM cells (issue 22: no n/a left).
    avg = spearman[spearman["model"] == "Avg."]
    assert avg["card"].astype(str).tolist() == ["0.674", "0.674"]
    per_llm = spearman[spearman["model"] != "Avg."]
    assert "" not in set(per_llm["card"].astype(str)) and set(per_llm["card_note"]) == {""}

    page = tmp_path / "card.html"
    html = pollux("meta-eval", str(tmp_path / "data"), "--scores", str(tmp_path / "scores.parquet"), "--on", "id",
                  "--judge-name", "GPT-4o", "--score", "both", "--compare", "model-card", "--format", "html",
                  "--out", str(page), "--bootstrap", "40")
    assert html.returncode == 0, html.stderr
    text = page.read_text(encoding="utf-8")
    for label in ("GPT-4o [auto]", "GPT-4o [expected]"):  # a bar chart per score and metric, labelled
        assert sum(f"{label} — {m} (" in text for m in ("spearman", "mae", "vc")) == 3
    assert "<td>n/a" not in text  # every card cell has the card's value (issue 22)


def test_expected_scores_through_the_run_store(tmp_path: Path, scoring_judge_path: Path) -> None:
    """`--judge … --db -o expected_score=true --score both`: the judge's verdicts (greedy and
    expected) go through the run store; the tables equal scipy on the stored numbers."""
    from pollux.fixtures import SCORING_RUBRICS

    rows = []
    experts = {"o1": (2.0, 0.0), "gpt-4o": (1.5, 0.0), "gigachat-max": (2.0, 1.0)}
    items = (("Сколько будет 2+2?", "4"), ("Назови столицу Франции.", "Берлин"))
    for m, scores in experts.items():
        for (instruction, answer), e in zip(items, scores, strict=True):
            rows.append({"instruction": instruction, "answer": answer, "reference_answer": "", "model_id": m,
                         "task_type": DEFAULT_OOD_TASKS[0], "criteria_name": "Правильность ответа",
                         "rubrics": SCORING_RUBRICS, "criteria_score": e,  # 1.5: the mean of two experts
                         "annotations": [{"comment": "", "score": s} for s in ((1, 2) if e == 1.5 else (e,))]})
    (tmp_path / "data").mkdir()
    pd.DataFrame(rows).to_parquet(tmp_path / "data" / "test-00000-of-00001.parquet")
    db = tmp_path / "runs.db"
    run = pollux("meta-eval", str(tmp_path / "data"), "--judge", str(scoring_judge_path), "--db", str(db),
                 "-o", "expected_score=true", "--dtype", "float32", "--max-new-tokens", "24", "--threads", "1",
                 "--judge-name", "J", "--score", "both", "--format", "json", "--bootstrap", "0", "--no-groups")
    assert run.returncode == 0, run.stderr
    with sqlite3.connect(db) as conn:
        stored = {k: (t, e) for k, t, e in conn.execute("SELECT item_key, text_score, expected_score FROM verdicts")}
    keys = [JudgeItem(instruction=i, answer=a, criteria_name="Правильность ответа", rubrics=SCORING_RUBRICS).key
            for i, a in items]
    assert set(stored) == set(keys)
    assert all(e is not None and 0 <= e <= 2 for _, e in stored.values())  # the judge gave expected scores
    metrics = {(r["judge"], r["metric"], r["model"]): r["value"] for r in json.loads(run.stdout)["metrics"]}
    for column, label in ((0, "J [auto]"), (1, "J [expected]")):
        x = np.array([stored[k][column] for k in keys])
        maes = []
        for m, y in experts.items():
            maes.append(float(np.mean(np.abs(x - np.array(y)))))
            assert abs(metrics[label, "mae", m] - maes[-1]) < 1e-9
            rho = stats.spearmanr(x, y).statistic
            assert metrics[label, "spearman", m] == pytest.approx(rho, abs=1e-9, nan_ok=True)
        assert abs(metrics[label, "mae", "Avg."] - np.mean(maes)) < 1e-9


def test_score_choices_are_checked_and_a_judge_without_expected_scores_is_named(tmp_path: Path) -> None:
    from pollux.metaeval import load_experts, meta_evaluate, scores_from_frame

    frame = dataset(tmp_path)
    experts = load_experts(tmp_path / "data")
    greedy_only = scores_from_frame(pd.DataFrame({"key": experts.frame["key"], "text_score": frame["greedy"]}),
                                    judge="G")
    with pytest.raises(ValueError, match="unknown score bogus"):
        meta_evaluate(experts, greedy_only, score="auto,bogus", n_bootstrap=0)
    with pytest.raises(ValueError, match="judge G: no expected_score in its scores"):
        meta_evaluate(experts, greedy_only, score="expected", n_bootstrap=0)
    # With both, a judge that has no expected score at all keeps its greedy column, with a note.
    result = meta_evaluate(experts, greedy_only, score="both", n_bootstrap=0, by_group=False)
    assert result.judges == ["G [auto]"]
    assert any("judge G: no expected_score in its scores" in w for w in result.warnings)
