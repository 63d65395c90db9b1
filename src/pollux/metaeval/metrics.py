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

* `kappa`  — quadratic-weighted Cohen's kappa between the judge's score rounded to the scale's
  levels (half away from zero) and the experts' aggregate: κ = 1 − Σ(r − y)² / Σᵢⱼ(rᵢ − yⱼ)²·/n,
  i.e. κ = 2·cov(r, y) / (var r + var y + (mean r − mean y)²) (population moments). On integer
  levels this is exactly scikit-learn's `cohen_kappa_score(weights="quadratic")` with the scale's
  levels as labels; with fractional aggregates (mean of several experts) the same formula is
  Lin's concordance coefficient of the two.
* `alpha`  — Krippendorff's alpha, ordinal metric, with two coders per row: the judge's rounded
  score and the experts' aggregate (each distinct value its own ordinal level):
  α = 1 − (n − 1)·Σ o_ck δ²_ck / Σ n_c n_k δ²_ck, δ_ck = Σ_{g=c..k} n_g − (n_c + n_k)/2.

Correlations are undefined when either side is constant (or has fewer than two rows): they are
NaN, with a warning that says which judge and model, never an exception.
"""

from __future__ import annotations

import warnings

import numpy as np

from pollux.metaeval.experts import MetaEvalWarning
from pollux.metaeval.scores import round_half_away

METRICS = ("spearman", "mae", "vc", "kendall", "pearson", "exact", "within1", "kappa", "alpha")
CORRELATIONS = ("spearman", "kendall", "pearson")
LABELS = {
    "spearman": "Spearman",
    "mae": "MAE",
    "vc": "Verdict Confidence",
    "kendall": "Kendall tau-b",
    "pearson": "Pearson",
    "exact": "Exact agreement",
    "within1": "±1 agreement",
    "kappa": "Cohen's kappa (quadratic)",
    "alpha": "Krippendorff's alpha (ordinal)",
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


def kappa_from_means(mx: np.ndarray | float, my: np.ndarray | float, mxx: np.ndarray | float,
                     myy: np.ndarray | float, mxy: np.ndarray | float) -> np.ndarray:
    """Quadratic-weighted kappa from the means of r, y, r², y², r·y (arrays: one per resample):
    1 − E(r − y)² / E_independent(r − y)² = 2(E ry − E r E y) / (E r² + E y² − 2 E r E y).
    NaN where both sides are one and the same constant (no disagreement is possible)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        den = np.asarray(mxx + myy - 2 * np.asarray(mx) * my, dtype=float)
        out = np.asarray(2 * (mxy - np.asarray(mx) * my) / den, dtype=float)
    return np.where(den > 1e-12 * np.maximum(np.abs(np.asarray(mxx + myy, dtype=float)), 1.0), out, np.nan)


def quadratic_kappa(x: np.ndarray, y: np.ndarray) -> float:
    """`kappa` of the module docstring on rows where both scores exist."""
    r = round_half_away(x)
    return float(kappa_from_means(r.mean(), y.mean(), (r * r).mean(), (y * y).mean(), (r * y).mean()))


def alpha_from_pairs(pairs: np.ndarray) -> np.ndarray:
    """Ordinal Krippendorff's alpha from coincidence matrices `pairs` (b, L, L), symmetric, over
    the L ordinal levels in ascending order (a level may have no values)."""
    n_c = pairs.sum(axis=2)
    n = n_c.sum(axis=1)
    cum = np.cumsum(n_c, axis=1)
    # δ_ck = Σ_{g=c..k} n_g − (n_c + n_k)/2 = cum_k − cum_c + (n_c − n_k)/2 for c ≤ k (squared: symmetric)
    d = cum[:, None, :] - cum[:, :, None] + (n_c[:, :, None] - n_c[:, None, :]) / 2
    delta = d * d
    observed = (pairs * delta).sum(axis=(1, 2))
    expected = (n_c[:, :, None] * n_c[:, None, :] * delta).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = 1 - (n - 1) * observed / expected
    return np.where(expected > 0, out, np.nan)


def alpha_codes(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, int]:
    """Each row's coincidence cell (code of r·L + code of y, r the rounded judge score) and L,
    the number of distinct values of both sides together."""
    r = round_half_away(x)
    levels, codes = np.unique(np.concatenate([r, y]), return_inverse=True)
    return codes[: r.size] * levels.size + codes[r.size:], int(levels.size)


def ordinal_alpha(x: np.ndarray, y: np.ndarray) -> float:
    """`alpha` of the module docstring on rows where both scores exist."""
    cells, n_levels = alpha_codes(x, y)
    o = np.bincount(cells, minlength=n_levels * n_levels).reshape(n_levels, n_levels).astype(float)
    return float(alpha_from_pairs((o + o.T)[None])[0])


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


def correlation_warning(x: np.ndarray, y: np.ndarray, context: str) -> str | None:
    """`correlation_problem`, warned about (the correlations are then NaN)."""
    problem = correlation_problem(x, y)
    if problem is not None:
        warnings.warn(f"{context}: {problem}; Spearman, Kendall and Pearson are NaN", MetaEvalWarning, stacklevel=3)
    return problem


def point_metrics(
    x: np.ndarray, y: np.ndarray, annotations: np.ndarray, *, context: str = "", warn: bool = True
) -> dict[str, float]:
    """All metrics on rows where both scores exist (the caller has dropped the others)."""
    out: dict[str, float] = {}
    for name, values in row_values(x, y, annotations).items():
        ok = ~np.isnan(values)
        out[name] = float(values[ok].mean()) if ok.any() else float("nan")
    out["kappa"] = quadratic_kappa(x, y) if x.size else float("nan")
    out["alpha"] = ordinal_alpha(x, y) if x.size > 1 else float("nan")
    if (correlation_warning(x, y, context) if warn else correlation_problem(x, y)) is not None:
        out.update(dict.fromkeys(CORRELATIONS, float("nan")))
        return out
    from scipy import stats  # ~1 s to import: here, not at start-up

    out["spearman"] = float(stats.spearmanr(x, y).statistic)
    out["kendall"] = float(stats.kendalltau(x, y, variant="b").statistic)
    out["pearson"] = float(stats.pearsonr(x, y).statistic)
    return out
