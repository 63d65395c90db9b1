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
the same verdicts page over HTTP when `pollux.ui.app.create_ui_app` exists (a real uvicorn
server on 127.0.0.1, httpx), and opening + comparing against a 160k-row expert file (the second
judge's scores written in the POLLUX expert format).

"cold" means the Explorer's own caches (run counts, facets, result counts, leaderboards,
comparisons) are cleared before each call; SQLite's page cache and the OS's file cache stay warm,
as in a server that has been answering for a while. The full-text index file is deleted at the
start, so its first build is measured every time.

    python bench/bench_ui.py                 # cached DBs under $TMPDIR/pollux-bench-ui
    python bench/bench_ui.py --rebuild --repeats 30
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
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


FILTERS: dict[str, dict[str, Any]] = {
    "no filter": {},
    "model + criterion + score range": {"model": "gpt-4o", "criterion": "Полезность", "score_min": 1, "score_max": 2},
    "criterion": {"criterion": "Общий критерий 2"},
    "model + score range": {"model": "o1", "score_min": 1.5},
    "task type + criterion group": {"task_type": "Тип задачи 07", "group": "task_specific"},
    "invalid only": {"only": "invalid"},
}


def bench_queries(ex: Any, repeats: int) -> list[tuple[str, float, float, str]]:
    """(what, p50 ms, p95 ms, note) of every data-layer call; "cold" = the Explorer's caches cleared first."""
    from pollux.ui.queries import VerdictFilter

    out: list[tuple[str, float, float, str]] = []

    def cold(fn: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            ex.clear_caches()
            return fn()
        return run

    def add(what: str, fn: Callable[[], Any], n: int = repeats, note: Callable[[Any], str] = lambda r: "") -> Any:
        p50, p95, result = timings(fn, n)
        out.append((what, p50, p95, note(result)))
        return result

    add("runs() (cold)", cold(ex.runs), note=lambda r: f"{len(r)} runs, {r[0]['judged']:,} judged in 0-1")
    add("run(ref) (cached)", lambda: ex.run("0-1"))
    add("facets (cold)", cold(lambda: ex.facets("0-1")), note=lambda r: f"{len(r['criteria'])} criteria")
    add("leaderboard (cold)", cold(lambda: ex.leaderboard("0-1")), n=3, note=lambda r: f"{len(r['rows'])} models")
    add("leaderboard (cached)", lambda: ex.leaderboard("0-1"))
    for name, params in FILTERS.items():
        f = VerdictFilter(**params)
        pages = ex.verdicts("0-1", f)["pages"]
        for page in sorted({1, min(50, pages)}):
            add(f"verdicts: {name}, page {page} (cold)", cold(lambda f=f, page=page: ex.verdicts("0-1", f, page=page)),
                note=lambda r: f"{r['total']:,} rows, {len(r['rows'])} on the page")
        add(f"verdicts: {name}, page {min(50, pages)} (count cached)",
            lambda f=f, page=min(50, pages): ex.verdicts("0-1", f, page=page))
    for sort in ("-score", "model", "criterion"):
        add(f"verdicts: no filter, sorted by {sort}, page 50 (cold)",
            cold(lambda sort=sort: ex.verdicts("0-1", sort=sort, page=50)))
    return out


def bench_search(ex: Any, repeats: int, words: list[str]) -> list[tuple[str, float, float, str]]:
    from pollux.ui.queries import VerdictFilter

    out = []
    started = time.perf_counter()
    first = ex.verdicts("0-1", VerdictFilter(q=words[0]))
    out.append(("full-text: first search (builds the FTS index)", (time.perf_counter() - started) * 1000, math.nan,
                f"{first['total']:,} rows"))
    for q, extra in ((words[1], {}), (f"{words[2]} {words[3]}", {}), (words[1], {"model": "gpt-4o"}),
                     (words[4][:4], {"criterion": "Полезность"})):
        f = VerdictFilter(q=q, **extra)
        p50, p95, r = timings(lambda f=f: (ex.clear_caches(), ex.verdicts("0-1", f))[1], repeats)
        out.append((f"full-text: q={q!r} {extra or ''} page 1 (cold)", p50, p95, f"{r['total']:,} rows"))
    return out


def bench_compare(ex: Any, repeats: int) -> list[tuple[str, float, float, str]]:
    from pollux.ui.queries import VerdictFilter

    out = []
    for name, f in (("all", VerdictFilter()), ("criterion", VerdictFilter(criterion="Полезность")),
                    ("model + criterion", VerdictFilter(model="o1", criterion="Полезность"))):
        p50, p95, r = timings(lambda f=f: (ex.clear_caches(), ex.compare("0-1", "1-1", f))[1], 3)
        out.append((f"compare 0-1 vs 1-1: {name} (cold)", p50, p95,
                    f"n={r['stats']['n']:,}, Spearman {r['stats']['spearman']:.3f}"))
        p50, p95, r = timings(lambda f=f: ex.compare("0-1", "1-1", f, page=7), repeats)
        out.append((f"compare 0-1 vs 1-1: {name}, page 7 (cached)", p50, p95, ""))
    pk = ex.verdicts("0-1", VerdictFilter(model="o1"), page=20)["rows"][0]["record_pk"]
    p50, p95, r = timings(lambda: ex.answer("0-1", pk), repeats)
    out.append(("answer (one answer, every criterion)", p50, p95, f"{len(r['criteria'])} criteria"))
    return out


def expert_file(db: Path, path: Path) -> Path:
    """The second judge's scores as a POLLUX expert file (parquet, two "experts" agreeing) — a
    161k-row expert pseudo-run for Compare."""
    import pandas as pd

    from pollux.store import read_verdicts

    if path.exists():
        return path
    df = read_verdicts(db, run=1)
    df = df[df["score"].notna()]
    score = df["score"].clip(upper=df["scale_max"]).round()
    pd.DataFrame({
        "instruction": df["instruction"], "reference_answer": df["reference_answer"], "answer": df["answer"],
        "model_id": df["model_id"], "task_type": df["task_type"], "criteria_name": df["criteria_name"],
        "rubrics": df["rubrics"], "criteria_score": score,
        "annotations": [[{"comment": "", "score": float(x)}] * 2 for x in score],
    }).to_parquet(path)
    return path


def bench_experts(dbs: list[Path], experts: Path, cache: Path) -> list[tuple[str, float, float, str]]:
    from pollux.ui.queries import Explorer

    started = time.perf_counter()
    ex = Explorer(dbs[:1], experts=[experts], cache_dir=cache)
    out = [("Explorer(1 database + a 160k-row expert file)", (time.perf_counter() - started) * 1000, math.nan, "")]
    try:
        p50, p95, r = timings(lambda: (ex.clear_caches(), ex.compare("0-1", "1-1"))[1], 3)
        out.append(("compare 0-1 vs the expert file (cold)", p50, p95,
                    f"n={r['stats']['n']:,}, Spearman {r['stats']['spearman']:.3f}"))
    finally:
        ex.close()
    return out


def bench_http(ex: Any, repeats: int) -> list[tuple[str, float, float, str]]:
    """The verdicts page over HTTP: E's app, a real uvicorn server on 127.0.0.1, httpx."""
    try:
        from pollux.ui.app import create_ui_app
    except ImportError as e:
        return [("HTTP verdicts page", math.nan, math.nan, f"skipped: no pollux.ui.app ({e})")]
    import socket
    import threading
    from urllib.parse import urlencode

    import httpx
    import uvicorn

    from pollux.ui.queries import VerdictFilter

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_ui_app(ex), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    out = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            for name in ("model + criterion + score range", "criterion", "model + score range", "no filter"):
                params = {k: str(v) for k, v in FILTERS[name].items()}
                last = ex.verdicts("0-1", VerdictFilter(**FILTERS[name]))["pages"]
                for page in sorted({1, min(50, last)}):
                    url = f"/ui/runs/0-1/verdicts?{urlencode({**params, 'page': page})}"

                    def get(url: str = url) -> httpx.Response:
                        ex.clear_caches()
                        response = client.get(url)
                        response.raise_for_status()
                        return response
                    p50, p95, r = timings(get, repeats)
                    out.append((f"HTTP GET verdicts page: {name}, page {page} (cold)", p50, p95,
                                f"{r.status_code}, {len(r.content) // 1024} KiB"))
    finally:
        server.should_exit = True
        thread.join()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "pollux-bench-ui")
    parser.add_argument("--rebuild", action="store_true", help="build the databases again")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-experts", action="store_true", help="skip the expert-file pseudo-run")
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
        RunStore(path).close()  # a cached database gets the store's current indexes, as evaluate would add them
        dbs.append(path)
    from pollux.ui.queries import Explorer

    cache = args.dir / "fts-cache"
    shutil.rmtree(cache, ignore_errors=True)  # so that the index's first build is measured every time
    started = time.perf_counter()
    ex = Explorer(dbs, cache_dir=cache)
    results = [("Explorer(2 databases)", (time.perf_counter() - started) * 1000, math.nan, "")]
    words = _vocabulary(random.Random(0))
    try:
        results += bench_queries(ex, args.repeats)
        results += bench_search(ex, args.repeats, words)
        results += bench_compare(ex, args.repeats)
        results += bench_http(ex, args.repeats)
    finally:
        ex.close()
    if not args.no_experts:
        results += bench_experts(dbs, expert_file(dbs[1], args.dir / "experts-b.parquet"), cache)
    print(f"{N_VERDICTS:,} verdicts per database; {args.repeats} repeats; times in ms")
    print(f"{'what':72s} {'p50':>8s} {'p95':>8s}  note")
    for what, p50, p95, note in results:
        print(f"{what:72s} {p50:8.1f} {p95:8.1f}  {note}")
    print(json.dumps({"verdicts": N_VERDICTS, "repeats": args.repeats,
                      "ms": {what: {"p50": round(p50, 1), "p95": None if math.isnan(p95) else round(p95, 1)}
                             for what, p50, p95, _ in results}}, ensure_ascii=False))


if __name__ == "__main__":
    main()
