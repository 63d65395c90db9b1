"""`pollux answer` (issue 20 items 1-2) on real components: the fake OpenAI-compatible server in its
own process (it counts the requests it answered), a real SQLite store, `pollux answer` as a killed
subprocess, the tiny local checkpoint against transformers' own `generate`, and `pollux evaluate`
reading the answer file as it is."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
from typer.testing import CliRunner

from pollux.answer import split_reasoning
from pollux.cli import app
from synth_fakes import FakeServer

R2 = "0: плохо.\n\n1: средне.\n\n2: хорошо."


def pollux_cmd() -> list[str]:
    script = Path(sys.executable).parent / "pollux"
    return [str(script)] if script.exists() else [sys.executable, "-c", "from pollux.cli import main; main()"]


def write_instructions(path: Path, n: int) -> Path:
    """POLLUX-instructions-like rows: each lists its own criteria; every third names a task type only."""
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            row: dict = {"prompt_id": f"p{i}", "instruction": f"Объясни, что такое число {i}.", "reference_answer": "",
                         "difficulty": "easy", "domain": "math", "task_type": "Объяснить концепт"}
            if i % 3:
                row["criteria"] = [{"criteria_name": "Полезность", "rubrics": R2},
                                   {"criteria_name": "Грамотность", "rubrics": R2}]
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def served(server: FakeServer) -> int:
    return httpx.get(server.url.removesuffix("/v1") + "/health").json()["requests"]


def settle(server: FakeServer) -> None:
    """Wait until the server holds no request (after a kill: those already sent have been counted)."""
    time.sleep(0.3)
    while httpx.get(server.url.removesuffix("/v1") + "/health").json()["active"]:
        time.sleep(0.05)


def stored(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db) as conn:
            return conn.execute("SELECT count(*) FROM answers").fetchone()[0]
    except sqlite3.OperationalError:  # the table is not there yet
        return 0


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_reasoning_is_cut_from_the_answer() -> None:
    assert split_reasoning("<think>Посчитаю.\n2+2=4</think>\n\nОтвет: 4.") == ("Ответ: 4.", "Посчитаю.\n2+2=4", True)
    assert split_reasoning("Посчитаю.</think>Ответ: 4.") == ("Ответ: 4.", "Посчитаю.", True)  # template opened it
    assert split_reasoning("<think>Считаю и не успеваю") == ("", "Считаю и не успеваю", False)  # cut by max tokens
    assert split_reasoning("  Ответ без размышлений. ") == ("  Ответ без размышлений. ", None, True)


def test_think_is_stripped_and_stored_apart(tmp_path: Path) -> None:
    reply = "<think>Сначала вспомню столицы.</think>\nСтолица России — Москва."
    (tmp_path / "in.jsonl").write_text('{"instruction": "Назови столицу России."}\n', encoding="utf-8")
    with FakeServer("--reply", json.dumps(reply, ensure_ascii=False)) as server:
        result = CliRunner().invoke(app, ["answer", str(tmp_path / "in.jsonl"), "-m", "openai:thinker", "--base-url",
                                          server.url, "--out", str(tmp_path / "a.jsonl"), "--system", "Отвечай кратко."])
    assert result.exit_code == 0, result.output
    [row] = read_jsonl(tmp_path / "a.jsonl")
    assert (row["answer"], row["reasoning"], row["model_id"]) == ("Столица России — Москва.",
                                                                  "Сначала вспомню столицы.", "thinker")
    assert row["generation"] == {"model": "openai:thinker", "system_prompt": "Отвечай кратко.", "temperature": 0.0,
                                 "max_new_tokens": 1024, "seed": 0}
    assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0 and row["latency_s"] > 0
    with sqlite3.connect(tmp_path / "a.db") as conn:
        assert conn.execute("SELECT answer, reasoning FROM answers").fetchall() == [
            ("Столица России — Москва.", "Сначала вспомню столицы.")]


def test_kill_9_while_answering_then_rerun_asks_only_for_what_is_missing(tmp_path: Path) -> None:
    """SIGKILL mid-run; the rerun sends exactly the requests the store lacks (the server's count),
    and the answers equal an uninterrupted run's; a third run sends none."""
    n = 30
    ins = write_instructions(tmp_path / "instructions.jsonl", n)
    with FakeServer("--delay", "0.15") as server:
        def answer(out: str, **kw) -> subprocess.Popen:
            cmd = [*pollux_cmd(), "answer", str(ins), "-m", "openai:fake-llm", "--base-url", server.url,
                   "--out", str(tmp_path / out), "--concurrency", "2", "--max-new-tokens", "64"]
            return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)

        assert answer("reference.jsonl").wait(120) == 0
        reference = read_jsonl(tmp_path / "reference.jsonl")
        before = served(server)
        proc = answer("answers.jsonl")
        deadline = time.monotonic() + 120
        while stored(tmp_path / "answers.db") < 4 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        settle(server)  # a request already sent is counted before we read the count
        kept = stored(tmp_path / "answers.db")
        asked_first = served(server) - before
        assert 4 <= kept < n and not (tmp_path / "answers.jsonl").exists()
        rerun = answer("answers.jsonl")
        out, err = rerun.communicate(timeout=120)
        assert rerun.returncode == 0, err
        asked_again = served(server) - before - asked_first
        summary = json.loads(out)
        third = answer("answers.jsonl")
        assert third.wait(120) == 0 and served(server) - before - asked_first == asked_again
    assert asked_again == n - kept == summary["asked"] and summary["stored_before"] == kept
    answers = read_jsonl(tmp_path / "answers.jsonl")
    assert [(r["id"], r["answer"]) for r in answers] == [(r["id"], r["answer"]) for r in reference]
    assert len(answers) == n and stored(tmp_path / "answers.db") == n


def test_local_answers_equal_transformers_generate(tiny_generative_path: Path, tmp_path: Path) -> None:
    """Temperature 0: `pollux answer`'s answers (batched, left-padded) are what transformers'
    `generate` writes for the same chat messages, one prompt at a time."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    instructions = ["Привет!", "Сколько будет два плюс два? Ответь одним словом.", "Назови три цвета радуги."]
    system = "Ты — вежливый помощник."
    ins = tmp_path / "in.jsonl"
    ins.write_text("".join(json.dumps({"instruction": t}, ensure_ascii=False) + "\n" for t in instructions), "utf-8")
    result = CliRunner().invoke(app, ["answer", str(ins), "-m", str(tiny_generative_path), "--out",
                                      str(tmp_path / "a.jsonl"), "--system", system, "--temperature", "0",
                                      "--max-new-tokens", "12", "--device", "cpu", "--dtype", "float32",
                                      "--batch-size", "3"])
    assert result.exit_code == 0, result.output
    answers = [r["answer"] for r in read_jsonl(tmp_path / "a.jsonl")]

    tokenizer = AutoTokenizer.from_pretrained(tiny_generative_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_generative_path, dtype=torch.float32).eval()
    expected = []
    for text in instructions:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": text}]
        enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        expected.append(tokenizer.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    assert answers == [split_reasoning(e)[0] for e in expected]
    assert any(answers)  # the tiny model writes something


def test_the_answer_file_feeds_evaluate_unchanged(tiny_judge_path: Path, tmp_path: Path) -> None:
    """Each answer keeps its instruction's criteria (or its task type's, from the taxonomy); the
    model's name is the run's model."""
    ins = write_instructions(tmp_path / "instructions.jsonl", 3)
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"my-model": {"input": 1.0, "output": 4.0}}), encoding="utf-8")
    with FakeServer() as server:
        result = CliRunner().invoke(app, ["answer", str(ins), "-m", "openai:fake-llm", "--name", "my-model",
                                          "--base-url", server.url, "--out", str(tmp_path / "a.jsonl"),
                                          "--max-new-tokens", "32", "--prices", str(prices)])
    assert result.exit_code == 0, result.output
    rows = read_jsonl(tmp_path / "a.jsonl")
    assert all(r["cost"] == (r["prompt_tokens"] * 1.0 + r["completion_tokens"] * 4.0) / 1e6 for r in rows)
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "a.jsonl"), "--judge", str(tiny_judge_path),
                                      "--db", str(tmp_path / "run.db"), "--max-new-tokens", "4", "--device", "cpu",
                                      "--dtype", "float32", "--no-progress"])
    assert result.exit_code == 0, result.output
    with sqlite3.connect(tmp_path / "run.db") as conn:
        models = {m for (m,) in conn.execute("SELECT model_id FROM records")}
        per_record = dict(conn.execute("SELECT r.record_id, count(*) FROM jobs j JOIN records r USING (record_pk) "
                                       "GROUP BY r.record_id"))
        verdicts = conn.execute("SELECT count(*) FROM verdicts").fetchone()[0]
    assert models == {"my-model"}
    assert per_record["p1"] == per_record["p2"] == 2 and per_record["p0"] > 2  # own criteria; the task type's set
    assert verdicts == sum(per_record.values())


def test_an_option_a_chat_model_does_not_use_is_refused(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text('{"instruction": "Привет"}\n', encoding="utf-8")
    result = CliRunner().invoke(app, ["answer", str(tmp_path / "in.jsonl"), "-m", "openai:x", "--base-url",
                                      "http://127.0.0.1:9/v1", "--out", str(tmp_path / "a.jsonl"), "-o", "top_p=0.5"])
    assert result.exit_code == 2 and "top_p do not apply to answer generation" in result.output
    assert not (tmp_path / "a.db").exists()


def test_bench_chains_answer_evaluate_report_beside_other_models_and_resumes(tiny_judge_path: Path,
                                                                              tmp_path: Path) -> None:
    """`pollux bench`: the new model's answers judged and reported beside two other models' answers;
    run again, it asks the model nothing and judges nothing."""
    ins = write_instructions(tmp_path / "instructions.jsonl", 2)
    others = tmp_path / "others.jsonl"
    others.write_text("".join(json.dumps({"id": f"o{i}", "model_id": m, "instruction": f"Вопрос {i}?", "answer": "Ответ.",
                                          "criteria": [{"criteria_name": "Полезность", "rubrics": R2}]},
                                         ensure_ascii=False) + "\n" for i in range(2) for m in ("alpha", "beta")),
                      encoding="utf-8")
    args = ["bench", str(ins), "-m", "openai:fake-llm", "-j", str(tiny_judge_path), "--dir", str(tmp_path / "b"),
            "--beside", str(others), "-J", "device=cpu", "-J", "dtype=float32", "-J", "max_new_tokens=4",
            "--beside-experts", str(Path(__file__).resolve().parents[1] / "examples" / "expert_annotations.jsonl")]
    with FakeServer() as server:
        first = CliRunner().invoke(app, [*args, "-M", f"base_url={server.url}", "-M", "max_new_tokens=32"])
        asked = served(server)
        second = CliRunner().invoke(app, [*args, "-M", f"base_url={server.url}", "-M", "max_new_tokens=32"])
        assert served(server) == asked == 2
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    one, two = json.loads(first.stdout), json.loads(second.stdout)
    assert {r["model_id"] for r in one["report"]["leaderboard"]} == {"fake-llm", "alpha", "beta"}
    assert one["evaluate"]["judged"] == one["evaluate"]["items"] > 0
    assert (two["answer"]["asked"], two["answer"]["stored_before"], two["evaluate"]["judged"]) == (0, 2, 0)
    board = pd.read_csv(tmp_path / "b" / "report" / "beside_leaderboard.csv")  # --beside-experts reached report
    assert {"judged", "experts"} == set(board["kind"]) and "fake-llm" in set(board["model_id"])
