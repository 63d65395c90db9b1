"""Benchmark: `meta_evaluate` on POLLUX-sized synthetic data (161,076 rows) with 1,000-resample
bootstrap intervals. Prints the time of each phase and the total.

    python bench/metaeval_bench.py [--rows 161076] [--bootstrap 1000] [--judges 1] [--groups] [--per-answer 14]

The data mimic POLLUX's shape: 7 evaluated LLMs, ~11,500 answers of ~14 criteria each, 0–2
scales, 2–3 experts per row with occasional -1 ("not applicable"), 8 of 35 task types
out-of-domain; the judge's score is a noisy continuous version of the experts' (like a
regression head). Texts are short, so key hashing is not the bottleneck it would be on 300 MB of
real text; that time is printed separately. Wall and CPU time are printed with the load average:
on a shared machine wall time depends on the others' jobs, CPU time is the work itself.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from pollux.metaeval import DEFAULT_OOD_TASKS, MetaEvalWarning, load_experts, meta_evaluate, scores_from_frame

MODELS = ("o1", "GPT-4o", "Claude 3.5 Sonnet", "Llama 3.1 405B", "GigaChat Max", "YandexGPT 4 Pro", "T-pro-it-1.0")
RUBRICS = "0: плохо\n\n1: средне\n\n2: хорошо"


def synthetic(n_rows: int, seed: int = 0, per_answer: int = 14) -> tuple[pd.DataFrame, np.ndarray]:
    """POLLUX-shaped expert rows and, aligned, a noisy continuous judge score for each."""
    rng = np.random.default_rng(seed)
    n_answers = -(-n_rows // per_answer)
    answer = np.repeat(np.arange(n_answers), per_answer)[:n_rows]
    model = np.array(MODELS)[answer % len(MODELS)]
    instruction = answer // len(MODELS)
    tasks = np.array([*DEFAULT_OOD_TASKS, *(f"Задача {i}" for i in range(27))])
    task = tasks[instruction % tasks.size]
    criterion = (np.arange(n_rows) - answer * per_answer) % per_answer
    quality = rng.normal(size=n_answers)[answer] + rng.normal(size=n_rows)
    truth = np.clip(np.round(1 + 0.8 * quality), 0, 2)
    experts = np.clip(truth[:, None] + rng.integers(-1, 2, size=(n_rows, 3)) * (rng.random((n_rows, 3)) < 0.2), 0, 2)
    experts[rng.random((n_rows, 3)) < 0.3] = -1  # some experts say "not applicable"
    experts[:, 2][rng.random(n_rows) < 0.5] = np.nan  # a third expert on half the rows only
    valid = np.where(experts >= 0, experts, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        agg = np.nanmean(valid, axis=1)
    agg[np.isnan(agg)] = -1
    annotations = [[{"comment": "", "score": float(s)} for s in row if not np.isnan(s)] for row in experts]
    frame = pd.DataFrame({
        "instruction": [f"Инструкция {i}" for i in instruction],
        "reference_answer": "",
        "answer": [f"Ответ {m} на {i}" for m, i in zip(model, instruction, strict=True)],
        "model_id": model,
        "task_type": task,
        "criteria_name": [f"Критерий {c}" for c in criterion],
        "criteria_group": np.array(["critical", "general", "subjective", "domain", "task"])[criterion % 5],
        "rubrics": RUBRICS,
        "annotations": annotations,
        "criteria_score": agg,
    })
    judge = truth + rng.normal(scale=0.6, size=n_rows)
    return frame, judge


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=161_076)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--judges", type=int, default=1)
    parser.add_argument("--split", default="all")
    parser.add_argument("--groups", action="store_true", help="also the breakdown by criterion group (5 groups)")
    parser.add_argument("--per-answer", type=int, default=14, help="criterion rows per answer: 14 gives "
                        "POLLUX's ~11,500 answers; 4 gives the ~40k-answer shape of issue 13")
    parser.add_argument("--parquet", action="store_true", help="load the expert rows from a Parquet file (with "
                        "POLLUX's further columns, unread) as the CLI does, instead of from a DataFrame")
    args = parser.parse_args()

    load0 = os.getloadavg()[0]  # the machine is shared: say how busy it was
    raw, judge = synthetic(args.rows, per_answer=args.per_answer)
    with tempfile.TemporaryDirectory() as tmp:
        source = raw
        if args.parquet:  # the released dataset has ~10 further columns meta-eval does not read
            for column in ("criteria_description", "rubrics_example", "task_subtype", "domain", "difficulty"):
                raw[column] = "Текст, который meta-eval не читает. " * 8
            source = Path(tmp) / "test-00000-of-00001.parquet"
            raw.to_parquet(source)
        c0 = time.process_time()
        t0 = time.perf_counter()
        experts = load_experts(source)
    t1, c1 = time.perf_counter(), time.process_time()
    rng = np.random.default_rng(1)
    scores = [scores_from_frame(pd.DataFrame({"key": experts.frame["key"],
                                              "head_score": judge + rng.normal(scale=0.2 * k, size=judge.size)}),
                                judge=f"judge-{k}")
              for k in range(args.judges)]
    t2, c2 = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetaEvalWarning)
        result = meta_evaluate(experts, scores, split=args.split, n_bootstrap=args.bootstrap, by_group=args.groups)
    t3 = time.perf_counter()
    cpu = time.process_time() - c0
    avg = result.metrics[(result.metrics["model"] == "Avg.") & (result.metrics["group"] == "all")]
    print(f"rows: {len(experts.frame):,}  answers: {experts.frame['answer_id'].nunique():,}  "
          f"LLMs: {len(result.models)}  judges: {args.judges}  resamples: {args.bootstrap:,}  split: {args.split}")
    for r in avg[avg["metric"].isin(["spearman", "mae", "vc"])].itertuples():
        print(f"  {r.judge} Avg. {r.metric}: {r.value:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]")
    print(f"load expert rows (keys, answers, scales): {t1 - t0:.2f} s wall, {c1 - c0:.2f} s CPU")
    print(f"build score frames:                       {t2 - t1:.2f} s wall, {c2 - c1:.2f} s CPU")
    print(f"meta_evaluate (join, metrics, bootstrap): {t3 - t2:.2f} s wall, {cpu - (c2 - c0):.2f} s CPU")
    print(f"total: {t3 - t0:.2f} s wall, {cpu:.2f} s CPU   (CPUs: {os.cpu_count()}, load average before/after: "
          f"{load0:.1f} / {os.getloadavg()[0]:.1f})")
    if importlib.util.find_spec("threadpoolctl") is None:
        print("note: threadpoolctl is not installed, so BLAS threads were not limited while resampling "
              "(expect more CPU time)")


if __name__ == "__main__":
    main()
