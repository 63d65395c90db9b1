"""Benchmark: `pollux synth`'s annotate stage against a local OpenAI-compatible server that answers
every request after a fixed delay (50 ms by default).

At concurrency C and delay D no client can exceed C / D requests per second (32 / 0.05 s = 640 req/s):
the script runs the real annotate stage (store, executor, `ChatClient`, the teacher's parser and
retries) over synthetic answers × criteria and prints the HTTP requests per second it achieved as a
share of that bound (the goal is ≥ 70%). The server is examples/synth_fake_llm.py (via tests/synth_fakes.py) in its own process; its
teacher replies are ~30% broken, so the request count includes the stage's re-asks.

    python bench/bench_synth.py                         # 32 concurrent, 50 ms, ~3,000 requests
    python bench/bench_synth.py --requests 6000 --concurrency 64
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from pollux.synth import load_config  # noqa: E402
from pollux.synth.pipeline import executor_options  # noqa: E402
from pollux.synth.stages import StageContext, content_key, run_annotate  # noqa: E402
from pollux.synth.store import Store  # noqa: E402
from pollux.taxonomy import load_catalog  # noqa: E402
from synth_fakes import FakeServer  # noqa: E402

RUBRICS = "0: ответ не решает задачу.\n\n1: ответ решает задачу частично.\n\n2: ответ полностью решает задачу."


def fill_store(store: Store, answers: int, criteria: int) -> None:
    """`answers` answers to one instruction each, `criteria` criteria per instruction."""
    filtered, crit, ans = [], [], []
    for i in range(answers):
        key = content_key("bench-instruction", i)
        filtered.append({"key": key, "instruction": f"Задание номер {i}: объясни, как работает фотосинтез.",
                         "task_type": "Объяснить концепт", "task_subtype": "", "task_subsubtype": "",
                         "task_group": "bench", "complexity": "easy", "generator": "bench", "prompt_version": "-"})
        crit.append({"key": key, "criteria": [{"criteria_name": f"Критерий {c}", "rubrics": RUBRICS,
                                               "criterion_id": None, "group": "general"} for c in range(criteria)]})
        ans.append({"key": content_key("bench-answer", i), "instruction_key": key, "answer_model": "bench",
                    "answer": "Растения поглощают свет и превращают углекислый газ в сахара.", "prompt_version": "-"})
    store.replace("filtered", filtered)
    store.replace("criteria", crit)
    store.add("answers", ans)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="annotations to make (before re-asks)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--delay", type=float, default=0.05)
    parser.add_argument("--workers", type=int, default=None, help="executor worker threads (default: the config's)")
    parser.add_argument("--batch-size", type=int, default=None, help="rows per executor batch (default: the config's)")
    args = parser.parse_args()
    criteria = 10
    with FakeServer("--delay", str(args.delay)) as server, tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "synth.toml"
        config_path.write_text(f"""
[run]
dir = "run"
[models.teacher]
model = "openai:teacher"
base_url = "{server.url}"
concurrency = {args.concurrency}
[instructions]
generators = ["teacher"]
[answers]
models = ["teacher"]
[annotate]
teacher = "teacher"
""", encoding="utf-8")
        config = load_config(config_path)
        with Store(config.db_path) as store:
            fill_store(store, args.requests // criteria, criteria)
            ctx = StageContext(config=config, store=store, catalog=load_catalog(),
                               options=executor_options(config, workers=args.workers, batch_size=args.batch_size))
            before = httpx.get(server.url.removesuffix("/v1") + "/health").json()["requests"]
            server_cpu = _cpu_seconds(server.proc.pid if server.proc else None)
            started, cpu = time.perf_counter(), time.process_time()
            result = run_annotate(ctx)
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
            server_cpu = _cpu_seconds(server.proc.pid if server.proc else None) - server_cpu
            requests = httpx.get(server.url.removesuffix("/v1") + "/health").json()["requests"] - before
    bound = args.concurrency / args.delay
    rate = requests / elapsed
    print(json.dumps({
        "annotations": result["total"], "dropped": result["dropped"], "http_requests": requests,
        "seconds": round(elapsed, 2), "requests_per_s": round(rate, 1), "bound_per_s": round(bound, 1),
        "share_of_bound": round(rate / bound, 3), "goal": 0.7, "met": rate / bound >= 0.7,
        "concurrency": args.concurrency, "delay_s": args.delay, "workers": ctx.options.workers,
        "batch_size": ctx.options.batch_size,
        # where the time went: CPU per request in this process (pollux) and in the fake server
        "client_cpu_ms_per_request": round(1000 * cpu / max(requests, 1), 2),
        "server_cpu_ms_per_request": round(1000 * server_cpu / max(requests, 1), 2),
        "cpu_count": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2),
    }, ensure_ascii=False, indent=2))


def _cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process (Linux /proc), 0 where unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    main()
