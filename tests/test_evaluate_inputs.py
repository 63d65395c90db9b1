"""The bad-input corpus through a real evaluate run: each bad row named by its line, all valid rows judged."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pollux.evaluate import EvaluateError, evaluate
from pollux.store import read_verdicts

CORPUS = Path(__file__).parent / "data" / "bad_inputs"


@pytest.fixture(scope="module")
def judge(tiny_judge_path: Path):
    from pollux.engine import SamplingParams
    from pollux.judge import Judge

    return Judge.from_pretrained(str(tiny_judge_path), dtype="float32", device="cpu",
                                 sampling=SamplingParams(max_new_tokens=4))


def corpus_with_huge_field(tmp_path: Path) -> Path:
    path = tmp_path / "answers.jsonl"
    shutil.copy(CORPUS / "answers.jsonl", path)
    with path.open("a", encoding="utf-8") as f:  # line 16
        f.write('{"id": "huge", "instruction": "Сократи.", "answer": "' + "слово " * 40_000 + '", '
                '"criteria_name": "Полезность", "rubrics": "0: нет\\n\\n1: да"}\n')
    return path


def test_bad_jsonl_rows_are_named_and_valid_rows_judged(tmp_path: Path, judge):
    src = corpus_with_huge_field(tmp_path)
    logged: list[str] = []
    summary = evaluate(src, tmp_path / "run.db", judge, log=logged.append)
    by_line = {int(p.split(":")[1]): p for p in summary.problems}
    expected = {
        2: "broken JSON",
        3: "missing field 'answer'",
        5: "field 'answer' is empty",
        6: "unknown criterion 'no_such_criterion'",
        7: "field 'answer' must be a string, got a number",
        8: "not valid UTF-8",
        9: "expected a JSON object",
        11: "field 'instruction' must be a string, got a list",
        12: "field 'reference_answer' must be a string, got a number",
        13: "unknown task type 'Несуществующая задача'",
        16: "field 'answer' is 240,000 characters long",
    }
    assert set(by_line) == set(expected)
    for line, text in expected.items():
        assert by_line[line].startswith(f"answers.jsonl:{line}: "), by_line[line]
        assert text in by_line[line], by_line[line]
    assert any(m.startswith("skipped answers.jsonl:2: broken JSON") for m in logged)
    assert summary.rows_skipped == 11 and summary.judged == 4 and summary.remaining == 0
    df = read_verdicts(tmp_path / "run.db")
    assert sorted(df["record_id"]) == ["ok-1", "ok-2", "ok-3", "ok-4"]
    assert sorted(df["line"]) == [1, 4, 10, 15]


def test_bad_csv_rows_are_named_by_physical_line(tmp_path: Path, judge):
    summary = evaluate(CORPUS / "answers.csv", tmp_path / "run.db", judge)
    lines = sorted(int(p.split(":")[1]) for p in summary.problems)
    assert lines == [7, 8, 18]
    assert summary.judged == 3
    assert sorted(read_verdicts(tmp_path / "run.db")["record_id"]) == ["ok-1", "ok-2", "ok-3"]


def test_strict_fails_fast_before_loading_the_judge(tmp_path: Path):
    loads: list[int] = []

    def factory():
        loads.append(1)
        raise AssertionError("the judge must not be loaded")

    with pytest.raises(EvaluateError, match=r"answers.jsonl:2: broken JSON.*--strict"):
        evaluate(CORPUS / "answers.jsonl", tmp_path / "run.db", factory, strict=True)
    assert loads == []
    assert not (tmp_path / "run.db").exists()


def test_cli_reports_lines_and_exits_zero(tmp_path: Path, tiny_judge_path: Path):
    import json

    from typer.testing import CliRunner

    from pollux.cli import app

    db = tmp_path / "run.db"
    result = CliRunner().invoke(app, ["evaluate", str(CORPUS / "answers.jsonl"), "--judge", str(tiny_judge_path),
                                      "--db", str(db), "--dtype", "float32", "--device", "cpu",
                                      "--max-new-tokens", "4", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "skipped answers.jsonl:7: field 'answer' must be a string" in result.stderr
    summary = json.loads(result.stdout)
    assert summary["judged"] == 4 and summary["rows_skipped"] == 10
    strict = CliRunner().invoke(app, ["evaluate", str(CORPUS / "answers.jsonl"), "--judge", str(tiny_judge_path),
                                      "--db", str(db), "--strict"])
    assert strict.exit_code == 2
    assert "answers.jsonl:2: broken JSON" in strict.stderr


def test_cli_unloadable_judge_is_a_clear_error(tmp_path: Path):
    from typer.testing import CliRunner

    from pollux.cli import app

    db = tmp_path / "run.db"
    result = CliRunner().invoke(app, ["evaluate", str(CORPUS / "answers.jsonl"), "--judge", str(tmp_path / "nope"),
                                      "--db", str(db), "--no-progress"])
    assert result.exit_code == 2
    assert "not a local checkpoint folder" in result.stderr
    assert not db.exists()  # nothing is created before the judge is loaded


SURROGATE_LINES = {  # line: the field named in its problem
    2: "'id'", 3: "'rubrics'", 4: "'criteria_name'", 5: "'source_note'", 6: "'criteria[0].rubrics'",
    7: "'meta.note[1]'", 8: "a key", 9: "'answer'", 10: "'model_id'",
}


def test_lone_surrogates_and_nul_anywhere_in_a_row_skip_only_that_row(tmp_path: Path, judge):
    """Defect 2 of issue 11: a lone surrogate in `id`, `rubrics`, `criteria_name`, an extra column,
    a nested value or a key used to end the run (SQLite / the tokenizer refused it) with no line named."""
    summary = evaluate(CORPUS / "surrogates.jsonl", tmp_path / "run.db", judge)
    by_line = {int(p.split(":")[1]): p for p in summary.problems}
    assert set(by_line) == set(SURROGATE_LINES)
    for line, field_name in SURROGATE_LINES.items():
        assert by_line[line].startswith(f"surrogates.jsonl:{line}: "), by_line[line]
        assert field_name in by_line[line], by_line[line]
        assert ("lone surrogate" in by_line[line]) or ("NUL" in by_line[line]), by_line[line]
    assert summary.judged == 2 and summary.remaining == 0
    assert sorted(read_verdicts(tmp_path / "run.db")["record_id"]) == ["good-1", "good-2"]


def test_cli_skips_rows_with_lone_surrogates_and_exits_zero(tmp_path: Path, tiny_judge_path: Path):
    import json

    from typer.testing import CliRunner

    from pollux.cli import app

    result = CliRunner().invoke(app, ["evaluate", str(CORPUS / "surrogates.jsonl"), "--judge", str(tiny_judge_path),
                                      "--db", str(tmp_path / "run.db"), "--dtype", "float32", "--device", "cpu",
                                      "--max-new-tokens", "8", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "skipped surrogates.jsonl:2: field 'id': invalid text: a lone surrogate U+D800" in result.stderr
    summary = json.loads(result.stdout)
    assert summary["judged"] == 2 and summary["rows_skipped"] == len(SURROGATE_LINES)
