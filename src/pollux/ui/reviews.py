"""Human reviews of verdicts: their table, their validation and their export as POLLUX expert rows.

A reviewer who disagrees with the judge records an expert score and a comment *beside* the
verdict: the `ui_reviews` table lives in the run database (so reviews travel with the run) but
the judge's verdict is never changed. One row per (run, answer, criterion, reviewer): a second
submission updates it (`updated_at` changes, `created_at` stays) with what it gives — a score
left out or a blank comment keeps the earlier one, so adding a comment never loses the score.

Exported as POLLUX expert rows (facts §6: `annotations` = one `{comment, score}` per reviewer,
`criteria_score` = their mean), reviews become the "experts" of `pollux meta-eval`, which joins
them to any judge's scores by the judged content — the same answer, criterion and rubric.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from pollux.records import text_problem
from pollux.scales import parse_scale
from pollux.store import REVIEWS_SCHEMA, REVIEWS_TABLE, table_names

MAX_COMMENT_CHARS = 10_000
MAX_REVIEWER_CHARS = 200


def check_review(score: float | None, comment: str, reviewer: str, rubrics: str) -> tuple[float | None, str, str]:
    """(score, comment, reviewer) cleaned, or ValueError naming the field: the score must be a
    finite number on the rubric's scale (one of its levels when the rubric lists them), the
    texts valid Unicode without NUL, the reviewer named."""
    if not isinstance(reviewer, str) or not reviewer.strip():
        raise ValueError("reviewer: a reviewer name is required")
    if not isinstance(comment, str):
        raise ValueError(f"comment: expected text, got {type(comment).__name__}")
    for field, value, limit in (("reviewer", reviewer, MAX_REVIEWER_CHARS), ("comment", comment, MAX_COMMENT_CHARS)):
        problem = text_problem(value)
        if problem is not None:
            raise ValueError(f"{field}: {problem}")
        if len(value) > limit:
            raise ValueError(f"{field}: longer than {limit} characters ({len(value)})")
    if score is None:
        if not comment.strip():
            raise ValueError("score: give a score, a comment, or both")
        return None, comment, reviewer.strip()
    return _check_score(score, rubrics), comment, reviewer.strip()


def _check_score(score: float, rubrics: str) -> float:
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
        raise ValueError(f"score: expected a finite number, got {score!r}")
    scale = parse_scale(rubrics)
    value = float(score)
    if scale is None:
        return value
    if scale.levels and value not in scale.levels:
        levels = ", ".join(f"{v:g}" for v in scale.levels)
        raise ValueError(f"score: {value:g} is not a level of this criterion's scale ({levels})")
    if not scale.min <= value <= scale.max:
        raise ValueError(f"score: {value:g} outside this criterion's scale [{scale.min:g}, {scale.max:g}]")
    return value


def ensure_table(conn: sqlite3.Connection) -> None:
    """Create the reviews table (its schema is the store's, `pollux.store.REVIEWS_SCHEMA`)."""
    with conn:
        conn.execute(REVIEWS_SCHEMA)


def has_table(conn: sqlite3.Connection) -> bool:
    return REVIEWS_TABLE in table_names(conn)


def upsert(conn: sqlite3.Connection, run_id: int, record_pk: int, criteria_name: str, score: float | None,
           comment: str, reviewer: str) -> int:
    """Insert or update one review; returns its review_id. A None score or a blank comment keeps
    the stored one (see the module doc)."""
    now = time.time()
    with conn:
        conn.execute(
            "INSERT INTO ui_reviews (run_id, record_pk, criteria_name, reviewer, score, comment, created_at, "
            "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, record_pk, criteria_name, reviewer) "
            "DO UPDATE SET score=coalesce(excluded.score, score), "
            "comment=CASE WHEN excluded.comment = '' THEN comment ELSE excluded.comment END, "
            "updated_at=excluded.updated_at",
            (run_id, record_pk, criteria_name, reviewer, score, comment if comment.strip() else "", now, now),
        )
        row = conn.execute("SELECT review_id FROM ui_reviews WHERE run_id=? AND record_pk=? AND criteria_name=? "
                           "AND reviewer=?", (run_id, record_pk, criteria_name, reviewer)).fetchone()
    return int(row[0])


# The review, the judge's verdict beside it, and the texts the export needs.
SELECT_SQL = """
SELECT u.review_id, u.run_id, u.record_pk, u.criteria_name, u.reviewer, u.score, u.comment, u.created_at,
       u.updated_at, v.score AS judge_score, r.model_id, r.task_type, r.task_subtype, r.task_subsubtype,
       r.source, r.record_id, r.instruction, r.reference_answer, r.answer, j.rubrics, j.criterion_group
FROM ui_reviews u
JOIN jobs j ON j.run_id = u.run_id AND j.record_pk = u.record_pk AND j.criteria_name = u.criteria_name
JOIN records r ON r.record_pk = u.record_pk
LEFT JOIN verdicts v ON v.item_key = j.item_key AND +v.run_id = j.run_id
WHERE u.run_id = ? {extra}
ORDER BY u.updated_at DESC, u.review_id DESC
"""
PUBLIC = ("review_id", "run_id", "record_pk", "criteria_name", "reviewer", "score", "comment", "created_at",
          "updated_at", "judge_score", "model_id", "task_type")


def iso(ts: float | None) -> str | None:
    """A Unix time as ISO 8601 UTC (what the UI shows), None for None."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def public(row: Mapping[str, Any]) -> dict[str, Any]:
    """A review as the UI shows it (timestamps in ISO 8601 UTC)."""
    out = {k: row[k] for k in PUBLIC}
    out["created_at"], out["updated_at"] = iso(row["created_at"]), iso(row["updated_at"])
    return out


def expert_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Reviews (SELECT_SQL rows) → POLLUX expert rows, one per (answer, criterion) with a scored review."""
    grouped: dict[tuple[int, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        if row["score"] is not None:
            grouped.setdefault((row["record_pk"], row["criteria_name"]), []).append(row)
    out = []
    for (_, criterion), group in sorted(grouped.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        first = group[0]
        scores = [float(r["score"]) for r in group]
        out.append({
            "id": f"{first['source']}:{first['record_id']}",
            "instruction": first["instruction"], "reference_answer": first["reference_answer"],
            "answer": first["answer"], "model_id": first["model_id"], "task_type": first["task_type"],
            "task_subtype": first["task_subtype"], "task_subsubtype": first["task_subsubtype"],
            "criteria_name": criterion, "criteria_group": first["criterion_group"], "rubrics": first["rubrics"],
            "annotations": [{"comment": r["comment"], "score": float(r["score"]), "reviewer": r["reviewer"]}
                            for r in sorted(group, key=lambda r: r["reviewer"])],
            "criteria_score": sum(scores) / len(scores),
            "judge_score": first["judge_score"],
        })
    return out
