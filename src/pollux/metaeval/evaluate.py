"""`meta_evaluate`: judges against experts, per evaluated LLM, with bootstrap intervals.

Joins each judge's scores to the expert rows by content key, drops what cannot be compared
(expert score not applicable, judge score missing, errored or outside the rubric's scale — each
counted per judge and LLM), then computes every metric per evaluated LLM on the chosen split,
their mean over LLMs ("Avg.", as in the model card), and the same per criterion group.

All judges are scored on the same answer resamples (one seed per LLM and subset), so their
intervals are comparable, and the interval of "Avg." is the percentile interval of the mean
over LLMs within each resample.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pollux.metaeval import bootstrap as bs
from pollux.metaeval.domains import check_split
from pollux.metaeval.experts import ExpertData, MetaEvalWarning
from pollux.metaeval.groups import UNKNOWN, task_groups
from pollux.metaeval.metrics import (
    CORRELATIONS,
    METRICS,
    correlation_problem,
    correlation_warning,
    kappa_from_means,
    point_metrics,
    row_values,
)
from pollux.metaeval.scores import NUMBERS, parse_score_choices, round_half_away, select_scores
from pollux.metaeval.trust import (
    Jury,
    SystemInputs,
    combine,
    jury_reasons,
    length_bias,
    paired_differences,
    repeat_consistency,
    system_agreement,
)

AVG = "Avg."
ALL_GROUPS = "all"
GROUP_ORDER = ("critical", "general", "subjective", "domain", "task")
OUT_OF_SCALE = ("drop", "clip")


@dataclass
class MetaEvalResult:
    """`metrics`: one row per (judge, group, model, metric) with `value`, `ci_low`, `ci_high`,
    `n_rows`, `n_answers` (model "Avg." is the mean over LLMs). `coverage`: per judge and LLM,
    how many expert rows there were and why some were not compared. `sources`: each judge
    column's (judge, score choice) — with several scores compared (`score="auto,expected"`) a
    judge has one column per score, labelled "judge [score]"."""

    metrics: pd.DataFrame
    coverage: pd.DataFrame
    judges: list[str]
    models: list[str]
    groups: list[str]
    settings: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    sources: dict[str, tuple[str, str]] = field(default_factory=dict)
    diagnostics: dict[str, pd.DataFrame] = field(default_factory=dict)

    def table(self, metric: str, group: str = ALL_GROUPS, what: str = "value") -> pd.DataFrame:
        """Model-card shape: rows = evaluated LLMs then "Avg.", columns = judges."""
        m = self.metrics[(self.metrics["metric"] == metric) & (self.metrics["group"] == group)]
        wide = m.pivot(index="model", columns="judge", values=what)
        return wide.reindex(index=[*self.models, AVG], columns=self.judges)

    def group_table(self, metric: str, what: str = "value") -> pd.DataFrame:
        """Rows = criterion groups, columns = judges; each cell the "Avg." over LLMs."""
        m = self.metrics[(self.metrics["metric"] == metric) & (self.metrics["model"] == AVG)
                         & (self.metrics["group"] != ALL_GROUPS)]
        wide = m.pivot(index="group", columns="judge", values=what)
        return wide.reindex(index=self.groups, columns=self.judges)

    def to_dict(self) -> dict[str, Any]:
        def records(df: pd.DataFrame) -> list[dict[str, Any]]:
            return [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
                    for r in df.to_dict(orient="records")]

        return {"settings": self.settings, "judges": self.judges, "models": self.models,
                "sources": {k: {"judge": j, "score": c} for k, (j, c) in self.sources.items()},
                "groups": self.groups, "metrics": records(self.metrics),
                "coverage": records(self.coverage), "warnings": self.warnings,
                "diagnostics": {k: records(v) for k, v in self.diagnostics.items()}}


def _seed(seed: int, *parts: str) -> np.random.Generator:
    return np.random.default_rng([seed, *(zlib.crc32(p.encode("utf-8")) for p in parts)])


def score_label(judge: str, score: str, choices: Sequence[str]) -> str:
    """A judge's column: its name, or with several scores compared "name [score]"."""
    return judge if len(choices) == 1 else f"{judge} [{score}]"


def _join(experts: ExpertData, scores: pd.DataFrame, score: str | Sequence[str], out_of_scale: str,
          notes: list[str], sources: dict[str, tuple[str, str]] | None = None,
          ) -> tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
    """Per judge (and score, when several are compared: see `score_label`): its score on each
    expert row (NaN where not comparable) and the reasons. `sources` receives label → (judge,
    score)."""
    choices = parse_score_choices(score)
    values: dict[str, np.ndarray] = {}
    reasons: dict[str, dict[str, np.ndarray]] = {}
    lacking: list[str] = []
    for judge in pd.unique(scores["judge"]):
        sub = scores[scores["judge"] == judge]
        # The same verdict listed for several jobs (shared content) is one score, not a duplicate.
        sub = sub.drop_duplicates(["key", *NUMBERS, "error"])
        dup = int(sub["key"].duplicated().sum())
        if dup:
            notes.append(f"judge {judge}: {dup} duplicate score(s) for the same judgement; the last one is used")
        sub = sub.drop_duplicates("key", keep="last").reset_index(drop=True)
        for choice in choices:
            try:
                selected = select_scores(sub, choice)
            except ValueError as e:
                if len(choices) == 1:
                    raise
                lacking.append(str(e))
                continue
            if choice == "expected":
                _note_missing_expected(str(judge), sub, selected, notes)
            label = score_label(str(judge), choice, choices)
            values[label], reasons[label] = _on_expert_rows(experts, sub, selected, out_of_scale)
            if sources is not None:
                sources[label] = (str(judge), choice)
    if not values:
        raise ValueError("; ".join(lacking))
    notes += [f"{e} (left out of the comparison)" for e in lacking]
    return values, reasons


def _note_missing_expected(judge: str, sub: pd.DataFrame, expected: pd.Series, notes: list[str]) -> None:
    """One note per judge for the judgements with a greedy score but no expected score: they
    are left out of its expected-score tables (and counted under "no score"), never filled in."""
    greedy = sub["score"].notna().to_numpy() & sub["error"].isna().to_numpy()
    missing = int((greedy & expected.isna().to_numpy()).sum())
    if missing:
        notes.append(f"judge {judge}: {missing} of {int(greedy.sum())} judgement(s) with a greedy score have no "
                     "expected score (no token probabilities for them); left out of the expected-score tables, "
                     "counted under 'no score'")


def _on_expert_rows(experts: ExpertData, sub: pd.DataFrame, selected: pd.Series,
                    out_of_scale: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One judge's selected scores laid on the expert rows, and why a row has none."""
    frame = experts.frame
    sub = sub.set_index("key")
    pos = sub.index.get_indexer(frame["key"])  # -1: the judge has no score for this row
    has_record = pos >= 0
    errored = has_record & sub["error"].notna().to_numpy()[pos]
    v = np.where(has_record, selected.to_numpy(dtype=float)[pos], np.nan)
    no_score = has_record & ~errored & ~np.isfinite(v)
    v[~np.isfinite(v)] = np.nan
    lo, hi = frame["scale_min"].to_numpy(), frame["scale_max"].to_numpy()
    outside = (v < lo) | (v > hi)  # False where the scale is unknown (NaN) or v is NaN
    if out_of_scale == "clip":
        v = np.where(outside, np.clip(v, lo, hi), v)
    else:
        v[outside] = np.nan
    return v, {"missing": ~has_record, "error": errored, "no_score": no_score, "out_of_scale": outside}


def split_rows(experts: ExpertData, split: str) -> tuple[np.ndarray, str, str | None]:
    """(which rows are in `split`, the split applied, a note or None).

    Data in which no row has a `task_type` (e.g. the UI's review export of runs whose answers had
    none) cannot be split into in- and out-of-domain: every row is used, with a note, rather
    than an empty split ending the meta-evaluation. Rows of data that has task types are split
    as asked (a split that is then empty is the caller's error to report)."""
    check_split(split)
    frame = experts.frame
    n = len(frame)
    if split == "all":
        return np.ones(n, dtype=bool), split, None
    if n and not (frame["task_type"] != "").any():
        return np.ones(n, dtype=bool), "all", (f"no row has a task_type: split {split!r} does not apply; "
                                               f"all {n} rows are used")
    ood = frame["ood"].to_numpy()
    return (ood if split == "ood" else ~ood), split, None


def meta_evaluate(
    experts: ExpertData,
    scores: pd.DataFrame | Sequence[pd.DataFrame],
    *,
    score: str | Sequence[str] = "auto",
    split: str = "ood",
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    by_group: bool = True,
    out_of_scale: str = "drop",
    kendall_ci: bool = False,
    common_rows: bool = False,
    alpha_ci: bool = False,
    juries: Sequence[Jury] = (),
    repeats: Sequence[Sequence[str]] = (),
) -> MetaEvalResult:
    """Compare judges with experts. `scores`: score frame(s) from `pollux.metaeval.scores`.

    `score`: which score each judge contributes (`SCORE_CHOICES`); several (a comma list, a
    sequence, or "both" = auto,expected) give each judge one column per score, on the same
    resamples (paired intervals).
    `split`: "ood" (held-out task types), "id" or "all" (`split_rows`). `n_bootstrap=0` skips
    intervals. `out_of_scale`: "drop" (the official metrics' rule; counted) or "clip" to the scale.
    `common_rows`: compare every judge on the rows all judges scored.
    `alpha_ci`: also bootstrap Krippendorff's alpha (as costly as Spearman's resamples).
    `juries`: judges combined row by row (`trust.Jury`), added as judge columns; the
    "juries" diagnostic has each jury minus each member with paired intervals. `repeats`: groups
    of judge columns that are runs of one judge: each gets a median and a mean column and the
    "repeats" diagnostic (spread, share of rows whose score changes).

    Longer than most functions here on purpose: it is the one place that reads top to bottom as
    the meta-evaluation's steps (join, split, coverage, metrics, diagnostics), each a call.
    """
    check_split(split)
    if out_of_scale not in OUT_OF_SCALE:
        raise ValueError(f"out_of_scale must be one of {OUT_OF_SCALE}, got {out_of_scale!r}")
    notes: list[str] = []
    sources: dict[str, tuple[str, str]] = {}
    values, reasons = _join(experts, _one_frame(scores), score, out_of_scale, notes, sources)
    pairs = _add_juries(values, reasons, sources, juries, repeats)
    judges = list(values)
    in_split, applied, split_note = split_rows(experts, split)
    if not in_split.any():
        raise ValueError(f"no expert rows in split {split!r}: check the data's task_type values and the "
                         "out-of-domain task list (--ood-tasks), or use split 'all'")
    notes += [split_note] if split_note else []
    frame = experts.frame
    applicable = np.isfinite(frame["expert"].to_numpy())
    if common_rows:
        together = np.logical_and.reduce([np.isfinite(v) for v in values.values()])
        values = {j: np.where(together, v, np.nan) for j, v in values.items()}
    models = [str(m) for m in pd.unique(frame.loc[in_split, "model_id"])]
    coverage = _coverage(frame, values, reasons, models, in_split, applicable)
    notes += _coverage_notes(coverage, out_of_scale)
    subsets = _subsets(frame, in_split, by_group, notes)
    scored = _Scored(values=values, expert=frame["expert"].to_numpy(), annotations=experts.annotations,
                     answer=frame["answer_id"].to_numpy(), confidence=confidence, n_bootstrap=n_bootstrap,
                     task_rows_of=_task_rows(frame, models, in_split & applicable))
    slow = frozenset({"kendall"} if kendall_ci else set()) | frozenset({"alpha"} if alpha_ci else set())
    records = _metric_records(scored, frame, models, subsets, in_split & applicable, seed, slow, notes)
    diagnostics = _diagnostics(scored, frame, models, subsets, in_split & applicable, pd.DataFrame(records), pairs,
                               repeats)
    for note in notes:
        warnings.warn(note, MetaEvalWarning, stacklevel=2)
    settings = {"score": ",".join(parse_score_choices(score)), "split": applied, "split_requested": split,
                "n_bootstrap": n_bootstrap, "confidence": confidence, "seed": seed, "out_of_scale": out_of_scale,
                "common_rows": common_rows, "kendall_ci": kendall_ci, "alpha_ci": alpha_ci, **_source(experts)}
    return MetaEvalResult(metrics=pd.DataFrame(records), coverage=pd.DataFrame(coverage), judges=judges,
                          models=models, groups=subsets[1:], settings=settings, warnings=notes, sources=sources,
                          diagnostics=diagnostics)


def _source(experts: ExpertData) -> dict[str, Any]:
    """The settings that describe the expert data read."""
    return {"expert_source": experts.source, "expert_rows_skipped": len(experts.skipped),
            "expert_rows_excluded": {reason: len(w) for reason, w in experts.excluded.items()}}


def _add_juries(values: dict[str, np.ndarray], reasons: dict[str, dict[str, np.ndarray]],
                sources: dict[str, tuple[str, str]], juries: Sequence[Jury],
                repeats: Sequence[Sequence[str]]) -> list[tuple[str, str]]:
    """Each jury's (and each group of repeats' median and mean) column added to `values`; the
    (combined, member) pairs to compare."""
    given = list(values)
    wanted = [(j, list(j.members) or given) for j in juries]
    for group in repeats:
        wanted += [(Jury(how, tuple(group), f"{group[0]} {how} of {len(group)} runs"), list(group))
                   for how in ("median", "mean")]
    pairs = []
    for jury, members in wanted:
        unknown = [m for m in members if m not in given]
        if unknown:
            raise ValueError(f"jury {jury.how}: no judge {', '.join(map(repr, unknown))} (judges: {', '.join(given)})")
        label = jury.label(members)
        values[label] = combine([values[m] for m in members], jury.how)
        reasons[label] = jury_reasons([reasons[m] for m in members], values[label])
        sources[label] = (label, jury.how)
        pairs += [(label, m) for m in members]
    return pairs


TASK = "task: "  # the system-level table's label of a task group ("task: Преобразование заданного текста")


def _task_rows(frame: pd.DataFrame, models: list[str], usable: np.ndarray) -> dict[tuple[str, str], np.ndarray]:
    """The rows of each (task group, LLM), task groups from the taxonomy (`groups.task_groups`);
    none when the split has a single task group (the overall table says it all)."""
    tasks = frame["task_type"].to_numpy()
    mapping = task_groups(pd.unique(tasks[usable]))
    names = sorted(set(mapping.values()) - {UNKNOWN}) + ([UNKNOWN] if UNKNOWN in mapping.values() else [])
    if len(names) < 2:
        return {}
    code = pd.Series(tasks, dtype=object).map({t: names.index(g) for t, g in mapping.items()}).fillna(-1)
    code = code.to_numpy(dtype=np.int64) + 1  # 0: not in the split's usable rows
    model_code = pd.Categorical(frame["model_id"], categories=models).codes.astype(np.int64)
    key = np.where(usable, model_code * (len(names) + 1) + code, -1)  # one integer per (LLM, task group)
    order = np.argsort(key, kind="stable")
    bounds = np.searchsorted(key[order], np.arange(len(models) * (len(names) + 1) + 1))
    return {(TASK + g, m): order[bounds[i * (len(names) + 1) + k + 1]:bounds[i * (len(names) + 1) + k + 2]]
            for k, g in enumerate(names) for i, m in enumerate(models)}


def _diagnostics(scored: _Scored, frame: pd.DataFrame, models: list[str], subsets: list[str], usable: np.ndarray,
                 records: pd.DataFrame, pairs: list[tuple[str, str]],
                 repeats: Sequence[Sequence[str]]) -> dict[str, pd.DataFrame]:
    """The trust diagnostics (`pollux.metaeval.trust`) on the split's rows and resamples."""
    lengths = frame["answer"].astype(str).str.len().to_numpy(dtype=float)
    tasks = list(dict.fromkeys(t for t, _m in scored.task_rows_of))
    out = {"system": system_agreement(SystemInputs(scored.values, scored.expert,
                                                   {**scored.rows_of, **scored.task_rows_of}, scored.samples),
                                      models, [*subsets, *tasks], scored.confidence),
           "length_bias": length_bias(scored.values, scored.expert, lengths, usable)}
    if pairs:
        out["juries"] = paired_differences(records, scored.samples, pairs, models, ALL_GROUPS, AVG,
                                           scored.confidence)
    if repeats:
        out["repeats"] = repeat_consistency(scored.values, repeats, usable)
    return out


def _one_frame(scores: pd.DataFrame | Sequence[pd.DataFrame]) -> pd.DataFrame:
    if not isinstance(scores, pd.DataFrame):
        scores = pd.concat(list(scores), ignore_index=True) if len(scores) else pd.DataFrame()
    if scores.empty:
        raise ValueError("no judge scores were given")
    return scores


def _coverage(frame: pd.DataFrame, values: dict[str, np.ndarray], reasons: dict[str, dict[str, np.ndarray]],
              models: list[str], in_split: np.ndarray, applicable: np.ndarray) -> list[dict[str, Any]]:
    """Per judge and LLM: the expert rows of the split and why some were not compared."""
    model_col = frame["model_id"].to_numpy()
    coverage: list[dict[str, Any]] = []
    for j, v in values.items():
        r = reasons[j]
        for m in models:
            rows = in_split & (model_col == m)
            usable = rows & applicable
            coverage.append({
                "judge": j, "model": m, "n_rows": int(rows.sum()),
                "not_applicable": int((rows & ~applicable).sum()),
                "missing": int((usable & r["missing"]).sum()),
                "error": int((usable & r["error"]).sum()),
                "no_score": int((usable & r["no_score"]).sum()),
                "out_of_scale": int((usable & r["out_of_scale"]).sum()),
                "used": int((usable & np.isfinite(v)).sum()),
            })
    return coverage


def _coverage_notes(coverage: list[dict[str, Any]], out_of_scale: str) -> list[str]:
    """A note per judge and LLM that lost rows (or had scores clipped)."""
    notes = []
    for row in coverage:
        dropped = row["out_of_scale"] if out_of_scale == "drop" else 0  # clipped scores are used
        lost = row["missing"] + row["error"] + row["no_score"] + dropped
        if lost:
            notes.append(f"judge {row['judge']}, model {row['model']}: {lost} of {row['n_rows'] - row['not_applicable']}"
                         f" rows without a usable judge score (missing {row['missing']}, error {row['error']},"
                         f" no score {row['no_score']}, out of scale {row['out_of_scale']}"
                         + ("; out_of_scale='clip' would keep those" if dropped else "") + ")")
        elif row["out_of_scale"]:
            notes.append(f"judge {row['judge']}, model {row['model']}: {row['out_of_scale']} scores outside the"
                         " rubric's scale were clipped to it")
    return notes


def _subsets(frame: pd.DataFrame, in_split: np.ndarray, by_group: bool, notes: list[str]) -> list[str]:
    """ALL_GROUPS, then the criterion groups of the split in `GROUP_ORDER` (others sorted, unknown
    last) when a breakdown is asked for and the groups are known."""
    present = set(frame.loc[in_split, "group"].unique())  # (unique first: no Python loop over the rows)
    groups = [g for g in GROUP_ORDER if g in present] + sorted(present - {*GROUP_ORDER, UNKNOWN})
    groups += [UNKNOWN] if UNKNOWN in present else []
    if by_group and groups and groups != [UNKNOWN]:
        return [ALL_GROUPS, *groups]
    if by_group:
        notes.append("criterion groups are unknown (no taxonomy entry, no criteria_group column): no breakdown")
    return [ALL_GROUPS]


@dataclass
class _Scored:
    """What every metric cell reads: each judge's scores on the expert rows (NaN: not compared),
    the experts' aggregates and per-expert scores, each row's answer id, and the resampled
    metrics of every (subset, LLM, judge) — with their point values, computed beside them."""

    values: dict[str, np.ndarray]
    expert: np.ndarray
    annotations: np.ndarray
    answer: np.ndarray
    confidence: float
    n_bootstrap: int
    samples: dict[tuple[str, str, str], dict[str, np.ndarray]] = field(default_factory=dict)
    points: dict[tuple[str, str, str], dict[str, float]] = field(default_factory=dict)
    rows_of: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    task_rows_of: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)


def _metric_records(scored: _Scored, frame: pd.DataFrame, models: list[str], subsets: list[str],
                    usable: np.ndarray, seed: int, slow: frozenset[str], notes: list[str]) -> list[dict[str, Any]]:
    """Every metric's point value and interval per (judge, subset, LLM) and "Avg."; the warnings
    raised on the way (NaN correlations, empty cells) are appended to `notes`."""
    # Integer codes: comparing them is ~20x cheaper than comparing the text columns 40 times.
    model_code = pd.Index(models).get_indexer(frame["model_id"])  # -1: not one of them
    group_code = pd.Index(subsets[1:]).get_indexer(frame["group"])
    judges = list(scored.values)
    of_model = {m: usable & (model_code == i) for i, m in enumerate(models)}
    rows_of = {(subset, m): np.flatnonzero(of_model[m] & ((group_code == k - 1) if k else True))
               for k, subset in enumerate(subsets) for m in models}
    answers = {m: np.unique(scored.answer[of_model[m]]) for m in models}
    scored.rows_of = rows_of
    scored.samples, scored.points = _bootstrap(scored.values, scored.expert, scored.annotations, scored.answer,
                                               rows_of, answers, judges, scored.n_bootstrap, seed, slow,
                                               scored.task_rows_of)
    records: list[dict[str, Any]] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MetaEvalWarning)
        for subset in subsets:
            per_judge_samples: dict[str, dict[str, list[np.ndarray]]] = {j: {} for j in judges}
            for m in models:
                records += _cells(scored, subset, m, rows_of[subset, m], answers[m], per_judge_samples)
            for j in judges:
                records += _average(records, j, subset, models, per_judge_samples[j], scored.confidence,
                                    scored.n_bootstrap)
    notes += [str(w.message) for w in caught if issubclass(w.category, MetaEvalWarning)]
    for w in caught:  # anything else (numpy, scipy) is passed on, not swallowed
        if not issubclass(w.category, MetaEvalWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return records


def _cells(scored: _Scored, subset: str, m: str, rows: np.ndarray, answer_ids: np.ndarray,
           per_judge_samples: dict[str, dict[str, list[np.ndarray]]]) -> list[dict[str, Any]]:
    """One LLM's records in one subset, for every judge; each metric's resamples are added to
    `per_judge_samples` for the "Avg." interval."""
    local = np.searchsorted(answer_ids, scored.answer[rows])  # the answer's column in the counts
    out: list[dict[str, Any]] = []
    for j, v in scored.values.items():
        use = np.isfinite(v[rows])
        idx = rows[use]
        where = f"judge {j}, model {m}" + ("" if subset == ALL_GROUPS else f", group {subset}")
        cached = scored.points.get((subset, m, j))
        if cached is not None:
            point = cached
            correlation_warning(v[idx], scored.expert[idx], where)
        elif idx.size:
            point = point_metrics(v[idx], scored.expert[idx], scored.annotations[idx], context=where)
        else:
            point = dict.fromkeys(METRICS, np.nan)
            warnings.warn(f"{where}: no rows with both scores; all metrics are NaN", MetaEvalWarning, stacklevel=1)
        got = scored.samples.get((subset, m, j), {})
        n_answers = int(np.unique(local[use]).size)
        for metric in METRICS:
            s = got.get(metric)
            lo, hi = bs.percentile_ci(s, scored.confidence) if s is not None else (np.nan, np.nan)
            out.append({"judge": j, "group": subset, "model": m, "metric": metric, "value": point[metric],
                        "ci_low": lo, "ci_high": hi, "n_rows": int(idx.size), "n_answers": n_answers})
            per_judge_samples[j].setdefault(metric, []).append(
                s if s is not None else np.full(max(scored.n_bootstrap, 1), np.nan))
    return out


def _bootstrap(values: dict[str, np.ndarray], expert: np.ndarray, annotations: np.ndarray, answer: np.ndarray,
               rows_of: dict[tuple[str, str], np.ndarray], answers: dict[str, np.ndarray], judges: list[str],
               n_bootstrap: int, seed: int, slow: frozenset[str],
               task_rows_of: dict[tuple[str, str], np.ndarray] | None = None,
               ) -> tuple[dict[tuple[str, str, str], dict[str, np.ndarray]], dict[tuple[str, str, str], dict[str, float]]]:
    """Every (subset, LLM, judge)'s resampled metrics and point metrics, one LLM at a time.

    One resample set per LLM, shared by every criterion group: a group's rows are some rows of
    the same answers, so a group's resample is the whole resample restricted to that group (the
    answers a resample draws are the same in every table, and the count matrix and what Spearman
    derives from it are made once per LLM instead of once per LLM and group). LLMs run on a few
    threads (`bs.map_parallel`: the heavy steps are numpy calls that release the GIL, and one
    LLM's steps alone left a core idle); only that many LLMs' matrices exist at a time: on POLLUX
    they are ~150 MB per LLM, and touching fresh memory cost more than the arithmetic when all
    seven were kept. The point metrics (Kendall's tau is the costly one) are computed on the same
    threads, without warnings (`_cells` gives those, in order)."""
    out: dict[tuple[str, str, str], dict[str, np.ndarray]] = {}
    points: dict[tuple[str, str, str], dict[str, float]] = {}
    if not n_bootstrap:
        return out, points

    def one_llm(m: str) -> tuple[dict[tuple[str, str, str], dict[str, np.ndarray]], dict[tuple[str, str, str], dict[str, float]]]:
        mine: dict[tuple[str, str, str], dict[str, np.ndarray]] = {}
        mine_points: dict[tuple[str, str, str], dict[str, float]] = {}
        counts = _bootstrap_llm(mine, mine_points, m, answers[m], values, expert, annotations, answer, rows_of,
                                judges, n_bootstrap, seed, slow)
        _task_group_means(mine, m, answers[m], values, expert, answer, task_rows_of or {}, counts)
        return mine, mine_points

    # scipy.stats (point_metrics) imported here, not first on a pool thread: an extension module
    # loading (dlopen) on one thread while threadpoolctl walks the loaded libraries
    # (dl_iterate_phdr, with a Python callback) on another deadlocks on the loader lock and the GIL.
    import scipy.stats  # noqa: F401

    with bs.one_blas_thread():
        for mine, mine_points in bs.map_parallel(one_llm, [m for m, ids in answers.items() if ids.size]):
            out.update(mine)
            points.update(mine_points)
    return out, points


def _bootstrap_llm(out: dict[tuple[str, str, str], dict[str, np.ndarray]],
                   points: dict[tuple[str, str, str], dict[str, float]], m: str, ans_ids: np.ndarray,
                   values: dict[str, np.ndarray], expert: np.ndarray, annotations: np.ndarray, answer: np.ndarray,
                   rows_of: dict[tuple[str, str], np.ndarray], judges: list[str], n_bootstrap: int, seed: int,
                   slow: frozenset[str]) -> np.ndarray:
    """One LLM's resamples, drawn once, for every subset and judge (into `out`, the point metrics
    into `points`); the counts."""
    counts = bs.resample_counts(ans_ids.size, n_bootstrap, _seed(seed, ALL_GROUPS, m))
    for (subset, model), rows in rows_of.items():
        if model != m:
            continue
        local = np.searchsorted(ans_ids, answer[rows])
        for j in judges:
            use = np.isfinite(values[j][rows])
            if use.any():
                idx = rows[use]
                out[subset, m, j] = _resampled(values[j][idx], expert[idx], annotations[idx], local[use], counts,
                                               slow)
                points[subset, m, j] = point_metrics(values[j][idx], expert[idx], annotations[idx], warn=False)
    return counts


def _task_group_means(out: dict[tuple[str, str, str], dict[str, np.ndarray]], m: str, ans_ids: np.ndarray,
                      values: dict[str, np.ndarray], expert: np.ndarray, answer: np.ndarray,
                      task_rows_of: dict[tuple[str, str], np.ndarray], counts: np.ndarray) -> None:
    """Per task group, one LLM's resampled mean judge and expert scores ("_x", "_y": the
    system-level ranking per task group), on the LLM's resamples: three per-answer sums per group
    and judge (zero outside the group's answers: an answer has one task type), all groups and
    judges in one product with the count matrix — one pass over it, no copies of its columns."""
    mine = [(task, rows) for (task, model), rows in task_rows_of.items() if model == m and rows.size]
    if not mine:
        return
    sums = np.zeros((ans_ids.size, 3 * len(values) * len(mine)))
    col = 0
    for _task, rows in mine:
        local = np.searchsorted(ans_ids, answer[rows])
        for v in values.values():
            use = np.isfinite(v[rows])
            for w in (np.ones(int(use.sum())), v[rows][use], expert[rows][use]):
                sums[:, col] = np.bincount(local[use], weights=w, minlength=ans_ids.size)
                col += 1
    totals = counts @ sums
    with np.errstate(invalid="ignore", divide="ignore"):
        col = 0
        for task, _rows in mine:
            for j in values:
                n = totals[:, col]
                out[task, m, j] = {"_x": totals[:, col + 1] / n, "_y": totals[:, col + 2] / n}
                col += 3


def _resampled(x: np.ndarray, y: np.ndarray, ann: np.ndarray, a: np.ndarray, counts: np.ndarray,
               slow: frozenset[str]) -> dict[str, np.ndarray]:
    """Every metric per resample. Besides the metrics, "_x" and "_y" (the resampled mean judge
    and expert scores: the system-level ranking's input); kappa comes from the same product
    (the means of r, y, r², y², r·y); Kendall and alpha only when in `slow`."""
    n_answers = counts.shape[1]
    values = row_values(x, y, ann)
    defined = correlation_problem(x, y) is None
    r = round_half_away(x)
    # The mean-type metrics, Pearson, and the plain sums kappa and the LLM means need — all from
    # one product with the count matrix (one pass over it).
    sums = bs.mean_sums(values, a, n_answers)
    plain = np.stack([np.bincount(a, weights=w, minlength=n_answers)
                      for w in (np.ones_like(x), x, y, r, r * r, y * y, r * y)], axis=1)
    k = sums.shape[1]
    totals = counts @ np.hstack([sums, plain, *([bs.pearson_sums(x, y, a, n_answers)] if defined else [])])
    out = bs.means_from(list(values), totals[:, :k])
    with np.errstate(invalid="ignore", divide="ignore"):
        mx, my, mr, mrr, myy, mry = (totals[:, k + i] / totals[:, k] for i in range(1, 7))
    out["_x"], out["_y"] = mx, my
    out["kappa"] = kappa_from_means(mr, my, mrr, myy, mry)
    if "alpha" in slow:
        out["alpha"] = bs.alpha_resampled(x, y, a, counts)
    if defined:
        out["pearson"] = bs.pearson_from(totals[:, k + 7:])
        out["spearman"] = bs.spearman_resampled(x, y, a, counts)
        if "kendall" in slow:
            out["kendall"] = bs.kendall_resampled(x, y, a, counts)
    else:
        nan = np.full(counts.shape[0], np.nan)
        out.update({c: nan for c in CORRELATIONS})
    return out


def _average(records: list[dict[str, Any]], judge: str, subset: str, models: list[str],
             samples: dict[str, list[np.ndarray]], confidence: float, n_bootstrap: int) -> list[dict[str, Any]]:
    """ "Avg." rows: the mean over LLMs (NaN when any LLM's value is NaN) and its interval."""
    out = []
    nan_metrics = []
    mine = [r for r in records if r["judge"] == judge and r["group"] == subset]
    for metric in METRICS:
        vals = np.array([r["value"] for r in mine if r["metric"] == metric], dtype=float)
        value = float(vals.mean()) if vals.size else np.nan
        lo = hi = np.nan
        if n_bootstrap and samples.get(metric) and not np.isnan(value):
            lo, hi = bs.percentile_ci(np.mean(np.stack(samples[metric]), axis=0), confidence)
        if np.isnan(vals).any() and not np.isnan(vals).all():
            nan_metrics.append(metric)
        out.append({"judge": judge, "group": subset, "model": AVG, "metric": metric, "value": value,
                    "ci_low": lo, "ci_high": hi,
                    "n_rows": sum(r["n_rows"] for r in mine if r["metric"] == metric),
                    "n_answers": sum(r["n_answers"] for r in mine if r["metric"] == metric)})
    if nan_metrics:
        where = f"judge {judge}" + ("" if subset == ALL_GROUPS else f", group {subset}")
        warnings.warn(f"{where}: {', '.join(nan_metrics)} NaN for at least one LLM, so Avg. is NaN too",
                      MetaEvalWarning, stacklevel=1)
    return out
