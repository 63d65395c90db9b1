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
    result = run("--judge", str(tiny_judge_path), "--instruction", "Сколько будет 2+2?", "--answer", "4",
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
    result = run("-m", str(tiny_judge_path), "--input", str(f), "--max-new-tokens", "4", "--device", "cpu")
    assert result.exit_code == 1  # some lines could not be judged
    out = [json.loads(x) for x in result.stdout.splitlines()]
    assert [o.get("line") or o["meta"]["line"] for o in out] == [1, 2, 3, 5, 6]
    assert out[0]["criteria_name"] == "Грамотность" and out[3]["criteria_name"] == "Полезность"
    assert out[0]["head_score"] is not None and out[3]["head_score"] is not None
    assert out[1]["error"].startswith("items.jsonl:2: broken JSON: ")
    assert out[2]["error"] == "items.jsonl:3: missing field(s) answer, criteria_name, rubrics"
    assert out[4]["error"] == "items.jsonl:6: not valid UTF-8 (byte 0xff at column 1)"
    assert "items.jsonl:2: broken JSON" in result.stderr


def test_missing_options_are_a_usage_error(tiny_judge_path: Path):
    result = run("--model", str(tiny_judge_path), "--answer", "4")
    assert result.exit_code != 0
    assert "--instruction" in result.output and "--criterion" in result.output


def test_template_by_name_changes_the_prompt(tiny_judge_path: Path, tmp_path: Path):
    """`--template model-card` renders the card's prompt (other token ids than the default's, so
    another score from the same judge), exactly as a file holding the card's text does."""
    from transformers import AutoTokenizer

    from pollux.prompts import DEFAULT_TEMPLATE, MODEL_CARD_TEMPLATE, PromptTemplate, chat_text
    from pollux.records import JudgeItem

    item = JudgeItem(instruction="Сколько будет 2+2?", answer="4", criteria_name="Правильность ответа",
                     rubrics=RUBRIC)
    tok = AutoTokenizer.from_pretrained(tiny_judge_path)
    ids = {name: tok(chat_text(tok, PromptTemplate(text=text).render(item)))["input_ids"]
           for name, text in (("default", DEFAULT_TEMPLATE), ("model-card", MODEL_CARD_TEMPLATE))}
    assert ids["default"] != ids["model-card"]

    args = ["--instruction", item.instruction, "--answer", item.answer, "--criterion", item.criteria_name,
            "--rubrics", item.rubrics, "--max-new-tokens", "1", "--device", "cpu"]
    (tmp_path / "card.txt").write_text(MODEL_CARD_TEMPLATE, encoding="utf-8")
    scores = {}
    for template in ("default", "model-card", str(tmp_path / "card.txt")):
        result = run("--judge", str(tiny_judge_path), "--template", template, *args)
        assert result.exit_code == 0, result.output
        verdict = json.loads(result.stdout)
        assert verdict["prompt_tokens"] == len(ids["default"])  # "\n\n" and "\n" are one token each
        scores[template] = verdict["head_score"]
    assert scores["model-card"] != scores["default"]
    assert scores[str(tmp_path / "card.txt")] == scores["model-card"]
    result = run("--judge", str(tiny_judge_path), "--template", "no-such", *args)
    assert result.exit_code == 2 and "template 'no-such' is neither a template name" in result.stderr


def test_an_option_the_engine_does_not_take_is_a_usage_error():
    """Checked before anything loads or connects: exit 2 naming the option and the engine."""
    result = run("--judge", "openai:judge-model", "--base-url", "http://127.0.0.1:9/v1", "--dtype", "bfloat16",
                 "--instruction", "q", "--answer", "a", "--criterion", "c", "--rubrics", RUBRIC)
    assert result.exit_code == 2
    assert "option 'dtype' does not apply to openai: judges (it takes: base_url, " in result.stderr
    result = run("--judge", "openai:judge-model", "-o", "max_retries=many", "--instruction", "q", "--answer", "a",
                 "--criterion", "c", "--rubrics", RUBRIC)
    assert result.exit_code == 2 and "option 'max_retries' of openai: judges" in result.stderr


def test_a_literal_backslash_n_in_rubrics_is_read_as_a_line_break(tiny_judge_path: Path):
    """`--rubrics '0: …\\n\\n1: …'` typed in single quotes reaches pollux with a backslash and an n:
    read as line breaks (with a warning), so the item has its 0–2 scale."""
    typed = RUBRIC.replace("\n", "\\n")
    result = run("--judge", str(tiny_judge_path), "--instruction", "Сколько будет 2+2?", "--answer", "4",
                 "--criterion", "Правильность ответа", "--rubrics", typed, "--max-new-tokens", "2",
                 "--device", "cpu")
    assert result.exit_code == 0, result.output
    verdict = json.loads(result.stdout)
    assert (verdict["scale_min"], verdict["scale_max"]) == (0, 2)
    assert "warning: --rubrics" in result.stderr and "line break" in result.stderr


def test_an_item_whose_rubric_has_no_scale_says_so(tiny_judge_path: Path):
    result = run("--judge", str(tiny_judge_path), "--instruction", "Сколько будет 2+2?", "--answer", "4",
                 "--criterion", "Правильность ответа", "--rubrics", "Оцени, верен ли ответ.",
                 "--max-new-tokens", "2", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["scale_min"] is None
    assert "warning:" in result.stderr and "no scale" in result.stderr
