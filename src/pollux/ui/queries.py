"""The web UI's data layer: read-only queries over pollux run databases, expert files and reviews.

`Explorer` is the only thing the web layer (`pollux.ui.app`) calls: every method returns plain
dicts / lists (JSON-able, Jinja-renderable) and raises `ValueError` naming the bad argument (a bad
run reference, filter value, page, review score …), which the web layer turns into a 4xx.

Notes for the web layer (kept up to date here):
* A run is named by `RunRef` — `"D-R"`: database index D (the order of `dbs`, then the expert
  files) and run id R. Expert files are pseudo-runs (`kind == "experts"`, run id 1) usable wherever
  a run is: verdicts, answer, leaderboard, compare; they take no reviews.
* `verdicts(..., sort=...)` accepts `SORTS`: "default" (answer order, then criterion), "score",
  "-score" (score ascending / descending), "model", "criterion".
* `VerdictFilter.from_params(mapping)` builds a filter from query-string values (blank → None).

Why it is built this way:
* Databases are opened read-only (`mode=ro`) unless reviews are writable: the UI must never change
  a run, and a WAL database can be read while `pollux evaluate` writes it (readers never block the
  writer), so `runs()` shows live progress.
* Filters and pages are answered by SQL with the store's indexes (`pollux.store`), never by loading
  161k verdicts into memory; the leaderboard, which needs them all, is `pollux.aggregate` over the
  run's score columns, cached until the database changes (`PRAGMA data_version`).
* Full-text search uses SQLite FTS5 in a sidecar cache file per database (built on first search,
  brought up to date before each search), so read-only and older databases can be searched too and
  `pollux evaluate` pays nothing for it.
* Compare joins two runs on the judged content (`item_key` = `JudgeItem.key`), the key
  `pollux meta-eval` joins judges and experts on, so two databases, or a run and an expert file,
  meet on the same (answer, criterion) whatever their record ids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SORTS = ("default", "score", "-score", "model", "criterion")
ONLY = ("invalid", "error")
MAX_PAGE_SIZE = 500
SNIPPET_CHARS = 300


@dataclass(frozen=True)
class RunRef:
    """One run in one of the opened databases; its text form is "D-R" (db index, run id), e.g. "0-1"."""

    db: int
    run_id: int

    @classmethod
    def parse(cls, text: str) -> RunRef:
        """"0-1" → RunRef(0, 1). ValueError naming the bad text otherwise."""
        raise NotImplementedError

    def __str__(self) -> str:
        return f"{self.db}-{self.run_id}"


@dataclass(frozen=True)
class VerdictFilter:
    """Which verdicts to show; every field optional (None = no condition). Conditions combine with AND.

    `criterion` is a `criteria_name`, `group` a `criterion_group`; `score_min` / `score_max` bound
    the judge's score (inclusive; rows without a score drop out when either is set); `only` is
    "invalid" (valid = 0, no error) or "error" (the judgement failed); `q` is a full-text search in
    the answer and the rationale (words, all required, each matching as a prefix, case- and
    ё/е-insensitive). Construction checks the values (ValueError naming the field)."""

    model: str | None = None
    task_type: str | None = None
    criterion: str | None = None
    group: str | None = None
    score_min: float | None = None
    score_max: float | None = None
    only: str | None = None
    q: str | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, str | None]) -> VerdictFilter:
        """A filter from query-string values: blank → None, numbers parsed ("1,5" too). Unknown keys
        are ignored. ValueError naming the parameter on a bad value."""
        raise NotImplementedError

    def to_params(self) -> dict[str, str]:
        """The set fields as query-string values (for pagination links)."""
        raise NotImplementedError


class Explorer:
    """Queries over run databases and expert files for the web UI. Thread-safe (one lock per database).

    `dbs`: pollux run databases (`pollux evaluate --db`), read-only unless `reviews_writable`
    (then the `ui_reviews` table is created in each). `experts`: POLLUX-format expert files
    (`pollux.metaeval.load_experts`), each shown as a pseudo-run. `cache_dir`: where full-text
    indexes are kept (default: `$XDG_CACHE_HOME/pollux/ui`)."""

    def __init__(self, dbs: Sequence[str | Path], *, experts: Sequence[str | Path] = (),
                 reviews_writable: bool = False, cache_dir: str | Path | None = None):
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Explorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def runs(self) -> list[dict[str, Any]]:
        """Every run of every database, then the expert pseudo-runs, each a dict:
        ref (str "D-R"), db (int), path (str), kind ("run" | "experts"), run_id, judge,
        created_at (ISO 8601 UTC str; None for experts), config (dict), jobs (answer × criterion
        pairs), items (distinct judgements), judged (successful verdicts), failed (verdicts with an
        error), invalid (verdicts without a usable score, no error), pending (items without any
        verdict yet), progress (0..1: (judged + failed) / items), finished (bool: pending == 0),
        reviews_writable (bool). Read fresh on each call (live progress)."""
        raise NotImplementedError

    def run(self, ref: RunRef) -> dict[str, Any]:
        """The `runs()` entry of one run. ValueError for an unknown ref."""
        raise NotImplementedError

    def facets(self, ref: RunRef) -> dict[str, Any]:
        """Values for the filter dropdowns of a run: models, task_types, criteria (names), groups
        (criterion groups) — each a sorted list of str — and score_min / score_max (floats, None
        when nothing is scored)."""
        raise NotImplementedError

    def leaderboard(self, ref: RunRef) -> dict[str, Any]:
        """The official POLLUX aggregation of a run (`pollux.aggregate`, binary gates, out-of-scale dropped):

        * models: model ids, best first; task_groups, criterion_groups, criteria: sorted str lists;
        * rows: one per model, best first — rank, model_id, grand_mean (the official overall:
          mean over task groups), answers, judgements, counted, gated_answers, invalid, errors,
          task_groups {task group: mean}, criterion_groups {criterion group: mean over its criteria};
        * criteria_rows: one per criterion — criteria_name, criterion_group, means {model: mean}
          (the heatmap);
        * rules: {gates, out_of_scale, grand_mean (text)}.
        Means are floats in 0..1 or None. Empty lists when the run has no verdicts."""
        raise NotImplementedError

    def verdicts(self, ref: RunRef, f: VerdictFilter | None = None, *, page: int = 1, page_size: int = 50,
                 sort: str = "default") -> dict[str, Any]:
        """One page of a run's verdicts (judged answer × criterion pairs) matching `f`:
        {"total": int (all matching rows), "page": int, "page_size": int, "pages": int (≥ 1),
        "sort": str, "rows": [{record_pk, record_id, item_key, model_id, task_type, criteria_name,
        criterion_group, score (float | None), valid (bool), error (str | None), invalid_reason,
        rationale (snippet ≤ SNIPPET_CHARS chars, "…"-terminated when cut), answer (snippet)}]}.
        A page past the last gives no rows. ValueError on page < 1, page_size outside 1..MAX_PAGE_SIZE,
        an unknown sort, a bad filter."""
        raise NotImplementedError

    def answer(self, ref: RunRef, record_pk: int) -> dict[str, Any]:
        """One answer of a run with every criterion it has there:
        {record_pk, record_id, source, line, model_id, task_type, task_subtype, task_subsubtype,
        task_group, instruction, reference_answer, answer, run (the runs() entry), criteria: [
        {criteria_name, criterion_id, criterion_group, rubrics, item_key, scale_min, scale_max,
        levels (list of allowed scores, may be empty), score, head_score, text_score, valid, invalid_reason,
        error, rationale (full), judged (bool: a verdict exists), reviews: [review dicts]}]}.
        ValueError when the run has no such answer."""
        raise NotImplementedError

    def compare(self, a: RunRef, b: RunRef, f: VerdictFilter | None = None, *, page: int = 1,
                page_size: int = 50) -> dict[str, Any]:
        """Two runs joined on the judged content (answer × criterion, `item_key`), rows where both
        have a score, filtered by `f` on run a's side, sorted by |score_a − score_b| descending:
        {"a": runs() entry, "b": runs() entry, "total", "page", "page_size", "pages",
        "rows": [{record_pk (in a), item_key, model_id, task_type, criteria_name, criterion_group,
        score_a, score_b, diff (score_a − score_b), rationale_a, rationale_b (snippets), answer (snippet)}],
        "stats": {n, spearman, kendall, pearson, mae, exact, within1 (floats; NaN → None),
        confusion: {labels: [float …], counts: [[int …] …] (rows: a's rounded score, columns: b's)}}}.
        `only="error"` matches nothing here (failed verdicts have no score)."""
        raise NotImplementedError

    def set_review(self, ref: RunRef, record_pk: int, criteria_name: str, score: float | None, comment: str,
                   reviewer: str) -> dict[str, Any]:
        """Store (or update: one per run × answer × criterion × reviewer) a reviewer's expert score and
        comment on a verdict, beside it — the judge's verdict is never changed. `score` must lie on
        the criterion's scale (its levels when the rubric lists them); None = a comment only. Returns
        the review dict (see `reviews`). ValueError naming the field: read-only explorer, expert
        pseudo-run, unknown answer or criterion, score off the scale, bad text (`text_problem`),
        empty reviewer, too long comment."""
        raise NotImplementedError

    def reviews(self, ref: RunRef) -> list[dict[str, Any]]:
        """Every review of a run, newest first: {review_id, run_id, record_pk, criteria_name,
        reviewer, score, comment, created_at, updated_at (ISO 8601 UTC), judge_score, model_id,
        task_type}. Empty when the database has no reviews table."""
        raise NotImplementedError

    def export_reviews(self, ref: RunRef) -> list[dict[str, Any]]:
        """The run's reviews as POLLUX expert rows (facts §6), one per (answer, criterion) with at least
        one scored review: instruction, reference_answer, answer, model_id, task_type, task_subtype,
        task_subsubtype, criteria_name, criteria_group, rubrics, annotations [{comment, score,
        reviewer}], criteria_score (mean of the reviewers' scores), plus id (source:record_id),
        judge_score. Written as JSONL, `pollux meta-eval FILE --scores RUN.db` reads it back as
        expert scores."""
        raise NotImplementedError
