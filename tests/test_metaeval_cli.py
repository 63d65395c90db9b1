"""`pollux meta-eval` on the shipped example: same numbers as the Python API, every format,
clear failures."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pollux.cli import app
from pollux.metaeval import MetaEvalWarning, load_experts, meta_evaluate, read_score_jsonl

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EXPERTS = EXAMPLES / "expert_annotations.jsonl"
REGRESSION = EXAMPLES / "expert_annotations.judge-regression.jsonl"
GENERATIVE = EXAMPLES / "expert_annotations.judge-generative.jsonl"

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, ["meta-eval", *args], catch_exceptions=False)


def test_example_file_shape():
    rows = [json.loads(line) for line in EXPERTS.read_text(encoding="utf-8").splitlines()]
    assert len(rows) >= 200
    assert len({r["model_id"] for r in rows}) >= 3
    experts = load_experts(EXPERTS)
    assert experts.frame["ood"].any() and (~experts.frame["ood"]).any()
    assert (experts.frame["expert"].isna()).any()  # some rows are "not applicable"
    assert any(a["score"] == -1 for r in rows for a in r["annotations"])


def test_json_output_matches_the_python_api():
    res = invoke(str(EXPERTS), "--scores", str(REGRESSION), "--scores", str(GENERATIVE),
                 "--judge-name", "R", "--judge-name", "G", "--format", "json", "--bootstrap", "200", "--seed", "3")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["judges"] == ["R", "G"] and data["settings"]["split"] == "ood"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetaEvalWarning)
        api = meta_evaluate(load_experts(EXPERTS), [read_score_jsonl(REGRESSION, "R"),
                                                     read_score_jsonl(GENERATIVE, "G")],
                            n_bootstrap=200, seed=3)
    cli = {(m["judge"], m["group"], m["model"], m["metric"]): m for m in data["metrics"]}
    for r in api.metrics.itertuples():
        got = cli[(r.judge, r.group, r.model, r.metric)]
        for field in ("value", "ci_low", "ci_high"):
            want = getattr(r, field)
            assert (got[field] is None) if want != want else got[field] == pytest.approx(want)
    assert "warning:" in res.stderr  # missing / out-of-scale scores are reported


@pytest.mark.parametrize("fmt,marker", [("markdown", "| **Avg.** |"), ("csv", "table,metric,row"),
                                        ("html", "<!doctype html>"), ("table", "Coverage")])
def test_formats_and_out_file(tmp_path: Path, fmt: str, marker: str):
    out = tmp_path / f"table.{fmt}"
    res = invoke(str(EXPERTS), "--scores", str(REGRESSION), "--format", fmt, "--bootstrap", "50",
                 "--split", "all", "--score", "head-rounded", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert marker in out.read_text(encoding="utf-8")
    assert res.stdout == ""


def test_failures_are_clear():
    res = invoke(str(EXPERTS))
    assert res.exit_code == 2 and "at least one judge" in res.stderr
    res = invoke(str(EXPERTS), "--scores", str(REGRESSION), "--judge-name", "a", "--judge-name", "b")
    assert res.exit_code == 2 and "2 --judge-name for 1" in res.stderr
    res = invoke(str(EXPERTS), "--scores", str(GENERATIVE), "--score", "head")
    assert res.exit_code == 2 and "no head_score" in res.stderr
    res = invoke(str(EXPERTS), "--scores", "nope.jsonl")
    assert res.exit_code == 2 and "no such file" in res.stderr
    res = invoke("missing.parquet", "--scores", str(REGRESSION))
    assert res.exit_code == 2 and "missing.parquet" in res.stderr


def test_judge_options_are_checked_against_each_judge_before_anything_runs(tmp_path: Path):
    out = tmp_path / "scores.jsonl"
    res = invoke(str(EXPERTS), "--model", "openai:judge-model", "--base-url", "http://127.0.0.1:9/v1",
                 "--dtype", "bfloat16", "--save-scores", str(out))
    assert res.exit_code == 2
    assert "option 'dtype' does not apply to openai: judges (it takes: base_url, " in res.stderr
    assert not out.exists()
    res = invoke(str(EXPERTS), "--judge", "openai:judge-model", "-o", "max_retries")
    assert res.exit_code == 2 and "-o 'max_retries': expected KEY=VALUE" in res.stderr
