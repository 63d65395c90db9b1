"""How far to trust a judge beyond its per-LLM correlations: juries, repeat consistency, length
bias and system-level agreement (docs/meta-eval.md, "Trust diagnostics", has the formulas).

Every function here works on what `meta_evaluate` already has — each judge's scores laid on the
expert rows (NaN where not compared) and the resampled means of the bootstrap — so the
diagnostics cost no second pass over the data and their intervals are on the same answer
resamples as the metric tables (paired).

* `combine` / `Jury`: several judges' scores combined row by row (mean, median, majority of the
  rounded scores) into a new judge that gets every metric like any other;
* `paired_differences`: a jury (or the median of repeats) minus each member, per metric, with a
  paired bootstrap interval;
* `repeat_consistency`: the same judge run N times — per-row spread and the share of rows whose
  rounded score changes;
* `length_bias`: does the judge's score follow the answer's length more than the experts' does;
* `system_agreement`: does the judge rank the evaluated LLMs as the experts do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pollux.metaeval import bootstrap as bs
from pollux.metaeval.scores import round_half_away

JURY_RULES = ("mean", "median", "majority")
# A judge whose partial correlation with answer length (experts' scores held fixed) reaches this
# is flagged: its scores follow length beyond what the experts' scores explain.
LENGTH_FLAG = 0.3


@dataclass(frozen=True)
class Jury:
    """A judge made of others: `members` (judge column labels; empty = every judge given) combined
    row by row by `how` (`JURY_RULES`) under the column label `name`."""

    how: str
    members: tuple[str, ...] = ()
    name: str = ""

    def label(self, members: Sequence[str]) -> str:
        return self.name or f"jury {self.how} ({', '.join(members)})"


def check_jury_rule(how: str) -> str:
    if how not in JURY_RULES:
        raise ValueError(f"unknown jury rule {how!r}: expected one of {', '.join(JURY_RULES)}")
    return how


def _majority(rounded: np.ndarray) -> np.ndarray:
    """The most frequent value per column of `rounded` (k, n); on a tie, the median of the column."""
    votes = (rounded[:, None, :] == rounded[None, :, :]).sum(axis=1)  # (k, n): how many agree with each
    best = votes.max(axis=0)
    mode = np.take_along_axis(rounded, votes.argmax(axis=0)[None], axis=0)[0]
    unique = (votes == best).sum(axis=0) == best  # the members holding the top count all hold one value
    return np.where(unique, mode, np.median(rounded, axis=0))


def combine(scores: Sequence[np.ndarray], how: str) -> np.ndarray:
    """Row-wise `how` of several judges' scores; NaN where any member has no score, so a jury is
    compared on the rows all its members scored (and a jury of one judge's copies is that judge)."""
    check_jury_rule(how)
    stack = np.vstack([np.asarray(s, dtype=float) for s in scores])
    complete = np.isfinite(stack).all(axis=0)
    filled = np.where(complete, stack, 0.0)
    if how == "mean":
        out = filled.mean(axis=0)
    elif how == "median":
        out = np.median(filled, axis=0)
    else:
        out = _majority(round_half_away(filled))
    return np.where(complete, out, np.nan)


def jury_reasons(reasons: Sequence[dict[str, np.ndarray]], value: np.ndarray) -> dict[str, np.ndarray]:
    """Why a jury has no score on a row, from its members' reasons (for the coverage table)."""
    missing = np.logical_or.reduce([r["missing"] for r in reasons])
    error = np.logical_or.reduce([r["error"] for r in reasons]) & ~missing
    rest = ~np.isfinite(value) & ~missing & ~error
    return {"missing": missing, "error": error, "no_score": rest, "out_of_scale": np.zeros_like(missing)}


def repeat_consistency(values: dict[str, np.ndarray], groups: Sequence[Sequence[str]],
                       rows: np.ndarray) -> pd.DataFrame:
    """Per group of repeats (one judge run N times): over the `rows` every run scored, the mean and
    largest per-row range (max − min), the mean per-row standard deviation, and the share of rows
    whose score rounded to the scale's levels is not the same in every run."""
    out = []
    for group in groups:
        stack = np.vstack([values[label] for label in group])
        ok = rows & np.isfinite(stack).all(axis=0)
        s = stack[:, ok]
        spread = s.max(axis=0) - s.min(axis=0) if s.size else np.array([np.nan])
        rounded = round_half_away(s)
        changed = (rounded.max(axis=0) != rounded.min(axis=0)) if s.size else np.array([np.nan])
        out.append({"judge": group[0], "runs": len(group), "members": ", ".join(group), "n_rows": int(ok.sum()),
                    "mean_range": float(np.mean(spread)), "max_range": float(np.max(spread)),
                    "mean_sd": float(np.mean(s.std(axis=0))) if s.size else np.nan,
                    "share_changed": float(np.mean(changed))})
    return pd.DataFrame(out, columns=["judge", "runs", "members", "n_rows", "mean_range", "max_range", "mean_sd",
                                      "share_changed"])


def length_bias(values: dict[str, np.ndarray], expert: np.ndarray, length: np.ndarray,
                rows: np.ndarray) -> pd.DataFrame:
    """Per judge, on the `rows` with both scores: Spearman's ρ of the judge's score with the
    answer's length in characters, the experts' ρ with length, and the partial correlation of the
    judge's score with length given the experts' score,
    ρ_JL·E = (ρ_JL − ρ_JE·ρ_EL) / √((1 − ρ_JE²)(1 − ρ_EL²)): the length preference the experts'
    scores do not explain. `flagged` when it reaches `LENGTH_FLAG`."""
    out = []
    for judge, v in values.items():
        ok = rows & np.isfinite(v) & np.isfinite(expert)
        rho = np.full((3, 3), np.nan)
        if ok.sum() > 2:  # Spearman = Pearson of average ranks; a constant column gives NaN, not an error
            from scipy import stats

            ranks = np.vstack([stats.rankdata(c) for c in (v[ok], expert[ok], length[ok])])
            with np.errstate(invalid="ignore", divide="ignore"):
                rho = np.corrcoef(ranks)
        jl, je, el = rho[0, 2], rho[0, 1], rho[1, 2]
        with np.errstate(invalid="ignore", divide="ignore"):
            partial = (jl - je * el) / np.sqrt((1 - je * je) * (1 - el * el))
        out.append({"judge": judge, "n_rows": int(ok.sum()), "judge_length_rho": float(jl),
                    "experts_length_rho": float(el), "judge_experts_rho": float(je),
                    "partial_length_rho": float(partial), "excess": float(jl - el),
                    "flagged": bool(np.isfinite(partial) and partial >= LENGTH_FLAG)})
    return pd.DataFrame(out, columns=["judge", "n_rows", "judge_length_rho", "experts_length_rho",
                                      "judge_experts_rho", "partial_length_rho", "excess", "flagged"])


def rank_agreement(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spearman's ρ and Kendall's τ-b between the rows of `a` and `b` (each (r, k): r rankings of k
    items), vectorised over rows; NaN for a row with a NaN or a constant side."""
    bad = ~(np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1))
    a, b = np.where(bad[:, None], 0.0, a), np.where(bad[:, None], 0.0, b)
    from scipy import stats

    ra, rb = stats.rankdata(a, axis=1), stats.rankdata(b, axis=1)
    ra, rb = ra - ra.mean(axis=1, keepdims=True), rb - rb.mean(axis=1, keepdims=True)
    i, j = np.triu_indices(a.shape[1], 1)
    sa, sb = np.sign(a[:, i] - a[:, j]), np.sign(b[:, i] - b[:, j])
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (ra * rb).sum(axis=1) / np.sqrt((ra * ra).sum(axis=1) * (rb * rb).sum(axis=1))
        tau = (sa * sb).sum(axis=1) / np.sqrt((sa * sa).sum(axis=1) * (sb * sb).sum(axis=1))
    rho[bad], tau[bad] = np.nan, np.nan
    return rho, tau


@dataclass
class SystemInputs:
    """What `system_agreement` reads from `meta_evaluate`: scores on expert rows, the rows of each
    (subset, LLM), and each (subset, LLM, judge)'s resampled metrics (with "_x", "_y" means)."""

    values: dict[str, np.ndarray]
    expert: np.ndarray
    rows_of: dict[tuple[str, str], np.ndarray]
    samples: dict[tuple[str, str, str], dict[str, np.ndarray]] = field(default_factory=dict)


def system_agreement(data: SystemInputs, models: Sequence[str], subsets: Sequence[str],
                     confidence: float) -> pd.DataFrame:
    """Per judge and subset: Spearman and Kendall between the LLMs ordered by the judge's mean
    score and by the experts' mean score (on the rows the judge scored), with percentile
    intervals from the same answer resamples as the metric tables."""
    out = []
    for j, v in data.values.items():
        for subset in subsets:
            means = np.array([[np.mean(v[r][np.isfinite(v[r])]) if np.isfinite(v[r]).any() else np.nan,
                               np.mean(data.expert[r][np.isfinite(v[r])]) if np.isfinite(v[r]).any() else np.nan]
                              for r in (data.rows_of[subset, m] for m in models)])
            rho, tau = rank_agreement(means[None, :, 0], means[None, :, 1])
            got = [data.samples.get((subset, m, j), {}) for m in models]
            cis = {"spearman": (np.nan, np.nan), "kendall": (np.nan, np.nan)}
            if got and all("_x" in g for g in got):
                rs, ts = rank_agreement(np.column_stack([g["_x"] for g in got]),
                                        np.column_stack([g["_y"] for g in got]))
                cis = {"spearman": bs.percentile_ci(rs, confidence), "kendall": bs.percentile_ci(ts, confidence)}
            for stat, point in (("spearman", rho[0]), ("kendall", tau[0])):
                out.append({"judge": j, "group": subset, "statistic": stat, "value": float(point),
                            "ci_low": cis[stat][0], "ci_high": cis[stat][1], "n_models": len(models)})
    return pd.DataFrame(out, columns=["judge", "group", "statistic", "value", "ci_low", "ci_high", "n_models"])


def paired_differences(records: pd.DataFrame, samples: dict[tuple[str, str, str], dict[str, np.ndarray]],
                       pairs: Sequence[tuple[str, str]], models: Sequence[str], subset: str, avg: str,
                       confidence: float) -> pd.DataFrame:
    """For each (combined judge, member): per metric, the Avg.-over-LLMs difference combined −
    member and its paired percentile interval (both on the same resamples)."""
    out: list[dict[str, Any]] = []
    avg_rows = records[(records["model"] == avg) & (records["group"] == subset)].set_index(["judge", "metric"])
    for combined, member in pairs:
        for metric in dict.fromkeys(records["metric"]):
            diff = float(avg_rows.loc[(combined, metric), "value"] - avg_rows.loc[(member, metric), "value"])
            lo = hi = np.nan
            a = [samples.get((subset, m, combined), {}).get(metric) for m in models]
            b = [samples.get((subset, m, member), {}).get(metric) for m in models]
            if a and all(x is not None for x in a + b):
                d = np.mean(np.stack(a), axis=0) - np.mean(np.stack(b), axis=0)  # type: ignore[arg-type]
                lo, hi = bs.percentile_ci(d, confidence)
            out.append({"combined": combined, "member": member, "metric": metric, "difference": diff,
                        "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(out, columns=["combined", "member", "metric", "difference", "ci_low", "ci_high"])
