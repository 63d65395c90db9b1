#!/usr/bin/env python
"""Load test for `pollux serve`: N concurrent loopback clients for D seconds.

    python scripts/load_test.py                       # starts its own server with a tiny random judge
    python scripts/load_test.py --url http://127.0.0.1:8000 --api-key KEY
    python scripts/load_test.py --model ./pollux-judge-7b-r --clients 200 --duration 60

Phases:

1. key check (when the server needs a key): requests without it, or with a wrong one, must get 401;
2. calm: `min(clients, max_queue)` clients — each has one single-item request in flight, so the
   queue can never overflow and any 429 is a bug;
3. load: `--clients` clients for `--duration` seconds. A 429 is accepted only when its body shows
   the queue really was full (queue_depth + 1 > max_queue); clients then wait what Retry-After
   says, as a well-behaved client would.

Prints, per phase, status counts, throughput and p50/p95/p99 latency of successful requests, and
finally a JSON summary; exits 1 when a check fails (any 5xx or transport error, a 429 under
capacity, an unauthenticated request let through). The CPU of this machine may be shared with
other work: throughput numbers are only comparable on the same machine and load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from pollux.prompts import PromptTemplate
from pollux.records import JudgeItem
from pollux.server.launch import free_port, start_serve, stop, wait_ready

RUBRICS = "0: ответ неверен\n\n1: ответ частично верен\n\n2: ответ полностью верен"


def make_item(i: int) -> JudgeItem:
    a, b = i % 97, (i * 7) % 89
    return JudgeItem(instruction=f"Сколько будет {a} + {b}? Объясни решение.",
                     answer=f"{a} + {b} = {a + b}. Складываем единицы и десятки.",
                     criteria_name="Правильность ответа", rubrics=RUBRICS)


@dataclass
class PhaseResult:
    name: str
    clients: int
    seconds: float = 0.0
    statuses: Counter[str] = field(default_factory=Counter)
    latencies_ok: list[float] = field(default_factory=list)
    bad_429: int = 0  # 429s while the queue was not full
    errors: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        ok = np.array(self.latencies_ok) if self.latencies_ok else np.array([np.nan])
        done = sum(self.statuses.values())
        return {
            "phase": self.name, "clients": self.clients, "seconds": round(self.seconds, 1), "requests": done,
            "statuses": dict(sorted(self.statuses.items())),
            "throughput_ok_per_s": round(len(self.latencies_ok) / self.seconds, 2) if self.seconds else 0.0,
            "latency_ok_ms": {q: round(float(np.percentile(ok, p)) * 1000, 1)
                              for q, p in (("p50", 50), ("p95", 95), ("p99", 99))},
            "bad_429": self.bad_429,
            "errors": self.errors[:5],
        }


async def run_phase(name: str, base: str, model: str, key: str | None, endpoint: str, clients: int,
                    duration: float, timeout: float) -> PhaseResult:
    result = PhaseResult(name, clients)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    template = PromptTemplate()
    counter = iter(range(10**9))
    limits = httpx.Limits(max_connections=clients + 8, max_keepalive_connections=clients + 8)
    started = time.monotonic()
    stop_at = started + duration

    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=timeout, limits=limits) as client:

        async def one_client() -> None:
            while time.monotonic() < stop_at:
                item = make_item(next(counter))
                if endpoint == "chat":
                    path = "/v1/chat/completions"
                    body: dict[str, Any] = {"model": model, "max_tokens": 16, "temperature": 0,
                                            "messages": [{"role": "user", "content": template.render(item)}]}
                else:
                    path, body = "/v1/judge", item.to_dict()
                t0 = time.monotonic()
                try:
                    r = await client.post(path, json=body)
                except httpx.HTTPError as e:
                    result.statuses["transport-error"] += 1
                    result.errors.append(f"{type(e).__name__}: {e}")
                    continue
                elapsed = time.monotonic() - t0
                result.statuses[str(r.status_code)] += 1
                if r.status_code == 200:
                    result.latencies_ok.append(elapsed)
                elif r.status_code == 429:
                    err = r.json().get("error", {})
                    if not err.get("queue_depth", 0) + 1 > err.get("max_queue", 0):
                        result.bad_429 += 1
                    wait = float(r.headers.get("retry-after", "1"))  # honoured, plus jitter
                    await asyncio.sleep(min(wait, 10.0) * random.uniform(1.0, 1.5))
                else:
                    result.errors.append(f"HTTP {r.status_code}: {r.text[:200]}")

        await asyncio.gather(*(one_client() for _ in range(clients)))
    result.seconds = time.monotonic() - started
    return result


def check_key(base: str, key: str, model: str) -> list[str]:
    """Requests without the key, or with a wrong one, must be refused (401)."""
    problems = []
    body = {"model": model, "messages": [{"role": "user", "content": PromptTemplate().render(make_item(1))}]}
    for headers in ({}, {"Authorization": "Bearer wrong-" + key}, {"Authorization": key}):
        for method, path, payload in (("POST", "/v1/chat/completions", body), ("POST", "/v1/judge",
                                      make_item(1).to_dict()), ("GET", "/v1/models", None), ("GET", "/metrics", None)):
            r = httpx.request(method, base + path, json=payload, headers=headers, timeout=30)
            if r.status_code != 401:
                problems.append(f"{method} {path} with headers {list(headers)} → {r.status_code}, expected 401")
    r = httpx.get(base + "/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    if r.status_code != 200:
        problems.append(f"GET /v1/models with the key → {r.status_code}, expected 200")
    return problems


def server_batches(base: str, key: str | None) -> dict[str, float]:
    text = httpx.get(base + "/metrics", headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=30).text
    values = {}
    for line in text.splitlines():
        for name in ("pollux_batch_size_sum", "pollux_batch_size_count"):
            if line.startswith(name + " "):
                values[name] = float(line.split()[1])
    return values


def print_phase(s: dict[str, Any]) -> None:
    lat = s["latency_ok_ms"]
    print(f"[{s['phase']}] {s['clients']} clients × {s['seconds']} s: {s['requests']} requests, "
          f"statuses {s['statuses']}", flush=True)
    print(f"[{s['phase']}] throughput {s['throughput_ok_per_s']} ok req/s; latency of 200s: p50 {lat['p50']} ms, "
          f"p95 {lat['p95']} ms, p99 {lat['p99']} ms", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="base URL of a running server (default: start one on loopback)")
    p.add_argument("--api-key", default=os.environ.get("POLLUX_API_KEY"), help="the server's key ($POLLUX_API_KEY)")
    p.add_argument("--model", help="checkpoint to serve when no --url (default: a tiny random judge)")
    p.add_argument("--model-name", help="model name for chat requests (default: the first of /v1/models)")
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--calm-duration", type=float, default=10.0, help="0 skips the calm phase")
    p.add_argument("--endpoint", choices=("chat", "judge"), default="chat")
    p.add_argument("--max-queue", type=int, default=None,
                   help="--max-queue of a started server (default 64); a running server's is read from /healthz")
    p.add_argument("--batch-size", type=int, default=32, help="--batch-size of a started server")
    p.add_argument("--max-new-tokens", type=int, default=8, help="--max-new-tokens of a started server")
    p.add_argument("--timeout", type=float, default=120.0, help="client timeout per request, seconds")
    a = p.parse_args(argv)

    proc = None
    tmp = None
    try:
        if a.url:
            base, key = a.url.rstrip("/"), a.api_key
            try:
                wait_ready(base + "/healthz", timeout=60)
            except TimeoutError as e:
                print(f"load_test: the server does not answer: {e}", file=sys.stderr)
                return 2
        else:
            key = a.api_key or secrets.token_urlsafe(16)
            model_path = a.model
            if model_path is None:
                from pollux.fixtures import build_tiny_judge

                tmp = tempfile.TemporaryDirectory(prefix="pollux-load-")
                print("building a tiny random judge…", file=sys.stderr, flush=True)
                model_path = str(build_tiny_judge(Path(tmp.name) / "judge"))
            port = free_port()
            print(f"starting pollux serve on 127.0.0.1:{port}…", file=sys.stderr, flush=True)
            proc = start_serve(model_path, port, [
                "--max-new-tokens", str(a.max_new_tokens), "--max-queue", str(a.max_queue or 64),
                "--batch-size", str(a.batch_size), "--dtype", "float32", "--device", "cpu",
            ], env={"POLLUX_API_KEY": key})
            base = f"http://127.0.0.1:{port}"
        auth = {"Authorization": f"Bearer {key}"} if key else {}
        a.max_queue = httpx.get(base + "/healthz", timeout=30).json()["max_queue"]
        model = a.model_name or httpx.get(base + "/v1/models", headers=auth, timeout=30).json()["data"][0]["id"]

        failures: list[str] = []
        report: dict[str, Any] = {"url": base, "model": model, "endpoint": a.endpoint, "max_queue": a.max_queue}
        if key:
            problems = check_key(base, key, model)
            failures += problems
            report["key_check"] = problems if problems else "ok"
            print(f"[key] requests without / with a wrong key rejected: {problems if problems else 'yes'}",
                  flush=True)
        else:
            report["key_check"] = "skipped (no key)"

        phases = []
        if a.calm_duration > 0:
            calm_clients = min(a.clients, a.max_queue)
            phases.append(("calm", calm_clients, a.calm_duration))
        phases.append(("load", a.clients, a.duration))
        report["phases"] = []
        for name, clients, duration in phases:
            before = server_batches(base, key)
            res = asyncio.run(run_phase(name, base, model, key, a.endpoint, clients, duration, a.timeout))
            after = server_batches(base, key)
            s = res.summary()
            n_batches = after.get("pollux_batch_size_count", 0) - before.get("pollux_batch_size_count", 0)
            n_items = after.get("pollux_batch_size_sum", 0) - before.get("pollux_batch_size_sum", 0)
            s["server_mean_batch"] = round(n_items / n_batches, 1) if n_batches else None
            print_phase(s)
            print(f"[{name}] server: {n_items:g} judgements in {n_batches:g} engine calls "
                  f"(mean batch {s['server_mean_batch']})", flush=True)
            report["phases"].append(s)
            bad = {k: v for k, v in res.statuses.items() if k.startswith("5") or k == "transport-error"}
            if bad:
                failures.append(f"{name}: server errors / transport errors {bad}: {res.errors[:3]}")
            other = {k: v for k, v in res.statuses.items() if k not in ("200", "429") and k not in bad}
            if other:
                failures.append(f"{name}: unexpected statuses {other}: {res.errors[:3]}")
            if name == "calm" and res.statuses.get("429"):
                failures.append(f"calm: {res.statuses['429']} × 429 with at most {clients} requests in flight "
                                f"(max queue {a.max_queue})")
            if res.bad_429:
                failures.append(f"{name}: {res.bad_429} × 429 while the queue was not full")
            if not res.latencies_ok:
                failures.append(f"{name}: no request succeeded")
        report["checks"] = failures if failures else "ok"
        print(json.dumps(report, ensure_ascii=False))
        if failures:
            print("FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
            return 1
        key_note = "key enforced" if key else "no key set, so no key check"
        print(f"all checks passed: no 5xx, 429 only under overload, {key_note}", file=sys.stderr)
        return 0
    finally:
        if proc is not None:
            code = stop(proc)
            print(f"server stopped (exit {code})", file=sys.stderr)
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
