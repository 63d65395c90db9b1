"""Benchmark of the synth filter stage's text logic (`pollux.synth.filter`).

Prints (1) the language filter's keep/drop accuracy at the default 5% threshold on the labelled set
tests/data/synth/language_labelled.jsonl, overall and per kind, and (2) the time
`filter_instructions` takes on a synthetic set of N instructions (default 5,000) made of random
sentences of the labelled set (see `synthetic`), with the extrapolation to the recipe's 26,000
instructions. lingua uses every core; the machine's load average is printed beside the time.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_filter.py [--rows 5000] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from collections import defaultdict
from pathlib import Path

from razdel import sentenize

from pollux.synth.filter import FilterSettings, filter_instructions, foreign_shares

LABELLED = Path(__file__).resolve().parents[1] / "tests" / "data" / "synth" / "language_labelled.jsonl"


def accuracy(rows: list[dict], threshold: float) -> None:
    shares = foreign_shares([r["text"] for r in rows])
    per_kind: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for row, share in zip(rows, shares, strict=True):
        per_kind[row["kind"]][0] += (share <= threshold) == row["keep"]
        per_kind[row["kind"]][1] += 1
    right = sum(ok for ok, _ in per_kind.values())
    print(f"language filter at {threshold:.0%}: {right}/{len(rows)} right = {right / len(rows):.3f}")
    for kind, (ok, total) in per_kind.items():
        print(f"  {kind:12s} {ok:3d}/{total:3d} = {ok / total:.3f}")


def synthetic(rows: list[dict], n: int, seed: int) -> list[dict]:
    """N instructions, like a generator's output: most are 2–4 random sentences of the labelled
    set's Russian texts; ~10% are a labelled non-Russian text with such a sentence added; ~8% are
    a copy of an earlier one with one word dropped (near duplicates)."""
    rng = random.Random(seed)
    sentences = [s.text for r in rows if r["keep"] for s in sentenize(r["text"]) if len(s.text.split()) >= 3]
    foreign = [r["text"] for r in rows if not r["keep"]]
    out: list[dict] = []
    for i in range(n):
        draw = rng.random()
        if out and draw < 0.08:
            words = rng.choice(out)["instruction"].split()
            del words[rng.randrange(len(words))]
            text = " ".join(words)
        elif draw < 0.18:
            text = f"{rng.choice(foreign)} {rng.choice(sentences)}"
        else:
            text = " ".join(rng.sample(sentences, rng.randint(2, 4)))
        out.append({"key": f"{rng.getrandbits(64):016x}", "instruction": text, "task_leaf": f"leaf{i % 50}"})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = [json.loads(line) for line in LABELLED.read_text(encoding="utf-8").splitlines()]
    settings = FilterSettings()

    start = time.perf_counter()
    foreign_shares(["Модели языка загружаются при первом вызове."])
    print(f"lingua models loaded in {time.perf_counter() - start:.1f} s (once per process)")
    accuracy(rows, settings.max_foreign_share)

    data = synthetic(rows, args.rows, args.seed)
    load = os.getloadavg()[0]
    start, cpu_start = time.perf_counter(), time.process_time()
    kept, rejected = filter_instructions(data, settings)
    took, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    reasons: dict[str, int] = defaultdict(int)
    for row in rejected:
        reasons[row["reason"]] += 1
    print(f"filter_instructions on {len(data)} synthetic instructions: {took:.1f} s "
          f"({len(data) / took:.0f} rows/s; {cpu:.1f} CPU-seconds; {os.cpu_count()} CPUs, load average "
          f"{load:.1f}); kept {len(kept)}, rejected {dict(reasons)}")
    scale = 26000 / len(data)
    print(f"extrapolated to 26,000 instructions: {scale * took:.0f} s wall here, {scale * cpu:.0f} CPU-seconds "
          "(the wall time on an otherwise idle machine lies between CPU-seconds / cores and CPU-seconds)")


if __name__ == "__main__":
    main()
