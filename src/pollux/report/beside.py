"""The leaderboard beside reference models: other runs and an expert-scored file, with bootstrap CIs.

Why: "how good is my model?" only means something next to models whose quality is known. POLLUX
ships the experts' scores for seven LLMs; their rows go through the very same official rules as a
run's verdicts (`pollux.aggregate.prepare`: normalise by the scale's maximum, binary gates, gate
criteria left out of the means), so an expert-scored LLM and a judged one are compared on one
scale. Every number gets a percentile bootstrap CI over *answers* (an answer's verdicts stay
together, as in meta-eval: `pollux.metaeval.bootstrap.resample_counts`).

Scopes: `overall` is the grand mean (mean over task groups of the mean over criteria of the
cell means, the leaderboard's number); a `task_group` row is that group's mean over criteria; a
`criterion_group` row is the mean over that group's criteria of each criterion's mean over task
groups (`aggregate.by_criterion`).

The per-1k-judgements table (alpaca_eval publishes one for its judges) sums what the run store
recorded per verdict: `time_s`, `prompt_tokens`, `completion_tokens` (each distinct verdict once,
error verdicts included: they cost time and tokens too), and prices them with the `pollux answer
--prices` table (`pollux.answer.load_prices`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pollux.aggregate import GateMode, OutOfScale, prepare
from pollux.answer import load_prices
from pollux.metaeval.bootstrap import percentile_ci, resample_counts
from pollux.metaeval.experts import load_experts
from pollux.metaeval.groups import canonical_group, task_groups
from pollux.store import Run, StoreError, read_runs, read_verdicts

JUDGED = "judged"
EXPERTS = "experts"


@dataclass
class Entry:
    """The prepared verdict rows of one source: a run of a run store, or the expert file."""

    kind: str  # JUDGED or EXPERTS
    source: str  # the run store (with its run) or the expert file
    judge: str  # the run's judge; "experts" for the expert file
    scores: pd.DataFrame  # `aggregate.prepare` output


def expert_verdicts(path: str | Path) -> pd.DataFrame:
    """An expert file (POLLUX format, read by meta-eval's `load_experts`) as verdict rows that
    `aggregate.prepare` takes: the experts' aggregate is the score, one answer per
    (model, instruction, answer), task groups from the taxonomy."""
    frame = load_experts(path).frame
    groups = task_groups(frame["task_type"].unique().tolist())
    return pd.DataFrame({
        "model_id": frame["model_id"].astype(str),
        "record_id": frame["answer_id"].astype(str),
        "answer_key": "experts\x00" + frame["answer_id"].astype(str),
        "task_type": frame["task_type"],
        "task_group": frame["task_type"].map(groups),
        "criteria_name": frame["criteria_name"],
        "criterion_group": frame["group"],
        "score": frame["expert"],
        "scale_min": frame["scale_min"],
        "scale_max": frame["scale_max"],
        "error": None,
    })


def _run_verdicts(db: str | Path, run: int | None) -> tuple[Run, pd.DataFrame]:
    """A run of a run store (default: its latest) and its verdicts, without the texts."""
    runs = read_runs(db)
    if not runs:
        raise StoreError(f"{db}: the database holds no run yet")
    info = runs[-1] if run is None else next((r for r in runs if r.run_id == run), None)
    if info is None:
        raise StoreError(f"{db}: no run {run}")
    df = read_verdicts(db, run=info.run_id, texts=False)
    if df.empty:
        raise StoreError(f"{db}: run {info.run_id} holds no verdicts yet")
    return info, df


def load_entries(dbs: Sequence[str | Path], experts: str | Path | None, *, catalog: Any = None,
                 gates: GateMode = "binary", out_of_scale: OutOfScale = "drop",
                 first_run: int | None = None) -> list[Entry]:
    """A run of each run store (`first_run` for the first, the latest for the others), then the
    expert file, each prepared by the official rules."""
    entries = []
    for i, db in enumerate(dbs):
        info, df = _run_verdicts(db, first_run if i == 0 else None)
        scores = prepare(df, catalog=catalog, gates=gates, out_of_scale=out_of_scale)
        entries.append(Entry(JUDGED, f"{db}#run{info.run_id}", info.judge, scores))
    if experts is not None:
        scores = prepare(expert_verdicts(experts), catalog=catalog, gates=gates, out_of_scale=out_of_scale)
        entries.append(Entry(EXPERTS, str(experts), EXPERTS, scores))
    for entry in entries:
        entry.scores["criterion_group"] = entry.scores["criterion_group"].map(canonical_group)
    return entries


def _nanmean(matrix: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Row-wise mean of the chosen columns, NaNs left out (all-NaN → NaN, silently)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return np.nanmean(matrix[:, columns], axis=1)


def _scopes(cells: pd.DataFrame, means: np.ndarray) -> list[tuple[str, str, np.ndarray]]:
    """(scope, group, per-resample value) for the grand mean, each task group and each criterion
    group, from the per-resample cell means (`means[:, c]` is cell `c` of `cells`)."""
    group_means = {str(g): _nanmean(means, idx) for g, idx in cells.groupby("task_group", sort=True).indices.items()}
    by_group = np.stack(list(group_means.values()), axis=1)
    out = [("overall", "", _nanmean(by_group, np.arange(by_group.shape[1])))]
    out += [("task_group", g, v) for g, v in group_means.items()]
    for cgroup, part in cells.groupby("criterion_group", sort=True):
        rows = part.index.to_numpy()
        per_criterion = np.stack([_nanmean(means, rows[i]) for i in part.groupby("criteria_name").indices.values()],
                                 axis=1)
        out.append(("criterion_group", str(cgroup), _nanmean(per_criterion, np.arange(per_criterion.shape[1]))))
    return out


def model_cis(scores: pd.DataFrame, *, n_resamples: int, rng: np.random.Generator,
              confidence: float = 0.95) -> list[dict[str, Any]]:
    """Point estimate and percentile CI of every scope for one model's prepared verdict rows.

    Answers are resampled with replacement; a resample weighs each answer's verdicts by how often
    it was drawn, so a cell mean is `counts @ sums / counts @ n` (one matrix product)."""
    counted = scores[scores["counted"] & scores["norm_score"].notna()]
    if counted.empty:  # every verdict failed or was invalid: the model is listed, without numbers
        return [{"scope": "overall", "group": "", "mean": math.nan, "ci_low": math.nan, "ci_high": math.nan,
                 "answers": 0}]
    answer, answers = pd.factorize(counted["answer_key"])
    keys = counted[["task_group", "criteria_name", "criterion_group"]].astype(str)
    cell, cell_keys = pd.factorize(keys["task_group"] + "\x00" + keys["criteria_name"])
    cells = keys.groupby(cell, sort=True).first().reset_index(drop=True)
    sums = np.zeros((len(answers), len(cell_keys)))
    ns = np.zeros_like(sums)
    np.add.at(sums, (answer, cell), counted["norm_score"].to_numpy(dtype=float))
    np.add.at(ns, (answer, cell), 1.0)
    weights = np.vstack([np.ones((1, len(answers))), resample_counts(len(answers), n_resamples, rng)])
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (weights @ sums) / (weights @ ns)
    rows = []
    for scope, group, values in _scopes(cells, means):
        low, high = percentile_ci(values[1:], confidence)
        rows.append({"scope": scope, "group": group, "mean": float(values[0]), "ci_low": low, "ci_high": high,
                     "answers": len(answers)})
    return rows


def beside_tables(entries: Sequence[Entry], *, n_resamples: int = 1000, seed: int = 0,
                  confidence: float = 0.95) -> pd.DataFrame:
    """One row per (model, source, scope, group): mean, CI, answers; `kind` says judged / experts."""
    rng = np.random.default_rng(seed)
    rows = []
    for entry in entries:
        for model, scores in entry.scores.groupby("model_id", sort=True):
            for row in model_cis(scores, n_resamples=n_resamples, rng=rng, confidence=confidence):
                rows.append({"model_id": str(model), "kind": entry.kind, "judge": entry.judge,
                             "source": entry.source, **row})
    table = pd.DataFrame(rows)
    overall = table[table["scope"] == "overall"].sort_values("mean", ascending=False, na_position="last")
    rank = pd.Series(range(1, len(overall) + 1), index=overall.index)
    table.insert(0, "rank", rank.reindex(table.index).astype("Int64"))
    return table


def per_1k(dbs: Sequence[str | Path], prices: str | Path | None = None, *,
           first_run: int | None = None) -> pd.DataFrame:
    """Latency seconds, tokens and (with a price table) USD per 1000 judgements, per run (as
    `load_entries`). `time_s` is each verdict's own latency: overlapping verdicts (a batch, concurrent
    requests) make the sum an upper bound on wall time."""
    rows = []
    for i, db in enumerate(dbs):
        info, df = _run_verdicts(db, first_run if i == 0 else None)
        df = df.drop_duplicates("item_key")
        n = len(df)
        seconds, prompt, completion = (float(pd.to_numeric(df[c], errors="coerce").fillna(0).sum())
                                       for c in ("time_s", "prompt_tokens", "completion_tokens"))
        row: dict[str, Any] = {
            "judge": info.judge, "source": f"{db}#run{info.run_id}", "judgements": n,
            "latency_s_per_1k": seconds / n * 1000 if n else None,
            "prompt_tokens_per_1k": prompt / n * 1000 if n else None,
            "completion_tokens_per_1k": completion / n * 1000 if n else None,
            "cost_per_1k_usd": None,
        }
        if prices is not None and n:
            cost = load_prices(prices, [info.judge]).cost(int(prompt), int(completion))
            row["cost_per_1k_usd"] = None if cost is None else cost / n * 1000
        rows.append(row)
    return pd.DataFrame(rows)
