"""The column-wise readers of meta-eval (issue 22 item 7) follow the row-by-row rules: a score file
read by pyarrow gives the frame `read_rows` gives, files pyarrow would read differently fall back,
and expert rows from Parquet are skipped / excluded with the messages the JSONL reader gives."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pandas as pd
import pytest

from pollux.metaeval import MetaEvalWarning, load_experts, read_score_jsonl

RUBRIC = "0: нет\n\n1: частично\n\n2: да"


def expert_rows(n: int = 6) -> list[dict]:
    return [{"id": i, "instruction": f"Задание {i}", "reference_answer": "", "answer": f"Ответ {i}", "model_id": "a",
             "task_type": "Стайл-трансфер", "criteria_name": "Грамотность", "rubrics": RUBRIC,
             "annotations": [{"comment": "", "score": float(i % 3)}, {"comment": "", "score": float(i % 3)}],
             "criteria_score": float(i % 3)} for i in range(n)]


def quietly(read, *args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MetaEvalWarning)
        out = read(*args, **kwargs)
    return out, [str(w.message) for w in caught]


SCORE_LINES = [
    {"id": 0, "score": 1, "judge": "a"},
    {"id": 1, "head_score": 0.5, "judge": "b", "error": ""},
    {"id": 2, "text_score": 2},
    {"id": 3, "score": None, "head_score": None, "text_score": None, "error": "timeout"},
    {"id": 4, "score": 1.5, "expected_score": 1.25},
    {"id": 5, "score": 2},
]


def write(path: Path, lines: list[dict], prefix: bytes = b"") -> Path:
    path.write_bytes(prefix + "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines).encode())
    return path


@pytest.mark.parametrize("on", [("id",), ()])
def test_a_score_file_read_column_wise_equals_the_row_by_row_read(tmp_path: Path, on: tuple[str, ...]) -> None:
    experts = load_experts(pd.DataFrame(expert_rows()), keep=("id",))
    lines = [dict(x) for x in SCORE_LINES]
    if not on:  # joined by content: each line carries its key
        for x, key in zip(lines, experts.frame["key"], strict=True):
            x["key"] = key
    plain = write(tmp_path / "plain.jsonl", lines)  # read by pyarrow
    bom = write(tmp_path / "bom.jsonl", lines, prefix=b"\xef\xbb\xbf")  # a byte order mark: read_rows
    fast = read_score_jsonl(plain, on=on, experts=experts)
    slow = read_score_jsonl(bom, on=on, experts=experts)
    pd.testing.assert_frame_equal(fast.assign(judge=fast["judge"].replace("plain", "bom")), slow)
    assert fast["judge"].tolist() == ["a", "b", "plain", "plain", "plain", "plain"]
    assert fast["score"].tolist()[:3] == [1.0, 0.5, 2.0] and math.isnan(fast["score"][3])
    assert fast["error"].tolist() == [None, None, None, "timeout", None, None]


def test_what_pyarrow_would_read_differently_is_read_as_read_rows_reads_it(tmp_path: Path) -> None:
    experts = load_experts(pd.DataFrame(expert_rows()), keep=("id",))
    lines = [{"id": str(i), "score": s, "judge": "2024-10-23"} for i, s in enumerate([0, "1,5", 2, 1, 0, 2])]
    lines[4]["score"] = "n/a"  # not a number: that line alone is skipped, named
    scores, messages = quietly(read_score_jsonl, write(tmp_path / "s.jsonl", lines), on=("id",), experts=experts)
    assert scores["judge"].unique().tolist() == ["2024-10-23"]  # a date-like name stays text
    assert scores["score"].tolist() == [0.0, 1.5, 2.0, 1.0, 2.0]  # "7" meets 7; a decimal comma is read
    assert messages == ["skipped s.jsonl:5: could not convert string to float: 'n/a'"]
    with pytest.raises(ValueError, match=r"1 of 6 line\(s\) cannot be joined .*1 match no expert row \(first: "
                                         r"s.jsonl:3\)"):
        lines[2]["id"] = 99
        read_score_jsonl(write(tmp_path / "s.jsonl", lines), on=("id",), experts=experts)


def test_bad_expert_rows_from_parquet_are_named_as_from_jsonl(tmp_path: Path) -> None:
    rows = expert_rows(8)
    rows[1]["answer"] = "Ответ\x00с NUL"  # unusable text: skipped
    rows[2]["criteria_score"] = math.inf  # not finite: excluded
    rows[3]["annotations"][0]["score"] = 7.0  # off the scale: excluded
    rows[5] = dict(rows[4])  # an exact duplicate: excluded, the first kept
    rows[6]["criteria_name"] = " "  # no criterion: skipped
    rows[7]["criteria_score"] = -1.0  # not applicable: kept, flagged
    jsonl = tmp_path / "e.jsonl"
    jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    parquet = tmp_path / "e.parquet"
    pd.DataFrame(rows).to_parquet(parquet)
    from_jsonl, said_jsonl = quietly(load_experts, jsonl)
    from_parquet, said_parquet = quietly(load_experts, parquet)
    assert [m.replace("e.jsonl", "FILE") for m in said_jsonl] == [m.replace("e.parquet", "FILE") for m in said_parquet]
    assert len(said_parquet) >= 5 and any("FILE:2" in m.replace("e.parquet", "FILE") for m in said_parquet)
    assert from_parquet.frame["answer"].tolist() == ["Ответ 0", "Ответ 4", "Ответ 7"]
    assert from_parquet.frame["key"].tolist() == from_jsonl.frame["key"].tolist()
    assert math.isnan(from_parquet.frame["expert"].iloc[2])
