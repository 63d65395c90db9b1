"""Aggregation semantics: normalisation by the scale max, binary gates, group/criterion/grand means."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from pollux.aggregate import NO_GROUP, aggregate, prepare


def row(model, answer, criterion, score, smax=2.0, *, group="Г1", smin=0.0, error=None, cgroup=None):
    return {
        "model_id": model, "answer_key": f"{model}-{answer}", "record_id": answer, "task_group": group,
        "criteria_name": criterion, "criterion_id": None, "criterion_group": cgroup, "score": score,
        "scale_min": smin, "scale_max": smax, "error": error,
    }


def test_normalise_by_scale_max():
    df = pd.DataFrame([
        row("A", 1, "Полезность", 2.0, 2.0),
        row("A", 1, "Правильность", 3.0, 4.0),
        row("A", 2, "Полезность", 1.0, 2.0),
        row("A", 2, "Правильность", 1.0, 4.0),
    ])
    agg = aggregate(df)
    cells = agg.cells.set_index("criteria_name")["mean"]
    assert cells["Полезность"] == pytest.approx((1.0 + 0.5) / 2)
    assert cells["Правильность"] == pytest.approx((0.75 + 0.25) / 2)
    grand = agg.leaderboard.set_index("model_id").loc["A", "grand_mean"]
    assert grand == pytest.approx((0.75 + 0.5) / 2)


def test_binary_gate_zeroes_the_answer_and_is_excluded_from_means():
    df = pd.DataFrame([
        # answer 1 fails the gate (format violation = 1): its other scores count as 0
        row("A", 1, "Нарушение формата", 1.0, 1.0, cgroup="critical"),
        row("A", 1, "Полезность", 2.0),
        # answer 2 passes the gate
        row("A", 2, "Нарушение формата", 0.0, 1.0, cgroup="critical"),
        row("A", 2, "Полезность", 2.0),
    ])
    scores = prepare(df)
    assert scores["is_gate"].tolist() == [True, False, True, False]
    assert scores["gated"].tolist() == [False, True, False, False]
    agg = aggregate(df)
    # gate criteria never appear in the tables
    assert "Нарушение формата" not in set(agg.cells["criteria_name"])
    assert agg.cells["mean"].tolist() == [pytest.approx(0.5)]  # (0 + 1) / 2
    board = agg.leaderboard.set_index("model_id")
    assert board.loc["A", "gated_answers"] == 1
    assert board.loc["A", "grand_mean"] == pytest.approx(0.5)


def test_regression_gate_score_rounds():
    df = pd.DataFrame([
        row("A", 1, "Заглушка цензора", 0.3, 1.0),  # rounds to 0: not a failure
        row("A", 1, "Полезность", 2.0),
        row("A", 2, "Заглушка цензора", 0.7, 1.0),  # rounds to 1: failure
        row("A", 2, "Полезность", 2.0),
    ])
    scores = prepare(df)
    assert scores["gate_failed"].tolist() == [False, False, True, False]
    assert aggregate(df).cells["mean"].iloc[0] == pytest.approx(0.5)


def test_gate_modes_binary_vs_critical():
    # A task-specific binary criterion where 1 is good ("the code runs").
    df = pd.DataFrame([
        row("A", 1, "Работоспособность", 1.0, 1.0, cgroup="task"),
        row("A", 1, "Полезность", 2.0),
    ])
    assert aggregate(df, gates="binary").cells["mean"].tolist() == [0.0]
    critical = aggregate(df, gates="critical")
    means = critical.cells.set_index("criteria_name")["mean"]
    assert means["Работоспособность"] == 1.0 and means["Полезность"] == 1.0
    with pytest.raises(ValueError):
        aggregate(df, gates="nope")  # type: ignore[arg-type]


def test_out_of_scale_dropped_or_clipped_and_errors_ignored():
    df = pd.DataFrame([
        row("A", 1, "Полезность", 2.4),  # outside [0, 2]
        row("A", 2, "Полезность", 1.0),
        row("A", 3, "Полезность", None, error="boom"),
    ])
    dropped = aggregate(df)
    assert dropped.cells["mean"].iloc[0] == pytest.approx(0.5)
    assert dropped.cells["n"].iloc[0] == 1
    board = dropped.leaderboard.set_index("model_id")
    assert board.loc["A", "invalid"] == 1 and board.loc["A", "errors"] == 1
    clipped = aggregate(df, out_of_scale="clip")
    assert clipped.cells["mean"].iloc[0] == pytest.approx((1.0 + 0.5) / 2)


def test_group_weighting_and_per_model_tables():
    df = pd.DataFrame([
        # model A: group Г1 has three answers scoring 1.0, group Г2 one answer scoring 0.0
        *[row("A", i, "Полезность", 2.0, group="Г1") for i in range(3)],
        row("A", 9, "Полезность", 0.0, group="Г2"),
        row("B", 1, "Полезность", 1.0, group="Г1"),
        row("B", 2, "Полезность", 1.0, group=None),
    ])
    agg = aggregate(df)
    board = agg.leaderboard.set_index("model_id")
    # grand mean = mean of group means: (1.0 + 0.0) / 2, not the pooled 0.75
    assert board.loc["A", "grand_mean"] == pytest.approx(0.5)
    assert board.loc["B", "grand_mean"] == pytest.approx(0.5)
    assert NO_GROUP in agg.by_group["task_group"].tolist()
    assert list(agg.leaderboard["rank"]) == [1, 2]
    table = agg.criterion_table("A")
    assert table.loc["Полезность", "Г1"] == pytest.approx(1.0)
    assert table.loc["Полезность", "mean over groups"] == pytest.approx(0.5)
    assert table.loc["mean over criteria", "Г2"] == pytest.approx(0.0)
    matrix = agg.model_criterion_matrix()
    assert set(matrix.columns) == {"A", "B"}


def test_scale_from_catalog_when_verdict_has_none():
    class Crit:
        def __init__(self, lo, hi, group):
            self.scale = type("S", (), {"min": lo, "max": hi})()
            self.group = group

    class Cat:
        def find(self, key):
            return {"Полезность": Crit(0, 2, "subjective"), "censor": Crit(0, 1, "critical")}.get(key)

    df = pd.DataFrame([
        row("A", 1, "Полезность", 1.0, float("nan"), smin=float("nan")),
        row("A", 2, "Неизвестный", 1.0, float("nan"), smin=float("nan")),
    ])
    agg = aggregate(df, catalog=Cat())
    assert agg.cells["criteria_name"].tolist() == ["Полезность"]
    assert agg.cells["mean"].iloc[0] == pytest.approx(0.5)
    assert math.isclose(agg.leaderboard["grand_mean"].iloc[0], 0.5)


def test_per_model_table_corner_is_the_leaderboards_grand_mean():
    """A sparse criterion × group table (not every criterion in every group): the mean over
    groups of the per-group means (the leaderboard's grand mean, 0.5 here) differs from the mean
    over criteria of the per-criterion means (0.75). The table's corner is the grand mean, so the
    per-model table and the leaderboard never show two different "means" for one model."""
    df = pd.DataFrame([
        row("A", 1, "Полезность", 2.0, group="Г1"),  # 1.0
        row("A", 1, "Грамотность", 2.0, group="Г1"),  # 1.0
        row("A", 2, "Полезность", 0.0, group="Г2"),  # 0.0; Грамотность not judged in Г2
    ])
    agg = aggregate(df)
    grand = agg.leaderboard.set_index("model_id").loc["A", "grand_mean"]
    assert grand == pytest.approx(0.5)
    table = agg.criterion_table("A")
    assert table.loc["Полезность", "mean over groups"] == pytest.approx(0.5)
    assert table.loc["Грамотность", "mean over groups"] == pytest.approx(1.0)
    assert table.loc["mean over criteria", "Г1"] == pytest.approx(1.0)
    assert table.loc["mean over criteria", "Г2"] == pytest.approx(0.0)
    assert table.loc["mean over criteria", "mean over groups"] == pytest.approx(grand)
