"""Agreement between a judge's scores and the experts' — point estimates.

For one evaluated LLM, with `x` the judge's scores and `y` the experts' aggregate scores on the
same rows:

* `spearman` — Spearman's rank correlation, ties given their average rank (scipy);
* `kendall`  — Kendall's tau-b (scipy), which corrects for ties on both sides;
* `pearson`  — Pearson's linear correlation (scipy);
* `mae`      — mean absolute error |x − y|, in scale points;
* `exact`    — share of rows where the judge's score rounded half away from zero lies within
  0.5 of the experts' aggregate (with integer aggregates: the rounded score equals it; an
  aggregate of 1.5 agrees with both 1 and 2);
* `within1`  — share of rows where the rounded judge score lies within 1 of the aggregate;
* `vc`       — Verdict Confidence. The model card defines it as "the maximum empirical
  probability among the assigned scores". We read it so that it depends on the judge: per row,
  pool the individual expert scores (without -1) with the judge's rounded score; the row's VC is
  the share of the most frequent value in that pool; `vc` is the mean over rows. Rows without
  individual expert scores have no VC and are left out of that mean. A judge that sides with
  the experts' majority raises VC; one that contradicts unanimous experts lowers it.

Correlations are undefined when either side is constant (or has fewer than two rows): they are
NaN, with a warning that says which judge and model, never an exception.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats

from pollux.metaeval.experts import MetaEvalWarning
from pollux.metaeval.scores import round_half_away

METRICS = ("spearman", "mae", "vc", "kendall", "pearson", "exact", "within1")
CORRELATIONS = ("spearman", "kendall", "pearson")
LABELS = {
    "spearman": "Spearman",
    "mae": "MAE",
    "vc": "Verdict Confidence",
    "kendall": "Kendall tau-b",
    "pearson": "Pearson",
    "exact": "Exact agreement",
    "within1": "±1 agreement",
}
# Higher is better for all but MAE (used when marking the best judge of a row).
LOWER_IS_BETTER = frozenset({"mae"})


def row_vc(judge: np.ndarray, annotations: np.ndarray) -> np.ndarray:
    """Each row's Verdict Confidence: the share of the most frequent value among the row's
    expert scores (NaN-padded `annotations`, shape (n, k)) plus the judge's rounded score.
    NaN where the row has no expert score or no judge score."""
    pool = np.concatenate([annotations, round_half_away(judge)[:, None]], axis=1)
    present = ~np.isnan(pool)
    freq = (pool[:, :, None] == pool[:, None, :]).sum(axis=2)  # NaN never equals anything
    out = freq.max(axis=1) / np.maximum(present.sum(axis=1), 1)
    no_experts = np.isnan(annotations).all(axis=1)
    out[no_experts | np.isnan(judge)] = np.nan
    return out


def row_values(x: np.ndarray, y: np.ndarray, annotations: np.ndarray) -> dict[str, np.ndarray]:
    """Per-row terms whose means are the mean-type metrics."""
    r = round_half_away(x)
    return {
        "mae": np.abs(x - y),
        "exact": (np.abs(r - y) <= 0.5).astype(float),
        "within1": (np.abs(r - y) <= 1.0).astype(float),
        "vc": row_vc(x, annotations),
    }


def _constant(v: np.ndarray) -> bool:
    return v.size < 2 or bool(np.all(v == v[0]))


def correlation_problem(x: np.ndarray, y: np.ndarray) -> str | None:
    """Why correlations are undefined here, or None when they are defined."""
    if x.size < 2:
        return f"only {x.size} row(s)"
    if _constant(x):
        return f"the judge's scores are constant ({x[0]:g})"
    if _constant(y):
        return f"the experts' scores are constant ({y[0]:g})"
    return None


def point_metrics(
    x: np.ndarray, y: np.ndarray, annotations: np.ndarray, *, context: str = "", warn: bool = True
) -> dict[str, float]:
    """All metrics on rows where both scores exist (the caller has dropped the others)."""
    out: dict[str, float] = {}
    for name, values in row_values(x, y, annotations).items():
        ok = ~np.isnan(values)
        out[name] = float(values[ok].mean()) if ok.any() else float("nan")
    problem = correlation_problem(x, y)
    if problem is not None:
        if warn:
            warnings.warn(f"{context}: {problem}; Spearman, Kendall and Pearson are NaN",
                          MetaEvalWarning, stacklevel=2)
        out.update(dict.fromkeys(CORRELATIONS, float("nan")))
        return out
    out["spearman"] = float(stats.spearmanr(x, y).statistic)
    out["kendall"] = float(stats.kendalltau(x, y, variant="b").statistic)
    out["pearson"] = float(stats.pearsonr(x, y).statistic)
    return out
