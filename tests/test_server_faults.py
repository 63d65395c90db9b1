"""Exactly once through faults: `pollux evaluate` → fault proxy → `pollux serve`, all real processes.

First the server is down (every item fails and is recorded as an error); then the same command runs
through the proxy and resumes. The proxy (scripts/fault_proxy.py) fails 20% of requests (429 + Retry-After before the server,
500 after the server did the work) and holds 10% past the client's timeout. The evaluate run
must still finish with every item judged exactly once, no errors, and the same scores the server
gives without faults.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pollux.records import JudgeItem
from pollux.server.launch import free_port, start_serve, stop, wait_ready
from pollux.store import read_verdicts

ROOT = Path(__file__).resolve().parents[1]
KEY = "fault-test-key"
R2 = "0: плохо\n\n1: средне\n\n2: хорошо"
CRITERIA = [{"criteria_name": c, "rubrics": R2} for c in ("Полезность", "Грамотность", "Логичность")]


@pytest.fixture()
def stack(tiny_judge_path: Path, tmp_path: Path) -> Iterator[dict[str, str]]:
    """pollux serve (key required) and the fault proxy in front of it."""
    server_port, proxy_port = free_port(), free_port()
    server = start_serve(tiny_judge_path, server_port, [
        "--max-new-tokens", "8", "--dtype", "float32", "--device", "cpu", "--model-name", "tiny-r",
    ], env={"POLLUX_API_KEY": KEY}, log_path=tmp_path / "serve.log")
    proxy = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "fault_proxy.py"), "--upstream", f"http://127.0.0.1:{server_port}",
         "--port", str(proxy_port), "--fail-rate", "0.2", "--delay-rate", "0.1", "--delay-s", "3", "--seed", "3"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "proxy.log", "wb"),  # noqa: SIM115
    )
    try:
        wait_ready(f"http://127.0.0.1:{proxy_port}/healthz", proxy, timeout=60)
        yield {"server": f"http://127.0.0.1:{server_port}", "proxy": f"http://127.0.0.1:{proxy_port}"}
    finally:
        stop(proxy)
        stop(server)


@pytest.mark.slow
def test_evaluate_through_faults_judges_every_item_exactly_once(stack: dict[str, str], tmp_path: Path) -> None:
    rows = [{"id": f"q{i}", "model_id": "alpha", "instruction": f"Сколько будет {i} + {i}? Объясни.",
             "answer": f"Будет {2 * i}, потому что {i} + {i} = {2 * i}.", "criteria": CRITERIA} for i in range(14)]
    src, db = tmp_path / "answers.jsonl", tmp_path / "run.db"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    n_items = len(rows) * len(CRITERIA)  # 42

    env = {**os.environ, "FAULT_TEST_KEY": KEY, "POLLUX_API_TIMEOUT": "1.5", "POLLUX_API_MAX_RETRIES": "12"}

    def evaluate(base_url: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-c", "from pollux.cli import main; main()", "evaluate", str(src),
               "--judge", "openai:tiny-r", "--base-url", base_url, "--api-key-env", "FAULT_TEST_KEY",
               "--concurrency", "8", "--max-new-tokens", "8", "--db", str(db), "--no-progress"]
        return subprocess.run(cmd, env={**env, **extra_env}, capture_output=True, text=True, timeout=600)

    # 1. the server is not there: every item fails (after one retry) and is recorded as an error
    down = evaluate(f"http://127.0.0.1:{free_port()}/v1", POLLUX_API_MAX_RETRIES="1")
    assert down.returncode == 1, down.stderr[-3000:]
    assert json.loads(down.stdout)["remaining"] == n_items
    assert read_verdicts(db)["error"].str.contains("connection error").all()

    # 2. the same command through the faulty proxy resumes the run and retries every failed item
    run = evaluate(stack["proxy"] + "/v1")
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout)
    assert summary["judged"] == n_items and summary["remaining"] == 0 and not summary["new_run"]

    # the faults really happened
    faults = httpx.get(stack["proxy"] + "/_proxy/stats").json()
    assert faults.get("429", 0) > 0 and faults.get("500", 0) > 0 and faults.get("delayed", 0) > 0, faults

    # every item exactly once, none failed
    df = read_verdicts(db)
    assert len(df) == n_items
    assert df["item_key"].nunique() == n_items
    assert df["error"].isna().all(), df["error"].dropna().tolist()
    assert (df["judge"] == "openai:tiny-r").all()
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT COUNT(*), COUNT(DISTINCT item_key) FROM verdicts").fetchone() == (n_items, n_items)
    conn.close()

    # ... while the server judged more than that (lost responses and abandoned requests were redone)
    metrics = httpx.get(stack["server"] + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    served = sum(float(line.split()[-1]) for line in metrics.splitlines()
                 if line.startswith("pollux_judgements_total"))
    assert served > n_items
    print(f"\nproxy faults {faults}; server judgements {served:g} for {n_items} items")

    # and the scores are the ones the server gives without faults
    items = [JudgeItem(instruction=r["instruction"], answer=r["answer"], **c) for r in rows for c in CRITERIA]
    direct = httpx.post(stack["server"] + "/v1/judge", json={"items": [it.to_dict() for it in items]},
                        headers={"Authorization": f"Bearer {KEY}"}, timeout=120).json()["verdicts"]
    expected = {it.key: v["head_score"] for it, v in zip(items, direct, strict=True)}
    got = dict(zip(df["item_key"], df["head_score"], strict=True))
    assert set(got) == set(expected)
    assert all(abs(got[k] - expected[k]) < 1e-3 for k in expected)
