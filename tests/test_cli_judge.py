"""`pollux judge`: one JSON verdict for one item, JSON lines in input order for a file."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from pollux.cli import app

RUBRIC = "0: неверно.\n\n1: частично.\n\n2: верно."


def run(*args: str):
    return CliRunner().invoke(app, ["judge", *args])


def test_single_item(tiny_judge_path: Path):
    result = run("--model", str(tiny_judge_path), "--instruction", "Сколько будет 2+2?", "--answer", "4",
                 "--criterion", "Правильность ответа", "--rubrics", RUBRIC, "--max-new-tokens", "6",
                 "--device", "cpu")
    assert result.exit_code == 0, result.output
    verdict = json.loads(result.stdout)
    assert verdict["criteria_name"] == "Правильность ответа"
    assert isinstance(verdict["head_score"], float) and verdict["score"] == verdict["head_score"]
    assert verdict["completion_tokens"] == 6 and (verdict["scale_min"], verdict["scale_max"]) == (0, 2)


def test_input_file_keeps_order_and_reports_bad_lines(tiny_judge_path: Path, tmp_path: Path):
    rows = [
        {"instruction": "Вопрос один", "answer": "Ответ", "criteria_name": "Грамотность", "rubrics": RUBRIC},
        {"instruction": "Вопрос два", "answer": "Другой ответ", "criteria_name": "Полезность", "rubrics": RUBRIC,
         "reference_answer": "Эталон"},
    ]
    lines = [json.dumps(rows[0], ensure_ascii=False), "{broken json", json.dumps({"instruction": "x"}),
             "", json.dumps(rows[1], ensure_ascii=False)]
    f = tmp_path / "items.jsonl"
    f.write_bytes(("\n".join(lines) + "\n").encode() + b"\xff\xfe oops\n")
    result = run("--model", str(tiny_judge_path), "--input", str(f), "--max-new-tokens", "4", "--device", "cpu")
    assert result.exit_code == 1  # some lines could not be judged
    out = [json.loads(x) for x in result.stdout.splitlines()]
    assert [o.get("line") or o["meta"]["line"] for o in out] == [1, 2, 3, 5, 6]
    assert out[0]["criteria_name"] == "Грамотность" and out[3]["criteria_name"] == "Полезность"
    assert out[0]["head_score"] is not None and out[3]["head_score"] is not None
    assert "line 2: invalid JSON" in out[1]["error"]
    assert "line 3: missing field(s) answer, criteria_name, rubrics" in out[2]["error"]
    assert "line 6: not valid UTF-8" in out[4]["error"]
    assert "line 2: invalid JSON" in result.stderr


def test_missing_options_are_a_usage_error(tiny_judge_path: Path):
    result = run("--model", str(tiny_judge_path), "--answer", "4")
    assert result.exit_code != 0
    assert "--instruction" in result.output and "--criterion" in result.output
