"""`pollux compare` (issue 19 item 4): both orders judged, flip rate, win / tie / loss with bootstrap
intervals, per criterion and task; resumable after kill -9; regression judges refused.

The judges are real components: an OpenAI-compatible judge server on loopback (a thread of this
process, so the test can count the requests it answered) behind the `openai:` engine, a tiny Qwen3
judge in-process (slow), a tiny `-r` checkpoint; the run store is a real SQLite file."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pollux.cli import app
from pollux.fixtures import COMPARE_CRITERION, COMPARE_RECORDS
from pollux.pairwise import Outcome, summarise

RUBRICS = "0: ответ неверный.\n\n1: ответ верный."
CORRECT = {"4", "Париж", "Семь", "Двенадцать", "Шесть"}
_ANSWERS = re.compile(r"### Ответ 1 для оценки:\n(.*?)\n\n### Ответ 2 для оценки:\n(.*?)\n\n### Шкала", re.DOTALL)


class JudgeServer:
    """A side-by-side judge on 127.0.0.1: `fair` prefers the correct answer (with a misleading
    number in its reasoning); otherwise it answers "1" (answer 2 better) whatever it reads."""

    def __init__(self, *, fair: bool, delay: float = 0.0, reasoning: str | None = None):
        self.fair, self.delay, self.requests, self.active = fair, delay, 0, 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                with outer.lock:
                    outer.active += 1
                try:
                    self.answer()
                finally:
                    with outer.lock:
                        outer.active -= 1

            def answer(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests += 1  # counted when received: a killed client's last request too
                time.sleep(outer.delay)
                message = {"role": "assistant", "content": outer.reply(body["messages"][-1]["content"])}
                if reasoning is not None:  # vLLM's reasoning parser: the thinking beside the content
                    message["reasoning_content"] = reasoning
                data = json.dumps({"choices": [{"index": 0, "finish_reason": "stop", "message": message}],
                                   "usage": {"prompt_tokens": 10, "completion_tokens": 3}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def reply(self, prompt: str) -> str:
        if not self.fair:
            return "1"
        match = _ANSWERS.search(prompt)
        assert match, prompt
        first_correct = match.group(1).strip() in CORRECT
        return f"<think>Может быть, 0? Нет.</think>\n\n{-1 if first_correct else 1}"

    def settle(self) -> None:
        """Wait until no request is being answered (a killed client's last one finishes first)."""
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 0.5:
            time.sleep(0.05)
            if self.active:
                quiet_since = time.monotonic()

    def __enter__(self) -> JudgeServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


RECORDS = [*COMPARE_RECORDS, ("q4", "Сколько месяцев в году?", "Двенадцать", "Десять"),
           ("q5", "Сколько будет 3+3?", "6", "Шесть")]  # q5: B is right (for the fair judge)


def write_files(folder: Path, records: list[tuple[str, str, str, str]] = RECORDS) -> tuple[Path, Path]:
    a, b = folder / "a.jsonl", folder / "b.jsonl"
    with a.open("w", encoding="utf-8") as fa, b.open("w", encoding="utf-8") as fb:
        for rid, question, answer_a, answer_b in records:
            common = {"id": rid, "instruction": question, "criteria_name": COMPARE_CRITERION, "rubrics": RUBRICS,
                      "task_type": "Арифметика" if "+" in question else "Факты"}
            fa.write(json.dumps({**common, "answer": answer_a}, ensure_ascii=False) + "\n")
            fb.write(json.dumps({**common, "answer": answer_b}, ensure_ascii=False) + "\n")
    return a, b


def compare(*args: str) -> tuple[int, dict]:
    result = CliRunner().invoke(app, ["compare", *args])
    payload = json.loads(result.stdout) if result.exit_code in (0, 1) else {}
    return result.exit_code, payload if payload else {"stderr": result.stderr}


@pytest.fixture
def files(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    a, b = write_files(tmp_path)
    yield a, b, tmp_path / "cmp.db"


def test_a_fair_judge_both_orders_no_flips_and_wins_with_intervals(files: tuple[Path, Path, Path]):
    a, b, db = files
    with JudgeServer(fair=True) as server:
        code, out = compare(str(a), str(b), "--judge", "openai:sbs", "--base-url", server.url, "--db", str(db))
    assert code == 0, out
    assert server.requests == 10 and out["judged"] == 10 == out["judgements"]  # 5 pairs × both orders
    overall = out["overall"]
    assert overall["pairs"] == 5 and overall["flip"]["rate"] == 0.0
    assert overall["win"]["count"] == 4 and overall["loss"]["count"] == 1  # A is right on q1-q4, B on q5
    lo, hi = overall["win"]["ci"]
    assert lo <= overall["win"]["rate"] <= hi and lo > 0 and hi == 1.0
    assert set(out["per_criterion"]) == {COMPARE_CRITERION}
    assert set(out["per_task"]) == {"Арифметика", "Факты"}
    assert out["per_task"]["Факты"]["win"]["rate"] == 1.0
    rows = sqlite3.connect(db).execute("SELECT pair_order, COUNT(*) FROM pairwise_judgements GROUP BY 1").fetchall()
    assert dict(rows) == {"ab": 5, "ba": 5}


def test_a_judge_that_always_answers_1_flips_on_every_pair(files: tuple[Path, Path, Path]):
    a, b, db = files
    with JudgeServer(fair=False) as server:
        result = CliRunner().invoke(app, ["compare", str(a), str(b), "--judge", "openai:always-1", "--base-url",
                                          server.url, "--db", str(db)])
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert all(word in result.stderr for word in ("overall", "flip", "100%"))  # the table for people
    assert out["overall"]["flip"]["rate"] == 1.0 and out["overall"]["flip"]["ci"] == [1.0, 1.0]
    assert out["overall"]["tie"]["rate"] == 1.0 and out["overall"]["win"]["count"] == 0


def test_a_reasoning_field_is_stored_with_the_verdict_and_never_scored(files: tuple[Path, Path, Path]):
    a, b, db = files
    with JudgeServer(fair=False, reasoning="Ответ 1 лучше, значит -1.") as server:
        code, out = compare(str(a), str(b), "--judge", "openai:r", "--base-url", server.url, "--db", str(db))
    assert code == 0, out
    verdicts = [json.loads(v) for (v,) in sqlite3.connect(db).execute("SELECT verdict FROM pairwise_judgements")]
    assert len(verdicts) == 10
    assert all(v["meta"]["reasoning"] == "Ответ 1 лучше, значит -1." and v["text_score"] == 1.0 for v in verdicts)


def test_statistics_read_both_orders_from_a_s_side():
    def row(ab: float, ba: float) -> Outcome:  # the judge's raw numbers per order → preferences for B
        return Outcome("r", "t", "c", ab, -ba)

    assert row(-1, 1).result == "win" and not row(-1, 1).flipped  # A first: 1 better; B first: 2 better
    assert row(1, -1).result == "loss" and not row(1, -1).flipped
    assert row(1, 1).result == "tie" and row(1, 1).flipped  # always "answer 2": pure position bias
    assert row(-1, 0).result == "win" and row(-1, 0).flipped  # a preference and a tie keep the preference
    summary = summarise([Outcome(f"r{i}", "t", "c", -1.0, -1.0) for i in range(8)]
                        + [Outcome("r8", "t", "c", 1.0, 1.0), Outcome("r9", "t", "c", 0.0, 0.0)])
    assert summary["win"]["rate"] == 0.8 and summary["loss"]["rate"] == 0.1 and summary["tie"]["rate"] == 0.1
    lo, hi = summary["win"]["ci"]
    assert 0.4 <= lo < 0.8 < hi <= 1.0


def test_kill_9_then_rerun_judges_only_what_is_missing(files: tuple[Path, Path, Path]):
    a, b, db = files
    with JudgeServer(fair=True, delay=0.3) as server:
        args = [sys.executable, "-m", "pollux.cli", "compare", str(a), str(b), "--judge", "openai:sbs",
                "--base-url", server.url, "--db", str(db), "--chunk-size", "1", "-o", "concurrency=1"]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        stored = 0
        deadline = time.monotonic() + 120
        while stored < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
            if db.is_file():
                try:
                    stored = sqlite3.connect(db).execute("SELECT COUNT(*) FROM pairwise_judgements").fetchone()[0]
                except sqlite3.OperationalError:  # the table is being created
                    stored = 0
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
        kept = sqlite3.connect(db).execute("SELECT COUNT(*) FROM pairwise_judgements").fetchone()[0]
        assert 3 <= kept < 10
        server.settle()
        server.requests = 0
        code, out = compare(str(a), str(b), "--judge", "openai:sbs", "--base-url", server.url, "--db", str(db))
    assert code == 0, out
    assert server.requests == 10 - kept and out["judged"] == 10 - kept and out["reused"] == kept
    assert sqlite3.connect(db).execute("SELECT COUNT(DISTINCT key) FROM pairwise_judgements").fetchone()[0] == 10
    assert out["overall"]["pairs"] == 5 and out["overall"]["flip"]["rate"] == 0.0


def test_unpaired_and_inconsistent_records_are_named_and_skipped(tmp_path: Path):
    a, b = write_files(tmp_path)
    b.write_text(b.read_text(encoding="utf-8").replace("столицу Франции", "столицу Германии"), encoding="utf-8")
    with b.open("a", encoding="utf-8") as f:  # a record only B has
        f.write(json.dumps({"id": "extra", "instruction": "x", "answer": "y", "criteria_name": "c",
                            "rubrics": RUBRICS}) + "\n")
    with JudgeServer(fair=True) as server:
        result = CliRunner().invoke(app, ["compare", str(a), str(b), "--judge", "openai:sbs", "--base-url",
                                          server.url, "--db", str(tmp_path / "c.db")])
    assert result.exit_code == 0, result.stderr
    assert f"b.jsonl:6: record 'extra' has no answer in {a}" in result.stderr
    assert "b.jsonl:2: record 'q2': its instruction differs from a.jsonl:2's" in result.stderr
    out = json.loads(result.stdout)
    assert out["records_skipped"] == 2 and out["judgements"] == 8 and server.requests == 8


def test_a_pointwise_template_is_refused(files: tuple[Path, Path, Path]):
    a, b, db = files
    with JudgeServer(fair=True) as server:
        result = CliRunner().invoke(app, ["compare", str(a), str(b), "--judge", "openai:sbs", "--base-url", server.url,
                                          "--db", str(db), "--template", "default"])
    assert result.exit_code == 2 and "not a side-by-side prompt" in result.stderr and server.requests == 0


def test_a_regression_judge_is_refused_with_the_reason(files: tuple[Path, Path, Path], tiny_judge_path: Path):
    a, b, db = files
    result = CliRunner().invoke(app, ["compare", str(a), str(b), "--judge", str(tiny_judge_path), "--db", str(db),
                                      "--dtype", "float32", "--device", "cpu"])
    assert result.exit_code == 2
    assert "regression judge (-r)" in result.stderr and "no pairwise meaning" in result.stderr


@pytest.mark.slow
def test_a_tiny_qwen3_judge_in_process_always_1_flips_every_pair(tmp_path: Path, always_one_judge_path: Path):
    """The in-process engine with the Pollux-4B-style tiny Qwen3 (`build_always_one_judge`, ~15 s
    of CPU to overfit): it thinks, then writes "1" — both orders judged, 100% flips."""
    judge = always_one_judge_path
    a, b = write_files(tmp_path, list(COMPARE_RECORDS))
    code, out = compare(str(a), str(b), "--judge", str(judge), "--db", str(tmp_path / "c.db"),
                        "--dtype", "float32", "--device", "cpu", "--max-new-tokens", "24")
    assert code == 0, out
    assert out["judged"] == 6 and out["overall"]["pairs"] == 3
    assert out["overall"]["flip"]["rate"] == 1.0 and out["overall"]["tie"]["rate"] == 1.0
    stored = sqlite3.connect(tmp_path / "c.db").execute("SELECT verdict FROM pairwise_judgements").fetchall()
    assert all("<think>" in json.loads(v)["raw_text"] for (v,) in stored)  # the reasoning is stored
