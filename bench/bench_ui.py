"""Benchmark: the web UI's data layer (and, when it exists, its verdicts page) on a POLLUX-sized run.

Builds — once, cached in a temp folder — a run database with **161,076 verdicts** shaped like
the POLLUX test set: 11,505 answers of 7 models to 1,644 instructions over 35 task types (7 task
groups), 14 criteria per answer (6 answers have a 15th) in 5 criterion groups with 0–1 and 0–2
scales, rationales of a few hundred characters, ~1 % invalid scores and ~0.3 % failed judgements.
A second database holds a second judge's verdicts on the same content (for Compare). Rows are
bulk-inserted into a real `pollux.store.RunStore` (its schema and indexes), item keys are the real
`JudgeItem.key` of each judgement.

Then prints the time of `Explorer.runs()`, `facets`, `leaderboard` (cold and cached), `verdicts`
with typical filters (p50 / p95 over repeats, page 1 and page 50, total count included), full-text
search (the sidecar index's first build, then queries), `answer`, `compare` (cold and cached),
and the same verdicts page over HTTP when `pollux.ui.app.create_ui_app` exists (a real uvicorn
server on 127.0.0.1, httpx).

    python bench/bench_ui.py                 # cached DBs under $TMPDIR/pollux-bench-ui
    python bench/bench_ui.py --rebuild --repeats 30
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pollux.records import JudgeItem
from pollux.store import RunStore

N_VERDICTS = 161_076
N_MODELS = 7
N_ANSWERS = 11_505
CRITERIA_PER_ANSWER = 14
MODELS = ("o1", "gpt-4o", "claude-3.5-sonnet", "llama-3.1-405b", "gigachat-max", "yandexgpt-4-pro", "t-pro-it-1.0")
R1 = "0: нарушения нет.\n\n1: нарушение есть."
R2 = "0: критерий не выполнен.\n\n1: выполнен частично.\n\n2: выполнен полностью."
# (name, criterion group, rubric): 2 critical gates, then 0–2 criteria; the last is the 15th of a few answers.
CRITERIA = (
    [("Нарушение формата", "critical", R1), ("Заглушка цензора", "critical", R1)]
    + [(f"Общий критерий {i}", "general", R2) for i in range(1, 5)]
    + [(f"Доменный критерий {i}", "domain", R2) for i in range(1, 3)]
    + [(f"Критерий задачи {i}", "task_specific", R2) for i in range(1, 5)]
    + [("Полезность", "subjective", R2), ("Интерес", "subjective", R2), ("Дополнительный критерий", "general", R2)]
)


def _vocabulary(rng: random.Random, size: int = 4000) -> list[str]:
    syllables = ["ра", "то", "ми", "ка", "не", "ло", "вы", "сти", "пре", "на", "го", "ду", "жа", "ще", "зо", "бе"]
    return ["".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))) for _ in range(size)]


def _text(rng: random.Random, words: list[str], chars: int) -> str:
    out: list[str] = []
    length = 0
    while length < chars:
        word = rng.choice(words)
        out.append(word)
        length += len(word) + 1
    return " ".join(out).capitalize() + "."


def build_db(path: Path, *, judge: str, seed: int) -> Path:
    """A POLLUX-shaped run database with exactly N_VERDICTS verdicts (see the module docstring)."""
    rng = random.Random(seed)
    text_rng = random.Random(0)  # the same texts in every database, so runs of two judges meet
    words = _vocabulary(text_rng)
    instructions = [_text(text_rng, words, text_rng.randint(150, 600)) for _ in range(N_ANSWERS // N_MODELS + 1)]
    task_types = [f"Тип задачи {i:02d}" for i in range(35)]
    records, jobs, verdicts = [], [], []
    now = time.time()
    with RunStore(path) as store:
        run, _ = store.open_run(judge, {"judge": judge, "bench": True})
        for a in range(N_ANSWERS):
            q, model = divmod(a, N_MODELS)
            task = task_types[q % 35]
            answer = _text(text_rng, words, text_rng.randint(300, 1500))
            records.append((a + 1, "pollux_test.jsonl", f"q{q}", MODELS[model], a + 1, f"ak{a}", instructions[q],
                            answer, "", task, None, None, f"Группа {q % 35 // 5}", "{}"))
            quality = 0.9 - 0.08 * model
            for c, (name, group, rubric) in enumerate(CRITERIA[: CRITERIA_PER_ANSWER + (a < 6)]):
                key = JudgeItem(instructions[q], answer, name, rubric).key
                jobs.append((run.run_id, a + 1, name, f"c{c}", group, rubric, key, c))
                verdicts.append(_verdict(rng, run.run_id, key, judge, name, group, quality, words, now + len(verdicts)))
        with store.transaction():
            store.conn.executemany("INSERT INTO records (record_pk, source, record_id, model_id, line, answer_key, "
                                   "instruction, answer, reference_answer, task_type, task_subtype, task_subsubtype, "
                                   "task_group, extra_json) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", records)
            store.conn.executemany("INSERT INTO jobs (run_id, record_pk, criteria_name, criterion_id, criterion_group, "
                                   "rubrics, item_key, position) VALUES (?,?,?,?,?,?,?,?)", jobs)
            store.conn.executemany("INSERT INTO verdicts (run_id, item_key, judge, criteria_name, score, head_score, "
                                   "scale_min, scale_max, valid, invalid_reason, rationale, raw_text, prompt_tokens, "
                                   "completion_tokens, finish_reason, time_s, error, created_at) "
                                   "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", verdicts)
    assert len(verdicts) == N_VERDICTS, len(verdicts)
    return path


def _verdict(rng: random.Random, run_id: int, key: str, judge: str, name: str, group: str, quality: float,
             words: list[str], created: float) -> tuple[Any, ...]:
    top = 1.0 if group == "critical" else 2.0
    if rng.random() < 0.003:
        return (run_id, key, judge, name, None, None, 0.0, top, 0, None, "", "", 0, 0, None, 0.0,
                "CUDA out of memory", created)
    if group == "critical":
        score = float(rng.random() < 0.04)
    else:
        score = min(top, max(0.0, round(rng.gauss(quality * top, 0.6) * 4) / 4))
    rationale = _text(rng, words, rng.randint(200, 500))
    valid, reason = 1, None
    if rng.random() < 0.01:
        score, valid, reason = top + 0.75, 0, f"score {top + 0.75:g} outside the rubric's scale [0, {top:g}]"
    raw = f"[FEEDBACK] {rationale} [RESULT] {score:g} [END]"
    return (run_id, key, judge, name, score, score, 0.0, top, valid, reason, rationale, raw, 900, 120, "stop",
            0.5, None, created)


def timings(fn: Callable[[], Any], repeats: int) -> tuple[float, float, Any]:
    """(p50 ms, p95 ms, last result) over `repeats` calls."""
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, round(0.95 * (len(times) - 1)))], result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "pollux-bench-ui")
    parser.add_argument("--rebuild", action="store_true", help="build the databases again")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    dbs = []
    for name, judge, seed in (("judge-a.db", "judge-a", 1), ("judge-b.db", "judge-b", 2)):
        path = args.dir / name
        if args.rebuild or not path.exists():
            for stale in args.dir.glob(name + "*"):
                stale.unlink()
            started = time.perf_counter()
            build_db(path, judge=judge, seed=seed)
            print(f"built {path} ({N_VERDICTS:,} verdicts) in {time.perf_counter() - started:.1f} s")
        dbs.append(path)
    print(json.dumps({"databases": [str(p) for p in dbs]}))


if __name__ == "__main__":
    main()
