"""The answer-level bootstrap: every vectorised statistic equals the plain computation on the
materialised resample, and resampling keeps an answer's rows together."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pollux.metaeval import load_experts, meta_evaluate, scores_from_frame
from pollux.metaeval.bootstrap import (
    kendall_resampled,
    mean_resampled,
    pearson_resampled,
    percentile_ci,
    resample_counts,
    spearman_resampled,
)

N_ANSWERS, PER_ANSWER, B = 40, 5, 25


def materialised(x, y, answer, counts_row):
    """The resample as rows: every row of a drawn answer, as many times as it was drawn."""
    reps = counts_row[answer].astype(int)
    return np.repeat(x, reps), np.repeat(y, reps)


def data(kind: str, rng: np.random.Generator):
    answer = np.repeat(np.arange(N_ANSWERS), PER_ANSWER)
    n = answer.size
    y = rng.integers(0, 3, n).astype(float)
    if kind == "continuous":  # a regression head: no ties, few expert values
        x = y + rng.normal(size=n)
    elif kind == "continuous-with-ties":  # identical content judged once → identical scores
        x = y + rng.normal(size=n)
        x[:30] = x[30:60]
    elif kind == "integer":  # text scores: few values on both sides
        x = rng.integers(0, 3, n).astype(float)
    else:  # both sides with many values
        y = rng.normal(size=n)
        x = np.round(y * 10 + rng.normal(size=n) * 5)
    return x, y, answer


@pytest.mark.parametrize("kind", ["continuous", "continuous-with-ties", "integer", "many-values"])
def test_resampled_statistics_equal_scipy_on_materialised_resamples(kind):
    rng = np.random.default_rng(3)
    x, y, answer = data(kind, rng)
    counts = resample_counts(N_ANSWERS, B, rng)
    rho = spearman_resampled(x, y, answer, counts)
    r = pearson_resampled(x, y, answer, counts)
    mae = mean_resampled(np.abs(x - y), answer, counts)
    tau = kendall_resampled(x, y, answer, counts)
    for b in range(B):
        xs, ys = materialised(x, y, answer, counts[b])
        assert rho[b] == pytest.approx(stats.spearmanr(xs, ys).statistic, abs=1e-9)
        assert r[b] == pytest.approx(stats.pearsonr(xs, ys).statistic, abs=1e-9)
        assert mae[b] == pytest.approx(np.abs(xs - ys).mean(), abs=1e-12)
        assert tau[b] == pytest.approx(stats.kendalltau(xs, ys).statistic, abs=1e-12)


def test_resample_counts_draw_answers_with_replacement():
    counts = resample_counts(7, 1000, np.random.default_rng(0))
    assert counts.shape == (1000, 7)
    assert (counts.sum(axis=1) == 7).all()  # as many answers as there are
    assert 0.3 < (counts == 0).mean() < 0.45  # ≈ (1 − 1/7)^7 ≈ 0.34 of answers left out


def test_constant_resample_is_nan_and_ci_ignores_it():
    x = np.array([1.0, 1.0, 2.0, 3.0])
    y = np.array([0.0, 0.0, 1.0, 2.0])
    answer = np.array([0, 0, 1, 2])
    counts = np.array([[3.0, 0, 0], [1, 1, 1]])  # the first resample draws answer 0 only
    rho = spearman_resampled(x, y, answer, counts)
    assert np.isnan(rho[0]) and rho[1] == pytest.approx(1.0)
    assert percentile_ci(rho) == (1.0, 1.0)
    assert all(np.isnan(v) for v in percentile_ci(np.full(3, np.nan)))


def experts_with_copies(copies: int) -> tuple[pd.DataFrame, list[float]]:
    """20 answers; each answer's criterion rows repeated `copies` times (same scores)."""
    rng = np.random.default_rng(5)
    rows, judge = [], []
    for a in range(20):
        e = float(rng.integers(0, 3))
        j = float(np.clip(e + rng.normal(0, 0.7), 0, 2))
        for c in range(copies):
            rows.append({"instruction": f"Задание {a}", "answer": f"Ответ {a}", "model_id": "m",
                         "task_type": "Стайл-трансфер", "criteria_name": f"Критерий {c}",
                         "rubrics": "0: нет\n\n1: частично\n\n2: да", "criteria_score": e})
            judge.append(j)
    return pd.DataFrame(rows), judge


def test_bootstrap_resamples_answers_not_rows():
    """Copying every row of an answer k times changes neither the answers nor the resample
    distribution of a mean: the intervals stay the same. A row bootstrap would narrow them ~√k."""
    cis = []
    for copies in (1, 6):
        raw, judge = experts_with_copies(copies)
        experts = load_experts(raw)
        assert experts.frame["answer_id"].nunique() == 20
        scores = scores_from_frame(pd.DataFrame({"key": experts.frame["key"], "score": judge}), judge="J")
        result = meta_evaluate(experts, scores, split="all", n_bootstrap=400, seed=11, by_group=False)
        row = result.metrics.query("model == 'm' and metric == 'mae'").iloc[0]
        assert row["n_answers"] == 20
        cis.append((row["ci_low"], row["ci_high"]))
    assert cis[0] == pytest.approx(cis[1], abs=1e-12)
    assert cis[0][1] - cis[0][0] > 0.05


def test_avg_interval_and_paired_resamples_across_judges():
    raw, judge = experts_with_copies(3)
    raw = pd.concat([raw, raw.assign(model_id="m2")], ignore_index=True)
    experts = load_experts(raw)
    j = judge + judge
    scores = [scores_from_frame(pd.DataFrame({"key": experts.frame["key"], "score": j}), judge=name)
              for name in ("A", "B")]
    result = meta_evaluate(experts, scores, split="all", n_bootstrap=300, seed=2, by_group=False)
    m = result.metrics.set_index(["judge", "model", "metric"])
    # Same scores, same answers, same resamples: identical intervals for both judges.
    for metric in ("spearman", "mae", "pearson", "exact"):
        assert m.loc[("A", "Avg.", metric), "ci_low"] == m.loc[("B", "Avg.", metric), "ci_low"]
        low, val, high = m.loc[("A", "Avg.", metric), ["ci_low", "value", "ci_high"]]
        assert low <= val <= high
    # No per-expert annotations in this data: VC is undefined, not made up.
    assert np.isnan(m.loc[("A", "Avg.", "vc"), "value"])


@pytest.mark.parametrize("ties", [False, True])
def test_spearman_is_exact_at_pollux_size(ties):
    """One LLM of the ~40k-answer shape (5,750 answers × 4 criteria = 23,000 rows, 7 expert
    values, a continuous judge): every resample's rho equals scipy's on the materialised rows
    within 1e-9. The sums behind rho reach ~1e8, beyond float32's exact integers: the former
    float32 product was off by ~3e-7 here."""
    rng = np.random.default_rng(8)
    n_answers, per_answer = 5750, 4
    answer = np.repeat(np.arange(n_answers), per_answer)
    y = rng.integers(0, 7, answer.size) / 3.0
    x = y + rng.normal(size=answer.size)
    if ties:  # identical content judged once → identical scores on a few rows
        x[:500] = x[500:1000]
    counts = resample_counts(n_answers, 4, rng)
    rho = spearman_resampled(x, y, answer, counts)
    for b in range(counts.shape[0]):
        xs, ys = materialised(x, y, answer, counts[b])
        assert rho[b] == pytest.approx(stats.spearmanr(xs, ys).statistic, abs=1e-9)


def test_one_resample_set_serves_every_judge_and_group():
    """Counts drawn once per LLM: a second judge with identical scores gets bit-identical samples,
    and the group "all" of a one-group dataset is the whole table (same resamples)."""
    raw, judge = experts_with_copies(4)
    raw["criteria_group"] = "general"
    experts = load_experts(raw)
    scores = [scores_from_frame(pd.DataFrame({"key": experts.frame["key"], "head_score": judge}), judge=name)
              for name in ("A", "B")]
    result = meta_evaluate(experts, scores, split="all", n_bootstrap=200, seed=4)
    m = result.metrics
    for metric in ("spearman", "mae", "pearson"):  # (no per-expert scores here: VC is NaN)
        cells = m[(m["metric"] == metric) & (m["model"] == "m")][["ci_low", "ci_high"]].to_numpy()
        assert len(cells) == 4  # 2 judges × (all, general)
        assert (cells == cells[0]).all()
