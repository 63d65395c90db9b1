"""Benchmark: `meta_evaluate` on POLLUX-sized synthetic data (161,076 rows) with 1,000-resample
bootstrap intervals. Prints the time of each phase and the total.

    python bench/metaeval_bench.py [--rows 161076] [--bootstrap 1000] [--judges 1] [--groups] [--per-answer 14]
    python bench/metaeval_bench.py --cli --per-answer 4 --split all   # the whole command, as a user runs it

`--cli` writes the expert rows as a Parquet file (with POLLUX's further, unread columns and an
`id`) and the judge's scores as JSONL keyed by `id`, then times
`pollux meta-eval EXPERTS.parquet --scores SCORES.jsonl --on id --split SPLIT` in a subprocess —
start-up, imports, reading, metrics and rendering, wall and CPU (of the child) — beside the
in-process `meta_evaluate` figure on the same files, and checks that both give the same metrics.

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
import json
import os
import resource
import subprocess
import sys
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
    parser.add_argument("--cli", action="store_true", help="time the whole `pollux meta-eval` command in a "
                        "subprocess (Parquet experts, JSONL scores joined --on id) beside the in-process run")
    args = parser.parse_args()
    if args.cli:
        cli_bench(args)
        return

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


def _write_inputs(tmp: Path, n_rows: int, per_answer: int) -> tuple[Path, Path]:
    """The CLI's inputs: POLLUX-like Parquet (further columns meta-eval does not read, an `id`)
    and a JSONL of the judge's scores keyed by `id`, one line per row, as a user's script writes it."""
    raw, judge = synthetic(n_rows, per_answer=per_answer)
    for column in ("criteria_description", "rubrics_example", "task_subtype", "domain", "difficulty"):
        raw[column] = "Текст, который meta-eval не читает. " * 8
    raw.insert(0, "id", np.arange(len(raw)))
    experts, scores = tmp / "test-00000-of-00001.parquet", tmp / "judge.jsonl"
    raw.to_parquet(experts)
    with scores.open("w", encoding="utf-8") as fh:
        for i, s in enumerate(judge.tolist()):
            fh.write(json.dumps({"id": i, "head_score": round(s, 4), "text_score": None}) + "\n")
    return experts, scores


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _in_process(experts_path: Path, scores_path: Path, args: argparse.Namespace) -> tuple[dict, pd.DataFrame]:
    """The same meta-evaluation in this process, phase by phase; (the times, the metrics)."""
    from pollux.metaeval import meta_evaluate, read_score_jsonl

    times: dict[str, tuple[float, float]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetaEvalWarning)
        t, c = time.perf_counter(), time.process_time()
        experts = load_experts(experts_path, keep=("id",))
        times["load_experts"] = (time.perf_counter() - t, time.process_time() - c)
        t, c = time.perf_counter(), time.process_time()
        scores = read_score_jsonl(scores_path, on=("id",), experts=experts)
        times["read_score_jsonl"] = (time.perf_counter() - t, time.process_time() - c)
        t, c = time.perf_counter(), time.process_time()
        result = meta_evaluate(experts, [scores], split=args.split, n_bootstrap=args.bootstrap,
                               by_group=args.groups)
        times["meta_evaluate"] = (time.perf_counter() - t, time.process_time() - c)
    _check_with_scipy(experts.frame, scores, result.metrics)
    return times, result.metrics


def _check_with_scipy(frame: pd.DataFrame, scores: pd.DataFrame, metrics: pd.DataFrame) -> None:
    """Each LLM's Spearman and MAE recomputed with scipy / numpy on the joined rows (judge scores
    outside the rubric's scale dropped, as `--out-of-scale drop`); prints the largest difference."""
    from scipy.stats import spearmanr

    joined = frame.merge(scores[["key", "score"]], on="key")
    keep = joined["expert"].notna() & joined["score"].between(joined["scale_min"], joined["scale_max"])
    joined = joined[keep]
    ours = metrics[(metrics["group"] == "all")].set_index(["model", "metric"])["value"]
    worst = 0.0
    for model, rows in joined.groupby("model_id"):
        worst = max(worst, abs(spearmanr(rows["expert"], rows["score"]).statistic - ours[(model, "spearman")]),
                    abs((rows["expert"] - rows["score"]).abs().mean() - ours[(model, "mae")]))
    print(f"metrics vs scipy/numpy (per-LLM Spearman, MAE): largest difference {worst:.2e}")


def cli_bench(args: argparse.Namespace) -> None:
    """Time `pollux meta-eval EXPERTS.parquet --scores SCORES.jsonl --on id --split SPLIT` as a user
    runs it, then the same in-process, and check both give the same metrics."""
    with tempfile.TemporaryDirectory() as tmp:
        experts, scores = _write_inputs(Path(tmp), args.rows, args.per_answer)
        command = [sys.executable, "-m", "pollux.cli", "meta-eval", str(experts), "--scores", str(scores),
                   "--on", "id", "--split", args.split, "--bootstrap", str(args.bootstrap), "--format", "json",
                   *([] if args.groups else ["--no-groups"])]
        load0 = os.getloadavg()
        cpu0, t0 = _child_cpu(), time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        wall, cpu = time.perf_counter() - t0, _child_cpu() - cpu0
        load1 = os.getloadavg()
        if done.returncode != 0:
            sys.exit(f"the command failed ({done.returncode}): {done.stderr[-2000:]}")
        times, metrics = _in_process(experts, scores, args)
    print(f"rows: {args.rows:,}  criterion rows per answer: {args.per_answer}  resamples: {args.bootstrap:,}  "
          f"split: {args.split}  groups: {args.groups}")
    print(f"command `pollux meta-eval … --on id --split {args.split}`: {wall:.2f} s wall, {cpu:.2f} s CPU "
          f"(the child process)")
    for phase, (w, c) in times.items():
        print(f"  in-process {phase:<17} {w:.2f} s wall, {c:.2f} s CPU")
    total = sum(w for w, _ in times.values()), sum(c for _, c in times.values())
    print(f"  in-process total            {total[0]:.2f} s wall, {total[1]:.2f} s CPU")
    print(f"load average (1, 5, 15 min) before: {load0[0]:.1f} {load0[1]:.1f} {load0[2]:.1f}; after the command: "
          f"{load1[0]:.1f} {load1[1]:.1f} {load1[2]:.1f}; CPUs: {os.cpu_count()}")
    cli = json.loads(done.stdout)
    print(f"the command's JSON: {len(json.dumps(cli)):,} characters; in-process metrics rows: {len(metrics):,}")


if __name__ == "__main__":
    main()
