"""Side-by-side judging (`pollux compare`): which of two answer files answers better, per criterion.

Two answer files with the same record ids (A and B, e.g. two models' answers to the same
instructions) are paired by id; each pair is judged once per criterion of the record (its own
`criteria`, `criteria_name` + `rubrics`, its task type's criteria, or a criteria file — the same
rules as `pollux evaluate`) and **in both orders**: A as answer 1 and B as answer 2 (`ab`), then
swapped (`ba`). The prompt is Pollux-4B-Judge's side-by-side prompt (`pollux.prompts`,
`--template pollux-4b-sbs`): the criterion is folded into the comparison scale −1 (answer 1
better) / 0 (tie) / 1 (answer 2 better), there is no reference, and the reply is a bare integer.

Reading the two orders (scores as "how much better B is", so `ab` is `s` and `ba` is `−s`):

* a pair is *position-consistent* when both orders give the same preference; otherwise it *flips*.
  The flip rate is the share of pairs (both orders scored) that flip: a judge that always says
  "1" (answer 2 better, whatever it is) flips on every pair — 100%;
* the pair's outcome is the sign of the two preferences' sum: A wins (−), tie (0), B wins (+).
  A flip between "A better" and "B better" is a tie; a flip between a preference and a tie keeps
  the preference.

Win / tie / loss rates (A's) and the flip rate get 95% bootstrap intervals that resample records
(the pairs of one record share its instruction and answers, as `pollux.metaeval.bootstrap` does
for answers), overall, per criterion and per task type.

Only generative judges compare: a regression head (`-r`) scores one answer on the rubric's scale
and has no output for "which of two is better" — refused with that reason.

Resumable: every judged (pair, order) is one row of this module's own SQLite table
(`pairwise_judgements`, in the `--db` file, WAL journal, committed as each verdict arrives), keyed
by a hash of what decides the verdict — instruction, answer 1, answer 2, criterion, scale and the
judge's configuration (`describe()`). A rerun after a crash (kill -9 included) judges only the
missing rows; a changed judge or template gets new keys, so it never mixes with old verdicts.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pollux.inputs import InputProblem, InputRow, check_row, read_rows, record_id
from pollux.records import JudgeItem
from pollux.verdicts import Verdict

ORDERS = ("ab", "ba")
OUTCOMES = ("win", "tie", "loss")  # A's outcome against B


class CompareError(ValueError):
    """The comparison cannot run (unreadable input, a judge with no pairwise meaning)."""


def comparison_scale(criterion: str) -> str:
    """The side-by-side scale with the criterion folded in (the 4B prompt has no criterion section).
    Only the criterion's name, not its rubric's level lines: those would read as more scale levels."""
    return (f"-1: ответ 1 лучше ответа 2 по критерию «{criterion}»\n"
            f"0: ответы равноценны по критерию «{criterion}»\n"
            f"1: ответ 2 лучше ответа 1 по критерию «{criterion}»")


@dataclass(frozen=True)
class Pair:
    """One record × criterion: the instruction, A's and B's answers."""

    record_id: str
    task: str
    criterion: str
    instruction: str
    answer_a: str
    answer_b: str
    side_a: str = "A"  # which file (or model) A and B are: the report and the UI group by them
    side_b: str = "B"

    def item(self, order: str) -> JudgeItem:
        """The judge's item for one order; answer 2 rides in `reference_answer` (`{answer_2}`)."""
        first, second = (self.answer_a, self.answer_b) if order == "ab" else (self.answer_b, self.answer_a)
        return JudgeItem(instruction=self.instruction, answer=first, reference_answer=second,
                         criteria_name=self.criterion, rubrics=comparison_scale(self.criterion),
                         meta={"id": self.record_id, "order": order, "task": self.task})


@dataclass
class PairInputs:
    pairs: list[Pair] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def read_pairs(path_a: str | Path, path_b: str | Path, *, catalog: Any = None,
               user_criteria: list[Any] | None = None) -> PairInputs:
    """The pairs of two answer files joined by record id; each unusable record is a problem naming
    its file and line (a missing partner, a duplicated id, different instructions, no criteria)."""
    from pollux.taxonomy import TaxonomyError, load_catalog, resolve_criteria

    catalog = catalog if catalog is not None else load_catalog()
    out = PairInputs()
    rows_a, rows_b = _rows_by_id(path_a, out.problems), _rows_by_id(path_b, out.problems)
    for rid, row_a in rows_a.items():
        row_b = rows_b.get(rid)
        if row_b is None:
            out.problems.append(f"{row_a.where}: record {rid!r} has no answer in {path_b}")
            continue
        if row_a.data["instruction"] != row_b.data["instruction"]:
            out.problems.append(f"{row_b.where}: record {rid!r}: its instruction differs from {row_a.where}'s")
            continue
        try:
            specs = resolve_criteria(row_a.data, catalog, user_criteria=user_criteria)
        except (TaxonomyError, ValueError, TypeError) as e:
            out.problems.append(f"{row_a.where}: {e}")
            continue
        task = str(row_a.data.get("task_type") or "—")
        out.pairs += dict.fromkeys(Pair(rid, task, spec.name, row_a.data["instruction"], row_a.data["answer"],
                                        row_b.data["answer"], str(path_a), str(path_b))
                                   for spec in specs)  # a criterion listed twice: once
    out.problems += [f"{row.where}: record {rid!r} has no answer in {path_a}" for rid, row in rows_b.items()
                     if rid not in rows_a]
    return out


def _rows_by_id(path: str | Path, problems: list[str]) -> dict[str, InputRow]:
    read = read_rows(path)
    problems += [str(p) for p in read.problems]
    rows: dict[str, InputRow] = {}
    for row in read.rows:
        bad = check_row(row)
        rid = record_id(row)
        if bad is None and rid in rows:
            bad = f"record id {rid!r} repeats {rows[rid].where}"
        if bad is not None:
            problems.append(str(InputProblem(row.source, row.line, bad)))
            continue
        rows[rid] = row
    return rows


# -- the store ---------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pairwise_judgements (
    key TEXT PRIMARY KEY,         -- judgement_key(): what decides the verdict
    record_id TEXT NOT NULL,
    task TEXT NOT NULL,
    criterion TEXT NOT NULL,
    pair_order TEXT NOT NULL,     -- 'ab': A is answer 1; 'ba': B is answer 1
    score REAL,                   -- the judge's number (-1, 0, 1), NULL when it gave none
    valid INTEGER NOT NULL,
    verdict TEXT NOT NULL,        -- the whole Verdict as JSON (raw text with its reasoning)
    judge_config TEXT NOT NULL,
    created_at REAL NOT NULL
)"""
# Added later (NULL in older stores): which files were compared and the texts, for `pollux report`
# and the UI's side-by-side page (a flipped pair is shown with its instruction and both answers).
_LATER_COLUMNS = ("side_a", "side_b", "instruction", "answer_a", "answer_b")


def judgement_key(item: JudgeItem, order: str, config_hash: str) -> str:
    """A content address: the same texts, order and judge give the same key in any run."""
    payload = json.dumps([item.instruction, item.answer, item.reference_answer, item.criteria_name, item.rubrics,
                          order, config_hash], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


class PairStore:
    """The side-by-side verdicts in SQLite (WAL: a killed writer loses nothing it committed)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.conn = sqlite3.connect(str(self.path), timeout=30)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute(_SCHEMA)
        have = {row[1] for row in self.conn.execute("PRAGMA table_info(pairwise_judgements)")}
        for column in _LATER_COLUMNS:
            if column not in have:
                self.conn.execute(f"ALTER TABLE pairwise_judgements ADD COLUMN {column} TEXT")
        self.conn.commit()

    def __enter__(self) -> PairStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.close()

    def known(self, keys: Iterable[str]) -> dict[str, tuple[float | None, bool]]:
        """(score, valid) of the keys already judged."""
        found: dict[str, tuple[float | None, bool]] = {}
        keys = list(keys)
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for key, score, valid in self.conn.execute(
                    f"SELECT key, score, valid FROM pairwise_judgements WHERE key IN ({marks})", chunk):
                found[key] = (score, bool(valid))
        return found

    def put(self, key: str, pair: Pair, order: str, verdict: Verdict, config: str) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO pairwise_judgements (key, record_id, task, criterion, pair_order, score, valid, "
            "verdict, judge_config, created_at, side_a, side_b, instruction, answer_a, answer_b) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (key, pair.record_id, pair.task, pair.criterion, order, verdict.text_score, int(verdict.valid),
             verdict.to_json(), config, time.time(), pair.side_a, pair.side_b, pair.instruction, pair.answer_a,
             pair.answer_b))
        self.conn.commit()


# -- judging -----------------------------------------------------------------------------------

def check_generative(judge: Any) -> None:
    """Refuse a regression judge: its head scores one answer; "which is better" is no output of it.
    And a pointwise template (`--template default`): it would show answer 2 as a reference answer."""
    if getattr(judge, "kind", None) == "regression":
        raise CompareError(f"{judge.name} is a regression judge (-r): its head scores one answer on the rubric's "
                           "scale and has no pairwise meaning; compare with a generative judge")
    template = judge.describe().get("template") or {}
    if "{answer_2}" not in str(template.get("text", "{answer_2}")):
        raise CompareError("the prompt template has no {answer_2} field: it is not a side-by-side prompt "
                           "(use --template pollux-4b-sbs, the default here, or a template file with {answer_2})")


def judge_missing(judge: Any, pairs: Sequence[Pair], store: PairStore, *, chunk_size: int = 64,
                  log: Callable[[str], None] = lambda m: None) -> dict[str, int]:
    """Judge every (pair, order) not in `store` yet, storing each verdict as it arrives. A verdict
    that is an error (the item could not be judged) is not stored: the next run retries it. A judge
    that returns a regression head's score is refused (a `pollux serve -r` behind `openai:`)."""
    config = json.dumps(judge.describe(), sort_keys=True, ensure_ascii=False)
    digest = config_hash(judge.describe())
    todo = [(p, o, p.item(o)) for p in pairs for o in ORDERS]
    keys = [judgement_key(item, o, digest) for _, o, item in todo]
    done = store.known(keys)
    missing = [(k, t) for k, t in zip(keys, todo, strict=True) if k not in done]
    log(f"{len(todo)} judgements: {len(done)} already in {store.path}, {len(missing)} to judge")
    counts = {"judged": 0, "errors": 0, "reused": len(done)}
    for start in range(0, len(missing), chunk_size):
        chunk = missing[start:start + chunk_size]

        def on_verdict(i: int, verdict: Verdict, chunk: list[Any] = chunk) -> None:
            key, (pair, order, _) = chunk[i]
            if verdict.head_score is not None:
                raise CompareError(f"{judge.name} answered with a regression head's score: no pairwise meaning")
            if verdict.error is not None:
                counts["errors"] += 1
                return
            store.put(key, pair, order, verdict, config)
            counts["judged"] += 1

        judge.judge_many([item for _, (_, _, item) in chunk], on_verdict=on_verdict)
    return counts


# -- statistics --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    """One pair's reading of its two orders (scores as "B better" preferences)."""

    record_id: str
    task: str
    criterion: str
    pref_ab: float
    pref_ba: float

    @property
    def flipped(self) -> bool:
        return self.pref_ab != self.pref_ba

    @property
    def result(self) -> str:
        total = self.pref_ab + self.pref_ba
        return "win" if total < 0 else "loss" if total > 0 else "tie"


def outcomes(pairs: Sequence[Pair], scores: dict[tuple[Pair, str], float | None]) -> tuple[list[Outcome], int]:
    """The pairs whose both orders have a valid score, and how many lack one."""
    out, incomplete = [], 0
    for pair in pairs:
        ab, ba = scores.get((pair, "ab")), scores.get((pair, "ba"))
        if ab is None or ba is None:
            incomplete += 1
            continue
        out.append(Outcome(pair.record_id, pair.task, pair.criterion, float(np.sign(ab)), -float(np.sign(ba))))
    return out, incomplete


def summarise(rows: Sequence[Outcome], *, n_resamples: int = 1000, seed: int = 0,
              confidence: float = 0.95) -> dict[str, Any]:
    """Win / tie / loss (A's) and flip rates with bootstrap intervals over records."""
    from pollux.metaeval.bootstrap import percentile_ci, resample_counts

    summary: dict[str, Any] = {"pairs": len(rows)}
    if not rows:
        return summary | {name: {"rate": None, "ci": [None, None]} for name in (*OUTCOMES, "flip")}
    records = sorted({r.record_id for r in rows})
    index = {rid: i for i, rid in enumerate(records)}
    where = np.array([index[r.record_id] for r in rows])
    n = np.bincount(where, minlength=len(records)).astype(float)
    counts = resample_counts(len(records), n_resamples, np.random.default_rng(seed))
    drawn = counts @ n
    for name in (*OUTCOMES, "flip"):
        hit = np.array([(r.flipped if name == "flip" else r.result == name) for r in rows], dtype=float)
        per_record = np.bincount(where, weights=hit, minlength=len(records))
        with np.errstate(invalid="ignore", divide="ignore"):
            samples = (counts @ per_record) / drawn
        lo, hi = percentile_ci(samples, confidence)
        summary[name] = {"rate": float(hit.mean()), "count": int(hit.sum()), "ci": [lo, hi]}
    return summary


def tables(rows: Sequence[Outcome], **bootstrap: Any) -> dict[str, Any]:
    """The overall summary and one per criterion and per task type."""
    by_criterion = sorted({r.criterion for r in rows})
    by_task = sorted({r.task for r in rows})
    return {
        "overall": summarise(rows, **bootstrap),
        "per_criterion": {c: summarise([r for r in rows if r.criterion == c], **bootstrap) for c in by_criterion},
        "per_task": {t: summarise([r for r in rows if r.task == t], **bootstrap) for t in by_task},
    }


def stored_scores(judge: Any, pairs: Sequence[Pair], store: PairStore) -> dict[tuple[Pair, str], float | None]:
    """The stored valid scores of this judge's (pair, order)s; None where invalid or missing."""
    digest = config_hash(judge.describe())
    keyed = {judgement_key(p.item(o), o, digest): (p, o) for p in pairs for o in ORDERS}
    known = store.known(keyed)
    return {keyed[k]: (score if valid else None) for k, (score, valid) in known.items()}


def compare(judge: Any, pairs: Sequence[Pair], db: str | Path, *, chunk_size: int = 64, n_resamples: int = 1000,
            seed: int = 0, log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Judge what is missing, then the tables (see the module doc). The judge must be generative and
    use a side-by-side prompt (`pollux-4b-sbs`)."""
    check_generative(judge)
    with PairStore(db) as store:
        counts = judge_missing(judge, pairs, store, chunk_size=chunk_size, log=log)
        rows, incomplete = outcomes(pairs, stored_scores(judge, pairs, store))
    return {"judge": judge.name, "db": str(db), "judgements": 2 * len(pairs), **counts,
            "pairs_without_two_scores": incomplete, **tables(rows, n_resamples=n_resamples, seed=seed)}


# -- reading a store back (`pollux report`, the UI's side-by-side page) ------------------------

def _read_only(db: str | Path) -> sqlite3.Connection:
    """A read-only connection (a reader never creates the file nor the table); the path is quoted as
    a URI, so `?` or `#` in a folder name stays part of it."""
    return sqlite3.connect(f"{Path(db).resolve().as_uri()}?mode=ro", uri=True, timeout=30)


def has_judgements(db: str | Path) -> bool:
    """Whether `db` holds side-by-side verdicts (read-only: never creates the table)."""
    conn = _read_only(db)
    try:
        found = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='pairwise_judgements'").fetchone()
        return found is not None and conn.execute("SELECT 1 FROM pairwise_judgements LIMIT 1").fetchone() is not None
    finally:
        conn.close()


@dataclass
class StoredComparison:
    """One comparison read back from a store: A's and B's files under one judge configuration, its
    pairs and each (pair, order)'s latest stored row (score, valid, verdict JSON)."""

    side_a: str
    side_b: str
    judge_config: dict[str, Any]
    rows: dict[tuple[Pair, str], tuple[float | None, bool, str]] = field(default_factory=dict)

    @property
    def pairs(self) -> list[Pair]:
        return list(dict.fromkeys(pair for pair, _ in self.rows))

    def scores(self) -> dict[tuple[Pair, str], float | None]:
        return {k: (score if valid else None) for k, (score, valid, _) in self.rows.items()}


def stored_comparisons(db: str | Path) -> list[StoredComparison]:
    """Every comparison in `db`, grouped by (A's file, B's file, judge configuration); rows written
    before the files were stored are "A" / "B". A later row of the same pair and order wins."""
    conn = _read_only(db)
    try:
        have = {row[1] for row in conn.execute("PRAGMA table_info(pairwise_judgements)")}
        later = ", ".join(c if c in have else "NULL" for c in _LATER_COLUMNS)
        rows = conn.execute(f"SELECT record_id, task, criterion, pair_order, score, valid, verdict, judge_config, "
                            f"{later} FROM pairwise_judgements ORDER BY created_at, rowid").fetchall()
    finally:
        conn.close()
    found: dict[tuple[str, str, str], StoredComparison] = {}
    for rid, task, criterion, order, score, valid, verdict, config, side_a, side_b, instr, ans_a, ans_b in rows:
        side_a, side_b = side_a or "A", side_b or "B"
        group = found.get((side_a, side_b, config))
        if group is None:
            group = found[(side_a, side_b, config)] = StoredComparison(side_a, side_b, json.loads(config))
        pair = Pair(rid, task, criterion, instr or "", ans_a or "", ans_b or "", side_a, side_b)
        group.rows[(pair, order)] = (score, bool(valid), verdict)
    return list(found.values())


def stored_tables(comparison: StoredComparison, **bootstrap: Any) -> dict[str, Any]:
    """A stored comparison's numbers, by the same `outcomes` and `tables` as `compare`'s JSON."""
    pairs = comparison.pairs
    rows, incomplete = outcomes(pairs, comparison.scores())
    return {"a": comparison.side_a, "b": comparison.side_b, "judge": judge_label(comparison.judge_config),
            "judgements": len(comparison.rows), "pairs_without_two_scores": incomplete, **tables(rows, **bootstrap)}


def judge_label(config: dict[str, Any]) -> str:
    """A short name for a judge configuration (its model / engine, as `describe()` writes them)."""
    for key in ("model", "name", "engine"):
        if config.get(key):
            return str(config[key])
    return "judge"


def flipped_pairs(comparison: StoredComparison) -> list[dict[str, Any]]:
    """The pairs whose preference changes with position: the texts and both orders' verdicts."""
    pairs = comparison.pairs
    rows, _ = outcomes(pairs, comparison.scores())
    flipped = {(r.record_id, r.criterion, r.task) for r in rows if r.flipped}
    out = []
    for pair in pairs:
        if (pair.record_id, pair.criterion, pair.task) not in flipped:
            continue
        verdicts = {}
        for order in ORDERS:
            score, _, text = comparison.rows[(pair, order)]
            data = json.loads(text)
            verdicts[order] = {"score": score, "raw_text": data.get("raw_text", ""),
                               "rationale": data.get("rationale", "")}
        out.append({"record_id": pair.record_id, "task": pair.task, "criterion": pair.criterion,
                    "instruction": pair.instruction, "answer_a": pair.answer_a, "answer_b": pair.answer_b,
                    **verdicts})
    return out
