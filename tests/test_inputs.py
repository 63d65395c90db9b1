"""Input readers: JSONL / CSV / Parquet rows with their line numbers, and clear per-line problems."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pollux.inputs import InputError, check_row, model_id, read_rows, record_id

CORPUS = Path(__file__).parent / "data" / "bad_inputs"


def problems_by_line(result) -> dict[int, str]:
    return {p.line: p.message for p in result.problems}


def test_jsonl_reader_reports_unreadable_lines_and_keeps_the_rest():
    result = read_rows(CORPUS / "answers.jsonl")
    problems = problems_by_line(result)
    assert set(problems) == {2, 8, 9}
    assert problems[2] == "broken JSON: Expecting ',' delimiter at column 56"
    assert "UTF-8" in problems[8] and "0xff" in problems[8]
    assert "JSON object" in problems[9]
    lines = [r.line for r in result.rows]
    assert lines == [1, 3, 4, 5, 6, 7, 10, 11, 12, 13, 15]  # the blank line 14 is skipped silently
    assert str(result.problems[0]).startswith("answers.jsonl:2: ")


def test_check_row_names_the_field():
    result = read_rows(CORPUS / "answers.jsonl")
    checked = {r.line: check_row(r) for r in result.rows}
    assert checked[1] is None and checked[4] is None and checked[10] is None and checked[15] is None
    assert checked[3] == "missing field 'answer'"
    assert checked[5] == "field 'answer' is empty"
    assert checked[7] == "field 'answer' must be a string, got a number"
    assert checked[11] == "field 'instruction' must be a string, got a list"
    assert checked[12] == "field 'reference_answer' must be a string, got a number"
    # lines 6 (unknown criterion) and 13 (unknown task) are the taxonomy's to reject
    assert checked[6] is None and checked[13] is None


def test_huge_field_is_rejected(tmp_path: Path):
    path = tmp_path / "huge.jsonl"
    path.write_text('{"instruction": "a", "answer": "' + "x" * 250_000 + '"}\n', encoding="utf-8")
    (row,) = read_rows(path).rows
    message = check_row(row)
    assert message is not None and "'answer'" in message and "250,000" in message
    assert check_row(row, max_field_chars=300_000) is None


def test_csv_reader_counts_physical_lines():
    result = read_rows(CORPUS / "answers.csv")
    problems = problems_by_line(result)
    assert set(problems) == {7, 18}
    assert "expected 6 columns, got 3" in problems[7]
    assert "UTF-8" in problems[18] and "answer" in problems[18]
    rows = {r.line: r for r in result.rows}
    assert sorted(rows) == [2, 8, 13, 21]
    assert check_row(rows[8]) == "field 'answer' is empty"
    assert rows[13].data["answer"] == "Мадрид."
    assert record_id(rows[13]) == "ok-2" and model_id(rows[13]) == "beta"
    assert rows[2].data["rubrics"].startswith("0: ")


def test_csv_criteria_column_is_json(tmp_path: Path):
    path = tmp_path / "a.csv"
    pd.DataFrame([{"instruction": "и", "answer": "о", "criteria": '[{"criteria_name": "К", "rubrics": "0: а\\n\\n1: б"}]'},
                  {"instruction": "и", "answer": "о", "criteria": "[broken"}]).to_csv(path, index=False)
    result = read_rows(path)
    assert result.rows[0].data["criteria"][0]["criteria_name"] == "К"
    assert [p.line for p in result.problems] == [3]
    assert "criteria" in result.problems[0].message


def test_parquet_rows_numbered_from_one(tmp_path: Path):
    path = tmp_path / "pollux.parquet"
    frame = pd.DataFrame({
        "instruction": ["Вопрос 1", "Вопрос 2"],
        "answer": ["Ответ 1", None],
        "model_id": ["m1", "m2"],
        "criteria_name": ["Полезность", "Полезность"],
        "rubrics": ["0: нет\n\n1: да", "0: нет\n\n1: да"],
        "annotations": [[{"comment": "ок", "score": 1}], [{"comment": "нет", "score": 0}]],
    })
    frame.to_parquet(path)
    result = read_rows(path)
    assert [r.line for r in result.rows] == [1, 2]
    assert result.rows[0].data["annotations"][0]["score"] == 1
    assert record_id(result.rows[1]) == "2" and model_id(result.rows[0]) == "m1"
    assert check_row(result.rows[1]) == "missing field 'answer'"


def test_ids_and_models_default():
    from pollux.inputs import InputRow

    row = InputRow("f.jsonl", 7, {"prompt_id": 12, "model": "gpt"})
    assert record_id(row) == "12" and model_id(row) == "gpt"
    assert record_id(InputRow("f.jsonl", 7, {})) == "7"
    assert model_id(InputRow("f.jsonl", 7, {})) == "unknown"


def test_unreadable_files_raise(tmp_path: Path):
    with pytest.raises(InputError, match="no such file"):
        read_rows(tmp_path / "missing.jsonl")
    other = tmp_path / "a.txt"
    other.write_text("x")
    with pytest.raises(InputError, match="unknown input format"):
        read_rows(other)


def test_one_policy_bom_crlf_bad_bytes_surrogates_nul(tmp_path: Path):
    """Every reader of pollux goes through read_rows: a BOM and CRLF are read away, bad bytes and
    unusable text (a lone surrogate or a NUL anywhere in the row: keys and nested values too) fail
    their own line, named `file:line: field …`."""
    lines = [
        '{"instruction": "и", "answer": "о"}',
        '{"instruction": "и", "answer": "\\ud800"}',
        '{"instruction": "и", "answer": "о", "meta": {"note": ["ok", "a\\u0000b"]}}',
        '{"instruction": "и", "answer": "о", "k\\udfff": 1}',
        '{"instruction": "и", "answer": "о", "extra": "\\\\u0000 is only text here"}',
    ]
    path = tmp_path / "a.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n\xff\xfe\r\n")
    result = read_rows(path)
    assert [r.line for r in result.rows] == [1, 5]
    assert result.rows[0].data == {"instruction": "и", "answer": "о"}
    assert [str(p) for p in result.problems] == [
        "a.jsonl:2: field 'answer': invalid text: a lone surrogate U+D800 at character 1 (not valid Unicode)",
        "a.jsonl:3: field 'meta.note[1]': invalid text: a NUL character at character 2",
        "a.jsonl:4: a key: invalid text: a lone surrogate U+DFFF at character 2 (not valid Unicode)",
        "a.jsonl:6: not valid UTF-8 (byte 0xff at column 1)",
    ]
    csv_path = tmp_path / "a.csv"
    csv_path.write_bytes(b"\xef\xbb\xbfinstruction,answer\r\n\xd0\xb8,\xd0\xbe\r\n")
    (row,) = read_rows(csv_path).rows
    assert row.data == {"instruction": "и", "answer": "о"} and row.line == 2


def test_a_json_array_file_is_numbered_by_element(tmp_path: Path):
    path = tmp_path / "a.json"
    path.write_text('\ufeff[{"instruction": "и", "answer": "о"}, 3, {"instruction": "\\ud800"}]', encoding="utf-8")
    result = read_rows(path)
    assert [r.line for r in result.rows] == [1]
    assert [str(p) for p in result.problems] == [
        "a.json:2: expected a JSON object, got int",
        "a.json:3: field 'instruction': invalid text: a lone surrogate U+D800 at character 1 (not valid Unicode)",
    ]
    path.write_text('[{"instruction": "и"', encoding="utf-8")
    with pytest.raises(InputError, match=r"a\.json: broken JSON"):
        read_rows(path)
