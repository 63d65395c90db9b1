"""A short run of scripts/load_test.py (the full one is 200 clients × 60 s; see docs/serving.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_load_script_short_run(tiny_judge_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "load_test.py"), "--model", str(tiny_judge_path),
         "--clients", "30", "--duration", "5", "--calm-duration", "3", "--max-queue", "6",
         "--batch-size", "8", "--max-new-tokens", "8"],
        capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert "p50" in run.stdout and "p95" in run.stdout and "throughput" in run.stdout
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["key_check"] == "ok" and report["checks"] == "ok"
    calm, load = report["phases"]
    assert calm["clients"] == 6 and "429" not in calm["statuses"] and calm["statuses"]["200"] > 0
    # 30 clients against a queue of 6: overload, answered with 429 (never 5xx), and work still gets done
    assert load["statuses"].get("429", 0) > 0 and load["statuses"]["200"] > 0
    assert set(load["statuses"]) <= {"200", "429"} and load["bad_429"] == 0
    assert "server stopped" in run.stderr
