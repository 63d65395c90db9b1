"""`pollux evaluate --judge openai:MODEL` against a real OpenAI-compatible server on loopback:
the backend options reach the engine and the verdicts reach the store."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

from typer.testing import CliRunner

from pollux.cli import app
from pollux.store import read_runs, read_verdicts

R2 = "0: плохо.\n\n1: средне.\n\n2: хорошо."


class Handler(BaseHTTPRequestHandler):
    seen: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Handler.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        prompt = body["messages"][-1]["content"]
        score = 2 if "Полный ответ" in prompt else 0
        reply = {"choices": [{"message": {"role": "assistant", "content": f"[FEEDBACK] Разбор. [RESULT] {score} [END]"},
                              "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": 50, "completion_tokens": 7}}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


def test_evaluate_through_an_openai_compatible_server(tmp_path: Path, monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Handler.seen = []
    try:
        src = tmp_path / "a.jsonl"
        rows = [{"id": f"q{i}", "model_id": "m", "instruction": f"Вопрос {i}",
                 "answer": "Полный ответ" if i % 2 == 0 else "Нет", "criteria_name": "Полезность", "rubrics": R2}
                for i in range(4)]
        src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        monkeypatch.setenv("POLLUX_TEST_KEY", "secret-123")
        db = tmp_path / "run.db"
        args = ["evaluate", str(src), "--model", "openai:judge-model", "--db", str(db),  # --model: --judge's alias
                "--base-url", f"http://127.0.0.1:{server.server_port}/v1", "--api-key-env", "POLLUX_TEST_KEY",
                "--concurrency", "2", "--temperature", "0.1", "--max-new-tokens", "64", "--prompt-style", "general", "--api-timeout", "5", "--no-progress"]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["judged"] == 4
    finally:
        server.shutdown()
        server.server_close()
    assert len(Handler.seen) == 4
    assert {s["path"] for s in Handler.seen} == {"/v1/chat/completions"}
    assert {s["auth"] for s in Handler.seen} == {"Bearer secret-123"}
    assert {s["body"]["temperature"] for s in Handler.seen} == {0.1}
    df = read_verdicts(db).sort_values("record_id")
    assert df["text_score"].tolist() == [2.0, 0.0, 2.0, 0.0]
    assert df["rationale"].tolist() == ["Разбор."] * 4
    (run,) = read_runs(db)
    assert run.config["engine"]["engine"] == "openai" and run.config["engine"]["model"] == "judge-model"
    assert run.config["engine"]["sampling"]["max_new_tokens"] == 64
    assert run.config["engine"]["prompt_style"] == "general"


def test_an_option_the_judge_does_not_take_stops_the_run_before_it_starts(tmp_path: Path):
    """Local-only flags left out never reach an openai: judge (the run above); one given
    explicitly is a usage error naming it, before any input is read or any database written."""
    src = tmp_path / "a.jsonl"
    src.write_text(json.dumps({"instruction": "В", "answer": "О", "criteria_name": "К", "rubrics": R2},
                              ensure_ascii=False) + "\n", encoding="utf-8")
    db = tmp_path / "run.db"
    result = CliRunner().invoke(app, ["evaluate", str(src), "--judge", "openai:judge-model", "--db", str(db),
                                      "--base-url", "http://127.0.0.1:9/v1", "--dtype", "bfloat16", "--no-progress"])
    assert result.exit_code == 2
    assert "option 'dtype' does not apply to openai: judges (it takes: base_url, " in result.stderr
    assert not db.exists()


# A `pollux` process in which the `local` extra's packages are not installed: importing them raises
# ModuleNotFoundError as it does in a core-only install (`pip install .`; CI's .ci/core-only runs the
# real one). Everything else imports as usual.
_WITHOUT_LOCAL_EXTRA = """
import importlib.abc, sys
class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in ("torch", "transformers", "safetensors", "tokenizers"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, NotInstalled())
sys.argv = ["pollux", *sys.argv[1:]]
from pollux.cli import main
main()
"""


def test_a_local_checkpoint_without_the_local_extra_names_the_extra_to_install(tmp_path: Path):
    """openai: judging needs no torch; a local checkpoint does, and says which extra brings it
    (one line, exit 2, nothing written) instead of `No module named 'torch'`."""
    import subprocess
    import sys

    src = tmp_path / "a.jsonl"
    src.write_text(json.dumps({"instruction": "В", "answer": "О", "criteria_name": "К", "rubrics": R2},
                              ensure_ascii=False) + "\n", encoding="utf-8")
    ckpt = tmp_path / "judge"
    ckpt.mkdir()
    (ckpt / "config.json").write_text('{"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}')
    db = tmp_path / "run.db"
    done = subprocess.run([sys.executable, "-c", _WITHOUT_LOCAL_EXTRA, "evaluate", str(src), "--judge", str(ckpt),
                           "--db", str(db), "--no-progress"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "pip install 'pollux[local]'" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
