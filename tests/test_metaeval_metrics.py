"""Meta-evaluation metrics checked against independent computations on hand-made data.

The reference implementations here are deliberately naive (pair loops, rank by counting) and
share no code with pollux.metaeval or scipy's rank routines.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest

from pollux.metaeval import MetaEvalWarning, load_experts, meta_evaluate, scores_from_frame
from pollux.metaeval.metrics import point_metrics, row_vc
from pollux.metaeval.scores import round_half_away

RUBRIC = "0: плохо\n\n1: средне\n\n2: хорошо"


# --- independent references -------------------------------------------------------------------

def avg_ranks(v: list[float]) -> list[float]:
    """Rank by counting: 1 + (number smaller) + (number of other equal values) / 2."""
    return [1 + sum(w < x for w in v) + (sum(w == x for w in v) - 1) / 2 for x in v]


def pearson_by_hand(a: list[float], b: list[float]) -> float:
    n = len(a)
    ma, mb = sum(a) / n, sum(b) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True))
    va = sum((x - ma) ** 2 for x in a)
    vb = sum((y - mb) ** 2 for y in b)
    return cov / math.sqrt(va * vb)


def kendall_b_by_hand(a: list[float], b: list[float]) -> float:
    conc = disc = ties_a = ties_b = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            da, db = a[i] - a[j], b[i] - b[j]
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif da * db > 0:
                conc += 1
            else:
                disc += 1
    return (conc - disc) / math.sqrt((conc + disc + ties_a) * (conc + disc + ties_b))


# --- hand-made data -----------------------------------------------------------------------------

JUDGE = [0.0, 1.0, 1.0, 2.0, 1.6, 0.4, 2.0, 0.5]
EXPERT = [0.0, 1.0, 2.0, 2.0, 1.5, 0.0, 1.0, 1.0]
ANNOT = [[0, 0], [1, 1, 2], [2, 2], [2, 2], [1, 2], [0, 1], [1, 1, 1], [1, 1]]


def annotations_array(rows: list[list[float]]) -> np.ndarray:
    width = max(len(r) for r in rows)
    return np.array([r + [np.nan] * (width - len(r)) for r in rows], dtype=float)


def test_spearman_with_ties_matches_average_ranks_by_hand():
    got = point_metrics(np.array(JUDGE), np.array(EXPERT), annotations_array(ANNOT))
    want = pearson_by_hand(avg_ranks(JUDGE), avg_ranks(EXPERT))
    assert got["spearman"] == pytest.approx(want, abs=1e-12)
    # A tiny case worked out on paper: x ranks 1, 2.5, 2.5, 4; y ranks 1, 3, 2, 4 → rho = 4.5 / sqrt(4.5·5).
    tiny = point_metrics(np.array([1.0, 2, 2, 3]), np.array([1.0, 3, 2, 4]), np.full((4, 1), np.nan))
    assert tiny["spearman"] == pytest.approx(4.5 / math.sqrt(4.5 * 5), abs=1e-12)


def test_kendall_pearson_mae_and_agreement_by_hand():
    got = point_metrics(np.array(JUDGE), np.array(EXPERT), annotations_array(ANNOT))
    assert got["kendall"] == pytest.approx(kendall_b_by_hand(JUDGE, EXPERT), abs=1e-12)
    assert got["pearson"] == pytest.approx(pearson_by_hand(JUDGE, EXPERT), abs=1e-12)
    assert got["mae"] == pytest.approx(sum(abs(a - b) for a, b in zip(JUDGE, EXPERT, strict=True)) / 8)
    # Rounded half away from zero: 0, 1, 1, 2, 2, 0, 2, 1 (0.5 → 1, not 0 as round-half-even would).
    rounded = [0, 1, 1, 2, 2, 0, 2, 1]
    assert list(round_half_away(np.array(JUDGE))) == rounded
    exact = [abs(r - e) <= 0.5 for r, e in zip(rounded, EXPERT, strict=True)]
    within = [abs(r - e) <= 1 for r, e in zip(rounded, EXPERT, strict=True)]
    assert exact == [True, True, False, True, True, True, False, True]
    assert got["exact"] == pytest.approx(6 / 8)
    assert got["within1"] == pytest.approx(sum(within) / 8)


def test_round_half_away_from_zero():
    assert list(round_half_away(np.array([0.5, 1.5, 2.5, -0.5, -1.5, 1.49, 0.0]))) == [1, 2, 3, -1, -2, 1, 0]


def test_verdict_confidence_by_hand():
    # Row by row: pool = experts (no -1, no padding) + judge rounded; VC = share of the mode.
    #  [0,0]+0 → 3/3; [1,1,2]+1 → 3/4; [2,2]+1 → 2/3; [2,2]+2 → 3/3; [1,2]+2 → 2/3;
    #  [0,1]+0 → 2/3; [1,1,1]+2 → 3/4; [1,1]+1 → 3/3
    want = [1, 3 / 4, 2 / 3, 1, 2 / 3, 2 / 3, 3 / 4, 1]
    got = row_vc(np.array(JUDGE), annotations_array(ANNOT))
    assert got == pytest.approx(want)
    assert point_metrics(np.array(JUDGE), np.array(EXPERT), annotations_array(ANNOT))["vc"] == pytest.approx(
        sum(want) / 8)
    # No individual expert scores: no VC for that row (left out of the mean), no judge: none either.
    assert np.isnan(row_vc(np.array([1.0]), np.full((1, 2), np.nan))).all()


def test_constant_inputs_give_nan_with_a_warning_not_a_crash():
    with pytest.warns(MetaEvalWarning, match="judge's scores are constant"):
        got = point_metrics(np.array([1.0, 1, 1]), np.array([0.0, 1, 2]), np.full((3, 1), np.nan), context="J")
    assert math.isnan(got["spearman"]) and math.isnan(got["kendall"]) and math.isnan(got["pearson"])
    assert got["mae"] == pytest.approx(2 / 3)
    with pytest.warns(MetaEvalWarning, match="experts' scores are constant"):
        point_metrics(np.array([0.0, 1, 2]), np.array([1.0, 1, 1]), np.full((3, 1), np.nan))
    with pytest.warns(MetaEvalWarning, match="only 1 row"):
        point_metrics(np.array([1.0]), np.array([1.0]), np.full((1, 1), np.nan))


# --- through meta_evaluate: -1 annotations, missing judge scores ------------------------------------

def expert_frame(rows: list[tuple[str, str, str, float, list[float]]]) -> pd.DataFrame:
    """(model, answer, criterion, criteria_score, per-expert scores) → POLLUX columns."""
    return pd.DataFrame({
        "instruction": [f"Вопрос к ответу {a}" for _m, a, _c, _s, _e in rows],
        "reference_answer": "",
        "answer": [a for _m, a, _c, _s, _e in rows],
        "model_id": [m for m, _a, _c, _s, _e in rows],
        "task_type": "Стайл-трансфер",
        "criteria_name": [c for _m, _a, c, _s, _e in rows],
        "rubrics": RUBRIC,
        "criteria_score": [s for _m, _a, _c, s, _e in rows],
        "annotations": [[{"comment": "", "score": x} for x in e] for _m, _a, _c, _s, e in rows],
    })


def test_minus_one_and_missing_scores_are_excluded_and_counted():
    rows = []
    for i, (e, ann) in enumerate(zip(EXPERT, ANNOT, strict=True)):
        rows.append(("m1", f"ответ {i}", "Грамотность", e, [*ann, -1]))  # a -1 expert among them
    rows.append(("m1", "ответ 100", "Грамотность", -1, [-1, -1]))  # not applicable
    rows.append(("m1", "ответ 101", "Грамотность", 2.0, [2, 2]))  # judge has no score
    rows.append(("m1", "ответ 102", "Грамотность", 2.0, [2, 2]))  # judge errored
    rows.append(("m1", "ответ 103", "Грамотность", 1.0, [1, 1]))  # judge never saw it
    rows.append(("m1", "ответ 104", "Грамотность", 1.0, [1, 1]))  # judge score out of the 0–2 scale
    experts = load_experts(expert_frame(rows))
    keys = experts.frame["key"].tolist()
    scores = scores_from_frame(pd.DataFrame({
        "key": [*keys[:8], keys[8], keys[9], keys[10], keys[12]],
        "head_score": [*JUDGE, 1.0, None, 1.0, 2.7],
        "error": [None] * 9 + [None, "CUDA out of memory", None],
    }), judge="J")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = meta_evaluate(experts, scores, split="all", n_bootstrap=50)
    cov = result.coverage.iloc[0].to_dict()
    assert cov == {"judge": "J", "model": "m1", "n_rows": 13, "not_applicable": 1, "missing": 1, "error": 1,
                   "no_score": 1, "out_of_scale": 1, "used": 8}
    assert any("4 of 12 rows without a usable judge score" in str(w.message) for w in caught)
    m = result.metrics.set_index(["group", "model", "metric"])["value"]
    assert m[("all", "m1", "spearman")] == pytest.approx(pearson_by_hand(avg_ranks(JUDGE), avg_ranks(EXPERT)))
    assert m[("all", "m1", "vc")] == pytest.approx(np.mean([1, 3 / 4, 2 / 3, 1, 2 / 3, 2 / 3, 3 / 4, 1]))
    assert m[("all", "Avg.", "mae")] == m[("all", "m1", "mae")]
    # clip keeps the out-of-scale score (2.7 → 2) instead of dropping it
    clipped = meta_evaluate(experts, scores, split="all", n_bootstrap=0, out_of_scale="clip")
    assert clipped.coverage.iloc[0]["used"] == 9


def test_avg_is_the_mean_over_llms_and_nan_when_one_is_nan():
    rows, judge = [], []
    for model, xs, ys in (("m1", [0, 1, 2, 2], [0, 1, 1, 2]), ("m2", [2, 1, 0, 1], [1, 1, 0, 2]),
                          ("m3", [1, 1, 1, 1], [0, 1, 2, 2])):  # m3: constant judge → NaN correlations
        for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
            rows.append((model, f"{model} ответ {i}", "Полезность", float(y), [y, y]))
            judge.append(float(x))
    experts = load_experts(expert_frame(rows))
    scores = scores_from_frame(pd.DataFrame({"key": experts.frame["key"], "score": judge}), judge="J")
    with pytest.warns(MetaEvalWarning, match="Avg. is NaN"):
        result = meta_evaluate(experts, scores, split="all", n_bootstrap=100)
    t = result.table("mae")["J"]
    assert t["Avg."] == pytest.approx((t["m1"] + t["m2"] + t["m3"]) / 3)
    assert t["m1"] == pytest.approx(1 / 4) and t["m3"] == pytest.approx(3 / 4)
    assert math.isnan(result.table("spearman")["J"]["Avg."])
    assert math.isnan(result.table("spearman")["J"]["m3"])
    s1 = pearson_by_hand(avg_ranks([0, 1, 2, 2]), avg_ranks([0, 1, 1, 2]))
    assert result.table("spearman")["J"]["m1"] == pytest.approx(s1)


def test_common_rows_and_kendall_intervals():
    rows = [("m", f"ответ {i}", "Полезность", float(e), [e, e]) for i, e in enumerate([0, 1, 2, 2, 1, 0, 2, 1])]
    experts = load_experts(expert_frame(rows))
    keys = experts.frame["key"].tolist()
    full = scores_from_frame(pd.DataFrame({"key": keys, "score": [0, 1, 2, 1, 1, 0, 2, 2]}), judge="full")
    half = scores_from_frame(pd.DataFrame({"key": keys[:5], "score": [0, 2, 2, 2, 1]}), judge="half")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetaEvalWarning)
        own = meta_evaluate(experts, [full, half], split="all", n_bootstrap=30, kendall_ci=True)
        common = meta_evaluate(experts, [full, half], split="all", n_bootstrap=30, common_rows=True)
    assert own.coverage.set_index("judge")["used"].to_dict() == {"full": 8, "half": 5}
    assert common.coverage.set_index("judge")["used"].to_dict() == {"full": 5, "half": 5}
    mae = common.table("mae")["full"]["m"]
    assert mae == pytest.approx(1 / 5)  # rows 0–4 only: one miss (2 vs 1)
    tau = own.metrics.query("judge == 'full' and model == 'm' and metric == 'kendall'").iloc[0]
    assert tau["ci_low"] <= tau["value"] <= tau["ci_high"]
    assert np.isnan(common.metrics.query("judge == 'full' and model == 'm' and metric == 'kendall'")
                    .iloc[0]["ci_low"])  # not requested


def test_groups_share_the_llm_resamples() -> None:
    """A criterion group is scored on the same answer resamples as the whole table: when the one
    group holds every row, its intervals are the whole table's, bit for bit (each group used to
    draw its own resamples, so its interval differed by resampling noise)."""
    rng = np.random.default_rng(5)
    rows = []
    for m in ("m1", "m2"):
        for i in range(30):
            for c in range(3):
                e = float(rng.integers(0, 3))
                rows.append({"instruction": f"q{i}", "answer": f"{m} a{i}", "model_id": m,
                             "criteria_name": f"c{c}", "criteria_group": "general", "rubrics": RUBRIC,
                             "criteria_score": e, "annotations": [e, float(rng.integers(0, 3))]})
    experts = load_experts(pd.DataFrame(rows))
    judge = np.clip(experts.frame["expert"].to_numpy() + rng.normal(scale=0.7, size=len(rows)), 0, 2)
    scores = scores_from_frame(pd.DataFrame({"key": experts.frame["key"], "head_score": judge}), judge="J")
    result = meta_evaluate(experts, scores, split="all", n_bootstrap=200)
    assert result.groups == ["general"]
    for metric in ("spearman", "mae", "vc", "pearson"):
        for what in ("ci_low", "ci_high"):
            whole = result.table(metric, what=what)["J"]
            group = result.table(metric, group="general", what=what)["J"]
            assert np.isfinite(whole.to_numpy()).all()
            np.testing.assert_array_equal(group.to_numpy(), whole.to_numpy())
