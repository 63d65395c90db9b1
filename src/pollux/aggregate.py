"""Aggregation of a run's verdicts into leaderboards, with the official POLLUX benchmark semantics.

The rules (POLLUX code base, facts §7), applied per evaluated model:

1. **Normalise** each score by its scale's maximum (`score / max`), so 0–1, 0–2, 0–3 and 0–4
   criteria are comparable. The scale is the verdict's (parsed from the rubric the judge saw), else
   the catalog's for that criterion. A score outside its scale is invalid and dropped (official
   metrics); `out_of_scale="clip"` clips it instead — useful for regression judges, whose raw head
   output may overshoot a bound by a little.
2. **Gates**: binary (0/1) criteria — in POLLUX the critical ones, "format violation" and "censor
   stub", where 1 means failure — are gates. An answer with any non-zero gate score gets all its
   other scores set to 0. Gate scores themselves are excluded from every mean. A regression judge's
   gate score is a float, so "non-zero" is read as "rounds to 1" (≥ 0.5). With `gates="critical"`
   only binary criteria of the critical group gate; other binary criteria (e.g. a task-specific
   "the code runs", where 1 is good) are then averaged like any other criterion.
3. **Tables**: the mean normalised score per criterion × task group; the mean over groups (per
   criterion), the mean over criteria (per group), and the grand mean = the mean of the per-group
   means, so that every task group weighs the same whatever its number of answers.

Errors (no verdict) and verdicts without a score never count. Everything is plain pandas.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

NO_GROUP = "(без группы)"
GateMode = Literal["binary", "critical"]
OutOfScale = Literal["drop", "clip"]


@dataclass
class Aggregation:
    """Every table the report shows; all are DataFrames with a `model_id` column."""

    scores: pd.DataFrame  # the input rows plus norm_score, is_gate, gated, counted
    cells: pd.DataFrame  # model_id, task_group, criteria_name, mean, n
    by_criterion: pd.DataFrame  # model_id, criteria_name, mean (over groups), n
    by_group: pd.DataFrame  # model_id, task_group, mean (over criteria), n
    leaderboard: pd.DataFrame  # one row per model, best first

    def criterion_table(self, model_id: str) -> pd.DataFrame:
        """Criterion × task-group table of one model, with the mean over groups as a last column
        and the mean over criteria as a last row.

        The corner cell is the leaderboard's grand mean (the mean over groups of the last row).
        Where not every criterion is judged in every group, the mean of the last column (criteria
        weighted equally) is a different number; shown there, the report gave one model two
        unlabelled "means" (e.g. 0.167 in its table, 0.208 on the leaderboard)."""
        cells = self.cells[self.cells["model_id"] == model_id]
        table = cells.pivot_table(index="criteria_name", columns="task_group", values="mean", aggfunc="first")
        by_group = table.mean(axis=0, skipna=True)
        table["mean over groups"] = table.mean(axis=1, skipna=True)
        table.loc["mean over criteria"] = [*by_group.tolist(), by_group.mean(skipna=True)]
        return table

    def model_criterion_matrix(self) -> pd.DataFrame:
        """Criterion × model matrix of the means over groups (the report's heatmap)."""
        if self.by_criterion.empty:
            return pd.DataFrame()
        return self.by_criterion.pivot_table(index="criteria_name", columns="model_id", values="mean", aggfunc="first")


def prepare(
    df: pd.DataFrame,
    *,
    catalog: Any = None,
    gates: GateMode = "binary",
    out_of_scale: OutOfScale = "drop",
) -> pd.DataFrame:
    """Per-verdict columns the aggregation needs: scale, norm_score, is_gate, gate_failed, gated, counted."""
    if gates not in ("binary", "critical"):
        raise ValueError(f"gates must be 'binary' or 'critical', got {gates!r}")
    if out_of_scale not in ("drop", "clip"):
        raise ValueError(f"out_of_scale must be 'drop' or 'clip', got {out_of_scale!r}")
    out = df.copy()
    for col, default in (("task_group", None), ("criterion_id", None), ("criterion_group", None),
                         ("error", None), ("scale_min", np.nan), ("scale_max", np.nan), ("answer_key", None)):
        if col not in out.columns:
            out[col] = default
    if out["answer_key"].isna().any():
        fallback = out["model_id"].astype(str) + "\x00" + out["record_id"].astype(str)
        out["answer_key"] = out["answer_key"].fillna(fallback)
    out["task_group"] = out["task_group"].fillna(NO_GROUP).replace("", NO_GROUP)
    out["scale_min"] = pd.to_numeric(out["scale_min"], errors="coerce")
    out["scale_max"] = pd.to_numeric(out["scale_max"], errors="coerce")
    if catalog is not None:
        _fill_from_catalog(out, catalog)
    score = pd.to_numeric(out["score"], errors="coerce")
    has_scale = out["scale_max"].notna() & out["scale_min"].notna() & (out["scale_max"] != 0)
    ok = score.notna() & np.isfinite(score) & out["error"].isna() & has_scale
    inside = (score >= out["scale_min"]) & (score <= out["scale_max"])
    if out_of_scale == "clip":
        score = score.clip(lower=out["scale_min"], upper=out["scale_max"])
    else:
        ok &= inside
    out["usable"] = ok
    binary = (out["scale_min"] == 0) & (out["scale_max"] == 1)
    if gates == "critical":
        binary &= out["criterion_group"].astype(str).str.lower().eq("critical")
    out["is_gate"] = binary
    out["gate_failed"] = out["is_gate"] & ok & (score >= 0.5)
    failed_answers = set(out.loc[out["gate_failed"], "answer_key"])
    out["gated"] = out["answer_key"].isin(failed_answers) & ~out["is_gate"]
    norm = (score / out["scale_max"]).where(ok)
    out["norm_score"] = norm.where(~out["gated"] | ~ok, 0.0)
    out["counted"] = ok & ~out["is_gate"]
    return out


def _fill_from_catalog(out: pd.DataFrame, catalog: Any) -> None:
    """Missing scales and criterion groups from the catalog (by criterion id, else by name)."""
    for idx in out.index[out["scale_max"].isna() | out["criterion_group"].isna()]:
        crit = None
        for key in (out.at[idx, "criterion_id"], out.at[idx, "criteria_name"]):
            if isinstance(key, str) and key:
                crit = catalog.find(key)
                if crit is not None:
                    break
        if crit is None:
            continue
        if pd.isna(out.at[idx, "scale_max"]):
            out.at[idx, "scale_min"] = float(crit.scale.min)
            out.at[idx, "scale_max"] = float(crit.scale.max)
        if pd.isna(out.at[idx, "criterion_group"]):
            out.at[idx, "criterion_group"] = crit.group


def aggregate(
    df: pd.DataFrame,
    *,
    catalog: Any = None,
    gates: GateMode = "binary",
    out_of_scale: OutOfScale = "drop",
) -> Aggregation:
    """All tables for the verdict rows of one run (as `pollux.store.read_verdicts` returns them)."""
    scores = prepare(df, catalog=catalog, gates=gates, out_of_scale=out_of_scale)
    counted = scores[scores["counted"]]
    keys = ["model_id", "task_group", "criteria_name"]
    cells = counted.groupby(keys, sort=True)["norm_score"].agg(["mean", "count"]).reset_index()
    cells = cells.rename(columns={"count": "n"})
    by_criterion = (cells.groupby(["model_id", "criteria_name"], sort=True)
                    .agg(mean=("mean", "mean"), n=("n", "sum")).reset_index())
    by_group = (cells.groupby(["model_id", "task_group"], sort=True)
                .agg(mean=("mean", "mean"), n=("n", "sum")).reset_index())
    grand = by_group.groupby("model_id")["mean"].mean().rename("grand_mean")

    flags = pd.DataFrame({
        "model_id": scores["model_id"],
        "counted": scores["counted"].astype(int),
        "invalid": (~scores["usable"] & scores["error"].isna()).astype(int),
        "errors": scores["error"].notna().astype(int),
    })
    per_model = flags.groupby("model_id")
    stats = pd.DataFrame({
        "answers": scores.groupby("model_id")["answer_key"].nunique(),
        "judgements": per_model.size(),
        "counted": per_model["counted"].sum(),
        "gated_answers": scores[scores["gate_failed"]].groupby("model_id")["answer_key"].nunique(),
        "invalid": per_model["invalid"].sum(),
        "errors": per_model["errors"].sum(),
    }).fillna(0)
    board = stats.join(grand, how="left")
    group_wide = by_group.pivot_table(index="model_id", columns="task_group", values="mean", aggfunc="first")
    board = board.join(group_wide, how="left")
    board = board.sort_values("grand_mean", ascending=False, na_position="last")
    board.insert(0, "rank", range(1, len(board) + 1))
    board = board.reset_index().rename(columns={"index": "model_id"})
    for col in ("answers", "judgements", "counted", "gated_answers", "invalid", "errors"):
        board[col] = board[col].astype(int)
    return Aggregation(scores=scores, cells=cells, by_criterion=by_criterion, by_group=by_group, leaderboard=board)
