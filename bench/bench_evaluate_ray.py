"""Benchmark: `pollux evaluate` on Ray with ONE worker vs the default in-process path, same runs.

Workload: the tiny random regression judge (`pollux.fixtures.build_tiny_judge`), answers × 5
criteria, greedy, `--max-new-tokens` 32, batches of about one chunk (64 judgements, grouped by
answer), 1 torch thread in both paths. The local run loads the judge in this process; the Ray run
connects to a local cluster (127.0.0.1, started here, its start printed apart) and its one actor
loads the judge. Each path judges two run sizes (`--answers` and 4× as many, each into a fresh
database), so its cost splits honestly into

* `marginal_s_per_judgement` = (T(large) − T(small)) ÷ (judgements(large) − judgements(small)):
  what each extra judgement costs once the run is going — the figure that decides a long run;
* `fixed_s` = T(small) − judgements(small) × marginal: what a run costs before it gets going
  (Ray: actor start + imports + judge load in the actor; local: judge load).

T is the whole `evaluate` call (reading, loading, judging, writing). Printed: both, and the ratios
Ray ÷ local (goal: marginal ≤ 1.15; the total at the large size shows how much startup still counts).

    python bench/bench_evaluate_ray.py                    # 40 and 160 answers × 5 criteria
    python bench/bench_evaluate_ray.py --answers 20 --max-new-tokens 16
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' input writer

from pollux.evaluate import JudgeLoader, evaluate
from pollux.executor import ExecutorOptions
from pollux.executor.judging import JudgeFactory
from pollux.executor.ray_data import start_local_cluster


def timed(src: Path, db: Path, judge: Path, options: dict, executor: ExecutorOptions | None, chunk: int) -> float:
    loader = JudgeLoader({"judge": str(judge), "options": options}, JudgeFactory(str(judge), options))
    started = time.perf_counter()
    summary = evaluate(src, db, loader, chunk_size=chunk, executor=executor)
    elapsed = time.perf_counter() - started
    assert summary.remaining == 0 and summary.failed == 0 and summary.already_done == 0, summary
    return elapsed


def split(small: float, large: float, n_small: int, n_large: int) -> dict:
    marginal = (large - small) / (n_large - n_small)
    return {"total_s_small": round(small, 2), "total_s_large": round(large, 2),
            "marginal_s_per_judgement": round(marginal, 5), "fixed_s": round(small - n_small * marginal, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--answers", type=int, default=40, help="the small run (the large one: 4x)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--chunk", type=int, default=64, help="judgements per batch")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from pollux.fixtures import build_tiny_judge
    from test_evaluate_kill import CRITERIA, write_input

    options = {"dtype": "float32", "device": "cpu", "max_new_tokens": args.max_new_tokens, "threads": 1}
    sizes = (args.answers, 4 * args.answers)
    n = tuple(a * len(CRITERIA) for a in sizes)
    with tempfile.TemporaryDirectory(prefix="bench-evaluate-ray-") as tmp:
        folder = Path(tmp)
        judge = build_tiny_judge(folder / "judge", regression=True)
        inputs = []
        for answers in sizes:
            inputs.append(folder / f"answers-{answers}.jsonl")
            write_input(inputs[-1], answers)

        local = [timed(src, folder / f"local-{i}.db", judge, options, None, args.chunk) for i, src in enumerate(inputs)]

        started = time.perf_counter()
        ray = start_local_cluster(num_cpus=2)  # as the tests: loopback only
        cluster_start = time.perf_counter() - started
        try:
            one = ExecutorOptions(ray="auto", workers=1)
            on_ray = [timed(src, folder / f"ray-{i}.db", judge, options, one, args.chunk) for i, src in enumerate(inputs)]
        finally:
            ray.shutdown()
    local_split, ray_split = split(*local, *n), split(*on_ray, *n)
    result = {
        "workload": {"judgements": list(n), "max_new_tokens": args.max_new_tokens, "chunk": args.chunk,
                     "torch_threads": 1, "load_avg_1m_after": round(os.getloadavg()[0], 2)},
        "ray_cluster_start_s": round(cluster_start, 2),
        "local": local_split,
        "ray_1_worker": ray_split,
        "ratio_marginal": round(ray_split["marginal_s_per_judgement"] / local_split["marginal_s_per_judgement"], 3),
        "ratio_total_large": round(on_ray[1] / local[1], 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
