"""Benchmark: what expected scores (`expected_score=True`) cost the in-process engine.

The judge is the tests' tiny generative Qwen2 (hidden 64, 2 layers, Qwen's 151,936-token vocabulary)
overfitted to write `[FEEDBACK] … [RESULT] n [END]` (`pollux.fixtures.build_scoring_judge`), so
every row reaches a score position. The same items are judged greedily with the option off and
on, alternately, `--repeats` times each; the script prints the best wall-clock and CPU seconds of
each, the ratio, and the extra time per generated token (what a real judge pays: on a 7B model a
decode step takes tens of milliseconds, so a fixed per-token overhead matters far less there).

    python bench/expected_score_bench.py              # ≈ 1 minute on 2 cores
    python bench/expected_score_bench.py --items 64 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=32, help="items per call (the two scoring items, repeated)")
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from pollux.checkpoint import load_judge
    from pollux.engine import SamplingParams
    from pollux.engine.hf import TransformersEngine
    from pollux.fixtures import build_scoring_judge, build_tiny_judge, scoring_items
    from pollux.records import JudgeItem

    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        source = build_tiny_judge(Path(tmp) / "random", regression=False, seed=1)
        path = build_scoring_judge(source, Path(tmp) / "scoring")
        loaded = load_judge(path, dtype="float32", device="cpu")
    base = scoring_items()
    # distinct items (a meta field each) so that every row is judged, none deduplicated
    items = [JudgeItem(instruction=it.instruction, answer=it.answer, criteria_name=it.criteria_name,
                       rubrics=it.rubrics, meta={"n": n}) for n in range(a.items // len(base)) for it in base]
    engines = {on: TransformersEngine(loaded.model, loaded.tokenizer, kind=loaded.kind, name="scoring",
                                      sampling=SamplingParams(max_new_tokens=a.new_tokens), expected_score=on)
               for on in (False, True)}
    best: dict[bool, tuple[float, float]] = {}
    tokens: dict[bool, int] = {}
    for _ in range(a.repeats):
        for on, engine in engines.items():
            wall, cpu = time.perf_counter(), time.process_time()
            verdicts = engine.judge_many(items)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            old = best.get(on, (float("inf"), float("inf")))
            best[on] = (min(old[0], wall), min(old[1], cpu))
            tokens[on] = sum(v.completion_tokens for v in verdicts)
            if on:
                assert all(v.expected_score is not None for v in verdicts), "every row should have an expected score"
    assert tokens[True] == tokens[False]
    (off_wall, off_cpu), (on_wall, on_cpu) = best[False], best[True]
    print(f"{len(items)} items, {tokens[True]} generated tokens, best of {a.repeats}, {a.threads} thread(s)")
    print(f"expected_score off: {off_wall:.3f} s wall, {off_cpu:.3f} s CPU")
    print(f"expected_score on:  {on_wall:.3f} s wall, {on_cpu:.3f} s CPU")
    print(f"ratio on/off: {on_wall / off_wall:.3f} wall, {on_cpu / off_cpu:.3f} CPU")
    print(f"extra per generated token: {(on_wall - off_wall) / tokens[True] * 1e6:.0f} µs wall, "
          f"{(on_cpu - off_cpu) / tokens[True] * 1e6:.0f} µs CPU")


if __name__ == "__main__":
    main()
