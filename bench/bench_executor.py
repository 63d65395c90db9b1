"""Benchmark: what the Ray Data path of `pollux.executor.map_batches` costs over the local path.

Workload: N rows (300 by default), a worker that spends ~20 ms of pure CPU per row (a busy loop on
the clock, so both paths do exactly the same work), batches of 16, ONE worker in both paths — one
thread here, one actor on a local Ray cluster (127.0.0.1) — so the difference is the executor's own
overhead: shipping rows as JSON through Arrow blocks, the actor pool, streaming results back. The
Ray time counts from the `map_batches` call to the last result, actor start included; the cluster's
own start (once per driver) is printed apart. Each Ray run is made twice: the second one finds the
worker processes' imports warm.

    python bench/bench_executor.py                  # 300 rows × 20 ms
    python bench/bench_executor.py --rows 100 --ms 5
    python bench/bench_executor.py --evaluate 2000  # local `evaluate`'s own CPU cost per verdict

`--evaluate N`: no Ray; N judgements through `pollux.evaluate.evaluate` with a judge that answers
instantly, so the CPU time per verdict is the path's own cost — reading the input, the executor's
thread hand-off, the driver's SQLite commit — the part that must stay negligible beside a model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from pollux.executor import ExecutorOptions, Row, map_batches
from pollux.executor.ray_data import start_local_cluster


class BusyWorker:
    """~`ms` milliseconds of CPU per row; returns each row's key and how long it spun."""

    def __init__(self, ms: float) -> None:
        self.ms = ms

    def __call__(self):
        def run(batch: list[Row]) -> list[Row]:
            out = []
            for row in batch:
                start = time.perf_counter()
                end = start + self.ms / 1000
                spins = 0
                while time.perf_counter() < end:
                    spins += 1
                out.append({"key": row["key"], "spins": spins})
            return out

        return run


def timed_run(rows: list[Row], ms: float, options: ExecutorOptions) -> float:
    started = time.perf_counter()
    keys = {r["key"] for batch in map_batches(rows, BusyWorker(ms), options) for r in batch}
    elapsed = time.perf_counter() - started
    assert len(keys) == len(rows), f"{len(rows) - len(keys)} rows missing"
    return elapsed


class InstantJudge:
    """Answers every item at once (each verdict through `on_verdict`, as the engines do)."""

    name, kind = "instant", "bench"

    def describe(self) -> dict[str, str]:
        return {"name": self.name}

    def judge_many(self, items: list, on_verdict=None) -> list:
        from pollux.verdicts import Verdict

        verdicts = []
        for i, item in enumerate(items):
            verdict = Verdict(item.criteria_name, head_score=1.0, rationale="обоснование " * 40, raw_text="x" * 400,
                              scale_min=0, scale_max=2, valid=True)
            if on_verdict is not None:
                on_verdict(i, verdict)
            verdicts.append(verdict)
        return verdicts


def evaluate_cost(judgements: int, repeats: int = 3) -> None:
    """CPU µs per verdict of a local `evaluate` (the best of `repeats` runs, each into a new store)."""
    import resource
    import tempfile
    from pathlib import Path

    from pollux.evaluate import evaluate

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    folder = Path(tempfile.mkdtemp(prefix="bench-evaluate-"))
    rubric = "0: плохо.\n\n1: средне.\n\n2: хорошо."
    criteria = [{"criteria_name": f"Критерий {c}", "rubrics": rubric} for c in range(4)]
    src = folder / "answers.jsonl"
    src.write_text("".join(json.dumps({"id": f"q{i}", "instruction": f"Вопрос {i}?", "answer": f"Ответ {i}.",
                                       "criteria": criteria}, ensure_ascii=False) + "\n"
                           for i in range(-(-judgements // 4))), encoding="utf-8")
    costs = []
    for run in range(repeats):
        started, wall = cpu(), time.perf_counter()
        summary = evaluate(src, folder / f"run{run}.db", InstantJudge(), chunk_size=64)
        costs.append(((cpu() - started) / summary.judged * 1e6, (time.perf_counter() - wall) / summary.judged * 1e6))
    best = min(costs)
    print(json.dumps({"judgements": summary.judged, "cpu_us_per_verdict": round(best[0]),
                      "wall_us_per_verdict": round(best[1])}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--ms", type=float, default=20.0, help="CPU milliseconds per row")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--evaluate", type=int, metavar="N", help="only: local evaluate's CPU per verdict, N judgements")
    args = parser.parse_args()
    if args.evaluate:
        evaluate_cost(args.evaluate)
        return
    rows = [{"key": f"row-{i:05d}", "payload": {"text": "пример " * 20, "n": i}} for i in range(args.rows)]
    ideal = args.rows * args.ms / 1000

    local = timed_run(rows, args.ms, ExecutorOptions(workers=1, batch_size=args.batch_size))

    started = time.perf_counter()
    ray = start_local_cluster(num_cpus=2)  # as in the tests: on loopback only, its C++ log quiet
    cluster_start = time.perf_counter() - started
    try:
        on_ray = ExecutorOptions(ray="auto", workers=1, batch_size=args.batch_size)
        ray_cold = timed_run(rows, args.ms, on_ray)
        ray_warm = timed_run(rows, args.ms, on_ray)
    finally:
        ray.shutdown()

    result = {
        "rows": args.rows, "ms_per_row": args.ms, "batch_size": args.batch_size, "ideal_s": round(ideal, 2),
        "local_s": round(local, 2), "ray_first_s": round(ray_cold, 2), "ray_second_s": round(ray_warm, 2),
        "ray_cluster_start_s": round(cluster_start, 2),
        "ratio_ray_first_to_local": round(ray_cold / local, 2),
        "ratio_ray_second_to_local": round(ray_warm / local, 2),
        "ray_overhead_s": round(ray_warm - local, 2),  # mostly fixed: starting the actor, loading its imports
    }
    print(json.dumps(result))
    print(f"local {local:.2f} s, Ray (1 actor) {ray_cold:.2f} s first / {ray_warm:.2f} s second run "
          f"(ideal {ideal:.2f} s): Ray/local = {ray_cold / local:.2f}× / {ray_warm / local:.2f}×; "
          f"cluster start {cluster_start:.1f} s (once per driver)", file=sys.stderr)


if __name__ == "__main__":
    main()
