"""How far to trust a judge (issue 22, issue 20 item 4): the card's per-LLM cells, chance-corrected
agreement (checked against scikit-learn and the `krippendorff` package), system-level agreement
(against scipy), length bias, juries and repeat consistency — each on data whose answer is known.
"""

from __future__ import annotations

import html
import io
import json
import re
import warnings
from pathlib import Path

import krippendorff
import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import cohen_kappa_score
from tests.test_model_card_tables import known_judge, official_layout, pollux

from pollux.metaeval import (
    DEFAULT_OOD_TASKS,
    MetaEvalWarning,
    load_experts,
    meta_evaluate,
    render,
    scores_from_frame,
)
from pollux.metaeval.card import load_model_card
from pollux.metaeval.evaluate import _resampled
from pollux.metaeval.scores import round_half_away
from pollux.metaeval.trust import Jury, combine

RUBRIC = "0: плохо\n\n1: средне\n\n2: хорошо"
MODELS = ["m1", "m2", "m3", "m4", "m5"]


def expert_data(seed: int = 5, n_answers: int = 12) -> tuple[pd.DataFrame, np.ndarray]:
    """Five LLMs of increasing quality, three criteria per answer, one integer expert score per row
    (so Cohen's kappa and Krippendorff's alpha references apply), answers of varied length that
    the experts' scores do not follow."""
    rng = np.random.default_rng(seed)
    rows = []
    for k, m in enumerate(MODELS):
        for a in range(n_answers):
            answer = f"ответ {m} {a} " + "слово " * int(rng.integers(1, 60))
            for c in range(3):
                score = int(np.clip(round(k / 2 + rng.normal(scale=0.8)), 0, 2))
                rows.append({"instruction": f"Вопрос {a}", "reference_answer": "", "answer": answer, "model_id": m,
                             "task_type": "Стайл-трансфер", "criteria_name": f"Критерий {c}", "rubrics": RUBRIC,
                             "criteria_score": float(score), "annotations": [{"comment": "", "score": score}]})
    frame = pd.DataFrame(rows)
    return frame, frame["criteria_score"].to_numpy()


def judged(experts, scores: dict[str, np.ndarray], **kw):
    frames = [scores_from_frame(pd.DataFrame({"key": experts.frame["key"], "score": v}), judge=name)
              for name, v in scores.items()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetaEvalWarning)
        return meta_evaluate(experts, frames, split="all", by_group=False, **kw)


def noisy(y: np.ndarray, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(y + rng.normal(scale=0.7, size=y.size), 0, 2)


def test_kappa_and_alpha_match_scikit_learn_and_krippendorff_per_llm_and_on_a_resample():
    frame, y = expert_data()
    experts = load_experts(frame)
    x = noisy(y)
    result = judged(experts, {"J": x}, n_bootstrap=40, alpha_ci=True)
    m = result.metrics.set_index(["model", "metric"])
    model = experts.frame["model_id"].to_numpy()
    for name in MODELS:
        r, e = round_half_away(x[model == name]), y[model == name]
        want_k = cohen_kappa_score(r.astype(int), e.astype(int), weights="quadratic", labels=[0, 1, 2])
        want_a = krippendorff.alpha(reliability_data=np.vstack([r, e]), level_of_measurement="ordinal")
        assert abs(m.loc[(name, "kappa"), "value"] - want_k) < 1e-9
        assert abs(m.loc[(name, "alpha"), "value"] - want_a) < 1e-9
        for metric in ("kappa", "alpha"):
            assert m.loc[(name, metric), "ci_low"] <= m.loc[(name, metric), "ci_high"]
    for metric in ("kappa", "alpha"):  # Avg. is the plain mean over LLMs, with an interval
        assert m.loc[("Avg.", metric), "value"] == pytest.approx(np.mean([m.loc[(n, metric), "value"] for n in MODELS]))
        assert np.isfinite(m.loc[("Avg.", metric), "ci_low"])

    # One bootstrap resample (answers drawn with counts) = the references on the repeated rows.
    sel = model == "m3"
    answer = pd.factorize(experts.frame.loc[sel, "answer_id"])[0]
    counts = np.random.default_rng(7).integers(0, 4, size=answer.max() + 1).astype(float)
    got = _resampled(x[sel], y[sel], experts.annotations[sel], answer, counts[None], frozenset({"alpha"}))
    rep = counts[answer].astype(int)
    r, e = np.repeat(round_half_away(x[sel]), rep), np.repeat(y[sel], rep)
    assert abs(got["kappa"][0] - cohen_kappa_score(r.astype(int), e.astype(int), weights="quadratic",
                                                   labels=[0, 1, 2])) < 1e-9
    assert abs(got["alpha"][0] - krippendorff.alpha(reliability_data=np.vstack([r, e]),
                                                    level_of_measurement="ordinal")) < 1e-9


def test_kappa_and_alpha_in_every_output_format():
    frame, y = expert_data()
    result = judged(load_experts(frame), {"J": noisy(y)}, n_bootstrap=20)
    for fmt in ("table", "markdown", "html"):
        text = html.unescape(render(result, fmt, ("kappa", "alpha")))
        assert "Cohen's kappa" in text and "Krippendorff's alpha" in text  # rich wraps long titles
    csv = pd.read_csv(io.StringIO(render(result, "csv", ("kappa", "alpha"))))
    assert set(csv["metric"]) == {"kappa", "alpha"}
    data = json.loads(render(result, "json"))
    assert {"kappa", "alpha"} <= {r["metric"] for r in data["metrics"]}


def test_system_level_agreement_is_one_for_the_experts_and_minus_one_reversed():
    frame, y = expert_data()
    experts = load_experts(frame)
    result = judged(experts, {"same": y.copy(), "reversed": 2 - y, "noisy": noisy(y)}, n_bootstrap=50)
    system = result.diagnostics["system"].set_index(["judge", "statistic"])
    assert system.loc[("same", "spearman"), "value"] == pytest.approx(1.0)
    assert system.loc[("same", "kendall"), "value"] == pytest.approx(1.0)
    assert system.loc[("same", "spearman"), "ci_low"] == pytest.approx(1.0)  # every resample ranks alike
    assert system.loc[("reversed", "spearman"), "value"] == pytest.approx(-1.0)
    assert system.loc[("reversed", "kendall"), "value"] == pytest.approx(-1.0)
    model = experts.frame["model_id"].to_numpy()
    x = noisy(y)
    judge_means = [x[model == m].mean() for m in MODELS]
    expert_means = [y[model == m].mean() for m in MODELS]
    assert system.loc[("noisy", "spearman"), "value"] == pytest.approx(
        stats.spearmanr(judge_means, expert_means).statistic, abs=1e-12)
    assert system.loc[("noisy", "kendall"), "value"] == pytest.approx(
        stats.kendalltau(judge_means, expert_means).statistic, abs=1e-12)
    lo, hi = system.loc[("noisy", "spearman"), ["ci_low", "ci_high"]]
    assert -1 <= lo <= hi <= 1


def partial_spearman_by_residuals(j: np.ndarray, e: np.ndarray, length: np.ndarray) -> float:
    """Partial correlation of ranks through regression residuals (independent of the formula)."""
    rj, re_, rl = (stats.rankdata(v) for v in (j, e, length))
    design = np.column_stack([np.ones_like(re_), re_])
    res_j = rj - design @ np.linalg.lstsq(design, rj, rcond=None)[0]
    res_l = rl - design @ np.linalg.lstsq(design, rl, rcond=None)[0]
    return float(np.corrcoef(res_j, res_l)[0, 1])


def test_length_bias_flags_a_judge_whose_score_is_the_answer_length():
    frame, y = expert_data()
    experts = load_experts(frame)
    length = experts.frame["answer"].str.len().to_numpy(dtype=float)
    doctored = np.digitize(length, np.quantile(length, [1 / 3, 2 / 3])).astype(float)  # 0, 1, 2 by length
    honest = noisy(y)
    result = judged(experts, {"length": doctored, "honest": honest}, n_bootstrap=0)
    bias = result.diagnostics["length_bias"].set_index("judge")
    assert bool(bias.loc["length", "flagged"]) and not bool(bias.loc["honest", "flagged"])
    assert bias.loc["length", "partial_length_rho"] > 0.8
    for name, v in (("length", doctored), ("honest", honest)):
        want = partial_spearman_by_residuals(v, y, length)
        assert bias.loc[name, "partial_length_rho"] == pytest.approx(want, abs=1e-9)
        assert bias.loc[name, "judge_length_rho"] == pytest.approx(stats.spearmanr(v, length).statistic, abs=1e-12)


def test_a_jury_of_identical_judges_equals_one_member():
    frame, y = expert_data()
    experts = load_experts(frame)
    x = noisy(y)
    juries = [Jury("mean", ("A", "B"), "mean"), Jury("median", ("A", "B"), "median"),
              Jury("majority", ("A", "B", "C"), "majority")]
    result = judged(experts, {"A": x, "B": x.copy(), "C": round_half_away(x)}, n_bootstrap=30, juries=juries)
    m = result.metrics.set_index(["judge", "model", "metric"])[["value", "ci_low", "ci_high"]]
    for jury, member in (("mean", "A"), ("median", "A"), ("majority", "C")):
        pd.testing.assert_frame_equal(m.loc[jury], m.loc[member])
    diff = result.diagnostics["juries"]
    same = diff[(diff["combined"] == "mean") & (diff["member"] == "A") & ~diff["metric"].isin(["kendall", "alpha"])]
    assert len(same) == 7  # Kendall's and alpha's intervals only on request (--kendall-ci, --alpha-ci)
    assert (same["difference"].abs() < 1e-12).all() and (same["ci_low"] == 0).all() and (same["ci_high"] == 0).all()


def test_jury_rules_by_hand():
    a, b, c = np.array([0.0, 1, 2, np.nan]), np.array([2.0, 1, 0, 1]), np.array([2.0, 2, 0, 1])
    assert np.allclose(combine([a, b], "mean")[:3], [1, 1, 1]) and np.isnan(combine([a, b], "mean")[3])
    assert combine([a, b, c], "median")[:3].tolist() == [2, 1, 0]
    assert combine([a, b, c], "majority")[:3].tolist() == [2, 1, 0]
    assert combine([np.array([0.0]), np.array([1.0]), np.array([2.0])], "majority").tolist() == [1]  # tie: median


def test_repeat_consistency_through_score_files(tmp_path: Path):
    """Three runs of one judge (same name in each file): run 2 changes exactly 5 rows by 1 point."""
    frame = official_layout(tmp_path, n_instructions=6, per_answer=2)
    base = round_half_away(known_judge(frame, tmp_path / "base.jsonl"))
    runs = [base.copy(), base.copy(), base.copy()]
    ood = frame["task_type"].isin(DEFAULT_OOD_TASKS).to_numpy()
    changed = np.flatnonzero(ood)[:5]
    runs[1][changed] = np.where(runs[1][changed] >= 1, runs[1][changed] - 1, 1)
    paths = []
    for i, r in enumerate(runs):
        path = tmp_path / f"run{i}.jsonl"
        path.write_text("".join(json.dumps({"id": int(k), "score": float(s), "judge": "J"}) + "\n"
                                for k, s in zip(frame["id"], r, strict=True)), encoding="utf-8")
        paths += ["--scores", str(path)]
    done = pollux("meta-eval", str(tmp_path / "data"), *paths, "--on", "id", "--repeats", "3", "--format", "json",
                  "--bootstrap", "30")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    repeats = data["diagnostics"]["repeats"][0]
    usable = int((ood & frame["annotations"].map(lambda a: any(x["score"] >= 0 for x in a)).to_numpy()).sum())
    assert repeats["runs"] == 3 and repeats["n_rows"] == usable
    assert repeats["share_changed"] == pytest.approx(5 / usable)
    assert repeats["max_range"] == 1 and repeats["mean_range"] == pytest.approx(5 / usable)
    # The median of the three runs is run 1 (two runs agree everywhere): same metrics exactly.
    metrics = {(r["judge"], r["model"], r["metric"]): r["value"] for r in data["metrics"]}
    for (judge, model, metric), v in metrics.items():
        if judge == "J run 1":
            assert metrics["J run 1 median of 3 runs", model, metric] == v or (v != v)
    assert any(r["combined"] == "J run 1 mean of 3 runs" for r in data["diagnostics"]["juries"])


def test_card_cells_every_llm_spelling_and_warnings(tmp_path: Path):
    card = load_model_card()
    assert card.card_name("YandexGPT 4 Pro") == "YaGPT-4-Pro (2024-10-23)"
    assert card.card_name("GigaChat-Max (1.0.26.20)") == "GigaChat-Max (1.0.26.20)"
    assert card.card_name("GigaChat Max") == "GigaChat-Max (1.0.26.20)"
    assert card.card_name("gpt-4o-2024-08-06") == "GPT-4o (2024-08-06)"
    assert card.card_name("Meta-Llama-3.1-405B-Instruct") == "Llama-3.1-405B"
    assert card.card_name("gpt-4o-mini") is None
    for m in card.models:  # the card's own spellings all map to themselves
        assert card.card_name(m["card_name"]) == m["card_name"]
    assert card.judge("GPT-4o (2024-11-20)") == "GPT-4o"

    frame = official_layout(tmp_path)
    spelled = {m["model_id"]: m["card_name"] for m in card.models}
    spelled["yandexgpt-4-pro"] = "YandexGPT 4 Pro"  # the data file's spelling
    frame["model_id"] = frame["model_id"].map(spelled)
    extra = frame[frame["model_id"] == "o1 (2024-12-17)"].assign(model_id="my-llm", id=lambda f: f["id"] + 10**6)
    frame = pd.concat([frame, extra], ignore_index=True)
    for f in (tmp_path / "data").glob("*.parquet"):
        f.unlink()
    frame.to_parquet(tmp_path / "data" / "test-00000-of-00001.parquet")
    known_judge(frame, tmp_path / "scores.jsonl")
    for judge in ("pollux-judge-7b-r", "DeepSeek-R1", "M-Prometheus-14B", "GPT-4o"):
        run = pollux("meta-eval", str(tmp_path / "data"), "--scores", str(tmp_path / "scores.jsonl"), "--on", "id",
                     "--judge-name", judge, "--compare", "model-card", "--bootstrap", "20", "--split", "all")
        assert run.returncode == 0, run.stderr
        table, system = run.stdout.split("System-level agreement", 1)
        lines = [line for line in table.splitlines() if line.startswith(judge)]
        card_lines = [line for line in lines if "my-llm" not in line]
        assert len(card_lines) == 3 * 8 and not any("n/a" in line for line in card_lines)
        assert "my-llm" in run.stderr and "no row for dataset model(s) my-llm" in run.stderr
        assert "--split all is ignored with --compare model-card" in run.stderr
        assert re.search(rf"^{re.escape(judge)}\s+ood\s+all\s+spearman\s", system, re.M)
    # The card's printed Avg. beside the mean of its cells where they differ (0.019 vs 0.006).
    run = pollux("meta-eval", str(tmp_path / "data"), "--scores", str(tmp_path / "scores.jsonl"), "--on", "id",
                 "--judge-name", "M-Prometheus-14B", "--compare", "model-card", "--bootstrap", "0", "--format", "json")
    rows = {(r["metric"], r["model"]): r for r in json.loads(run.stdout)["comparison"]}
    assert rows["spearman", "Avg."]["card"] == 0.019
    assert rows["spearman", "Avg."]["card_cells_mean"] == pytest.approx(np.mean(
        [-0.006, -0.033, 0.027, 0.022, -0.044, 0.099, -0.022]))
    assert rows["spearman", "YaGPT-4-Pro (2024-10-23)"]["card"] == 0.099
    assert rows["mae", "Llama-3.1-405B"]["card"] == 1.912


@pytest.mark.slow
def test_repeats_of_a_judge_through_the_run_store_with_seeds(tmp_path: Path, tiny_judge_path: Path):
    """`--judge … --db --repeats 2 --temperature 1`: one run per sampling seed, each in its own store
    beside --db; a rerun judges nothing and gives the same consistency table."""
    official_layout(tmp_path, n_instructions=2, per_answer=1)
    args = ("meta-eval", str(tmp_path / "data"), "--judge", str(tiny_judge_path), "--db", str(tmp_path / "runs.db"),
            "--repeats", "2", "--temperature", "1.0", "--max-new-tokens", "8", "--threads", "1", "--bootstrap", "0",
            "--format", "json")
    first = pollux(*args)
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "runs.seed0.db").exists() and (tmp_path / "runs.seed1.db").exists()
    table = json.loads(first.stdout)["diagnostics"]["repeats"]
    assert len(table) == 1 and table[0]["runs"] == 2 and table[0]["n_rows"] == 14
    again = pollux(*args)
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("already holds every judgement") == 2
    assert json.loads(again.stdout)["diagnostics"]["repeats"] == table


def test_system_level_agreement_per_task_group_against_scipy(tmp_path: Path):
    """The released layout has task types of several task groups: one ranking per task group, each
    on that group's rows (checked against scipy), ρ = 1 for a judge equal to the experts."""
    from pollux.metaeval.groups import task_groups

    frame = official_layout(tmp_path, n_instructions=14, per_answer=2)
    experts = load_experts(tmp_path / "data")
    y = experts.frame["expert"].to_numpy()
    x = noisy(np.nan_to_num(y), seed=3)
    result = judged(experts, {"same": y.copy(), "noisy": x}, n_bootstrap=40)
    system = result.diagnostics["system"]
    mapping = task_groups(frame["task_type"])
    groups = sorted(set(mapping.values()))
    assert len(groups) >= 2
    tasks = experts.frame["task_type"].map(mapping).to_numpy()
    model = experts.frame["model_id"].to_numpy()
    models = list(dict.fromkeys(model))
    for g in groups:
        rows = system[system["group"] == f"task: {g}"].set_index(["judge", "statistic"])
        assert rows.loc[("same", "spearman"), "value"] == pytest.approx(1.0)
        ok = np.isfinite(y) & (tasks == g)
        jm = [x[ok & (model == m)].mean() for m in models]
        em = [y[ok & (model == m)].mean() for m in models]
        assert rows.loc[("noisy", "spearman"), "value"] == pytest.approx(stats.spearmanr(jm, em).statistic, abs=1e-12)
        assert rows.loc[("noisy", "kendall"), "value"] == pytest.approx(stats.kendalltau(jm, em).statistic, abs=1e-12)
        lo, hi = rows.loc[("noisy", "spearman"), ["ci_low", "ci_high"]]
        assert -1 <= lo <= hi <= 1


def test_jury_from_the_command_line_and_not_with_the_card(tmp_path: Path):
    """`--jury mean --jury majority` over two identical score files: each jury equals the judge,
    differences 0 with a [0, 0] interval; with --compare model-card it is a clear error."""
    frame = official_layout(tmp_path, n_instructions=6, per_answer=2)
    score = round_half_away(known_judge(frame, tmp_path / "a.jsonl"))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"id": int(k), "score": float(s)}) + "\n"
                                              for k, s in zip(frame["id"], score, strict=True)), encoding="utf-8")
    (tmp_path / "a.jsonl").write_text((tmp_path / "b.jsonl").read_text(encoding="utf-8"), encoding="utf-8")
    done = pollux("meta-eval", str(tmp_path / "data"), "--scores", str(tmp_path / "a.jsonl"), "--scores",
                  str(tmp_path / "b.jsonl"), "--on", "id", "--jury", "mean", "--jury", "majority", "--format", "json",
                  "--bootstrap", "30", "--no-groups")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["judges"] == ["a", "b", "jury mean (a, b)", "jury majority (a, b)"]
    values = {(r["judge"], r["model"], r["metric"]): (r["value"], r["ci_low"], r["ci_high"]) for r in data["metrics"]}
    for (judge, model, metric), v in values.items():
        if judge.startswith("jury"):
            assert v == values["a", model, metric]
    spearman = [r for r in data["diagnostics"]["juries"] if r["metric"] == "spearman"]
    assert len(spearman) == 4 and all(r["difference"] == 0 and r["ci_low"] == r["ci_high"] == 0 for r in spearman)
    card = pollux("meta-eval", str(tmp_path / "data"), "--scores", str(tmp_path / "a.jsonl"), "--on", "id",
                  "--jury", "mean", "--compare", "model-card")
    assert card.returncode == 2 and "--jury and --repeats are not in the model card" in card.stderr
    bad = pollux("meta-eval", str(tmp_path / "data"), "--scores", str(tmp_path / "a.jsonl"), "--on", "id",
                 "--jury", "average")
    assert bad.returncode == 2 and "unknown jury rule 'average'" in bad.stderr
