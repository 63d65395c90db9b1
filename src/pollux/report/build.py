"""`build_report(db, out_dir)`: a run's leaderboard as one standalone HTML file plus CSV / JSON exports.

The HTML file must open anywhere, offline, years later: charts are inline SVG drawn by
`pollux.report.svg`, the CSS and the few lines of JS (search and filters over the per-item
verdicts) are inlined from the package's `template.html`, and the verdicts travel as JSON inside
the page. Answers and rationales are untrusted text: the page never puts them into `innerHTML`,
and the embedded JSON is escaped so that no `</script>` inside an answer can end the data block.

When the database also holds `pollux compare` verdicts (`pairwise_judgements`), the report gets a
"Side by side" section computed by `pollux.pairwise.stored_tables` (the numbers `pollux compare`
printed); a database of `pollux compare` alone gets that section alone.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import Environment, FileSystemLoader, select_autoescape

from pollux import pairwise as pw
from pollux.aggregate import Aggregation, GateMode, OutOfScale, aggregate
from pollux.report import svg
from pollux.report.beside import beside_tables, load_entries, per_1k
from pollux.store import StoreError, read_runs, read_verdicts

TEMPLATE_DIR = Path(__file__).parent


@dataclass
class ReportFiles:
    out_dir: Path
    html: Path
    files: list[Path] = field(default_factory=list)
    run_id: int = 0
    leaderboard: list[dict[str, Any]] = field(default_factory=list)
    beside: dict[str, Any] | None = None
    pairwise: list[dict[str, Any]] | None = None  # the side-by-side comparisons in the database, if any

    def to_dict(self) -> dict[str, Any]:
        return {
            **({"beside": self.beside} if self.beside is not None else {}),
            **({"pairwise": self.pairwise} if self.pairwise is not None else {}),
            "out_dir": str(self.out_dir),
            "html": str(self.html),
            "files": [str(p) for p in self.files],
            "run_id": self.run_id,
            "leaderboard": self.leaderboard,
        }


def _clean(value: Any) -> Any:
    """NaN → None, numpy scalars → Python, for JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):
        value = value.item()
        if isinstance(value, float) and math.isnan(value):
            return None
    return value


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: _clean(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def _script_json(obj: Any) -> str:
    """JSON safe to place inside <script type="application/json">."""
    text = json.dumps(obj, ensure_ascii=False, default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def build_report(
    db: str | Path,
    out_dir: str | Path,
    *,
    run: int | None = None,
    catalog: Any = None,
    gates: GateMode = "binary",
    out_of_scale: OutOfScale = "drop",
    title: str | None = None,
    beside: Sequence[str | Path] = (),
    experts: str | Path | None = None,
    prices: str | Path | None = None,
    n_resamples: int = 1000,
) -> ReportFiles:
    """Aggregate one run of `db` (default: the latest) and write report.html, CSVs and report.json.

    With `beside` (more run stores, latest run each) and/or `experts` (an expert-scored file in
    POLLUX format), the report also places this run's models beside theirs, with bootstrap CIs
    (`pollux.report.beside`); `prices` adds USD to the per-1k-judgements table."""
    runs, pairwise = _runs_or_pairwise(db, n_resamples)
    if not runs:
        if run is not None:
            raise StoreError(f"{db}: no run {run}: the database holds side-by-side judgements only")
        assert pairwise is not None
        return _pairwise_only(db, Path(out_dir), pairwise, title, n_resamples)
    by_id = {r.run_id: r for r in runs}
    if run is None:
        run = runs[-1].run_id
    if run not in by_id:
        raise StoreError(f"{db}: no run {run} (runs: {', '.join(str(r) for r in by_id)})")
    info = by_id[run]
    df = read_verdicts(db, run=run)
    if df.empty:
        raise StoreError(f"{db}: run {run} holds no verdicts yet")
    agg = aggregate(df, catalog=catalog, gates=gates, out_of_scale=out_of_scale)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = _write_exports(out, agg)
    summary = _summary(db, info, agg, gates, out_of_scale)
    if beside or experts is not None or prices is not None:
        summary["beside"] = _beside(out, files, [db, *beside], experts, prices, catalog=catalog, gates=gates,
                                    out_of_scale=out_of_scale, n_resamples=n_resamples, run=run)
    if pairwise is not None:
        summary["pairwise"] = pairwise
        files.append(_write_pairwise_csv(out, pairwise))
    (out / "report.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2, default=str), encoding="utf-8")
    files.append(out / "report.json")

    html = out / "report.html"
    html.write_text(_render_html(agg, summary, title or f"POLLUX report — run {run}", n_resamples), encoding="utf-8")
    files.insert(0, html)
    return ReportFiles(out, html, files, run, summary["leaderboard"], summary.get("beside"), pairwise)


def _runs_or_pairwise(db: str | Path, n_resamples: int) -> tuple[list[Any], list[dict[str, Any]] | None]:
    """The database's runs and its side-by-side tables (None when it has no `pairwise_judgements`).
    A database written by `pollux compare` alone has no run tables: that is no error when it has
    side-by-side verdicts (the report is then that section alone)."""
    pairwise = pairwise_section(db, n_resamples=n_resamples)
    try:
        runs = read_runs(db)
    except StoreError as e:
        if pairwise is None:
            raise StoreError(f"{e}, nor side-by-side judgements of pollux compare") from None
        runs = []
    if not runs and pairwise is None:
        raise StoreError(f"{db}: the database holds no run yet (nor side-by-side judgements of pollux compare)")
    return runs, pairwise


def pairwise_section(db: str | Path, *, n_resamples: int = 1000, seed: int = 0) -> list[dict[str, Any]] | None:
    """Every side-by-side comparison stored in `db` with its tables, by `pollux.pairwise`'s own
    statistics (the numbers `pollux compare` printed); None when the database has none."""
    try:
        if not pw.has_judgements(db):
            return None
    except sqlite3.Error:  # not a SQLite file, or none there: read_runs names the problem
        return None
    return [pw.stored_tables(c, n_resamples=n_resamples, seed=seed) for c in pw.stored_comparisons(db)]


def pairwise_groups(cmp: dict[str, Any]) -> list[tuple[str, str | None, dict[str, Any]]]:
    """The table rows of one comparison: overall, then per criterion and per task type."""
    return [("overall", None, cmp["overall"]),
            *(("criterion", k, v) for k, v in cmp["per_criterion"].items()),
            *(("task", k, v) for k, v in cmp["per_task"].items())]


def _write_pairwise_csv(out: Path, comparisons: list[dict[str, Any]]) -> Path:
    """pairwise.csv: one row per comparison × group, each rate with its interval."""
    rows = []
    for cmp in comparisons:
        for scope, group, row in pairwise_groups(cmp):
            flat: dict[str, Any] = {"a": cmp["a"], "b": cmp["b"], "judge": cmp["judge"], "scope": scope,
                                    "group": group or "", "pairs": row["pairs"]}
            for key in ("win", "tie", "loss", "flip"):
                cell = row[key]
                flat |= {f"{key}_rate": cell["rate"], f"{key}_count": cell.get("count"),
                         f"{key}_ci_low": cell["ci"][0], f"{key}_ci_high": cell["ci"][1]}
            rows.append(flat)
    path = out / "pairwise.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _pairwise_only(db: str | Path, out: Path, comparisons: list[dict[str, Any]], title: str | None,
                   n_resamples: int) -> ReportFiles:
    """The report of a database with side-by-side judgements and no run: that section alone."""
    out.mkdir(parents=True, exist_ok=True)
    files = [_write_pairwise_csv(out, comparisons)]
    summary = {"database": str(db), "run_id": None, "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
               "leaderboard": [], "pairwise": comparisons}
    (out / "report.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2, default=str), encoding="utf-8")
    files.append(out / "report.json")
    html = out / "report.html"
    html.write_text(_environment().get_template("pairwise_page.html").render(
        title=title or "POLLUX report — side by side", summary=summary, **_pairwise_context(comparisons, n_resamples)),
        encoding="utf-8")
    files.insert(0, html)
    return ReportFiles(out, html, files, 0, [], None, comparisons)


def _pairwise_context(comparisons: list[dict[str, Any]] | None, n_resamples: int) -> dict[str, Any]:
    shown = None if comparisons is None else [{**c, "groups": pairwise_groups(c)} for c in comparisons]
    return {"pairwise": shown, "pairwise_rules": {"resamples": n_resamples}}


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(str(TEMPLATE_DIR)), autoescape=select_autoescape(["html"]))
    env.filters["score"] = lambda v: "–" if v is None else f"{v:.3f}"
    env.filters["rate"] = fmt_rate
    return env


def fmt_rate(cell: dict[str, Any]) -> str:
    """A rate with its interval, as `pollux compare` prints it: 80% [40%, 100%]."""
    if cell.get("rate") is None:
        return "–"
    lo, hi = cell["ci"]
    low = "–" if lo is None else f"{lo:.0%}"
    high = "–" if hi is None else f"{hi:.0%}"
    return f"{cell['rate']:.0%} [{low}, {high}]"


def _beside(out: Path, files: list[Path], dbs: list[str | Path], experts: str | Path | None,
            prices: str | Path | None, *, catalog: Any, gates: GateMode, out_of_scale: OutOfScale,
            n_resamples: int, run: int) -> dict[str, Any]:
    """The beside-reference tables (CSV files + the JSON summary's `beside` part)."""
    entries = load_entries(dbs, experts, catalog=catalog, gates=gates, out_of_scale=out_of_scale,
                           first_run=run)
    table = beside_tables(entries, n_resamples=n_resamples)
    cost = per_1k(dbs, prices, first_run=run)
    parts = {
        "leaderboard": table[table["scope"] == "overall"].sort_values("rank"),
        "by_task_group": table[table["scope"] == "task_group"].drop(columns=["rank"]),
        "by_criterion_group": table[table["scope"] == "criterion_group"].drop(columns=["rank"]),
        "per_1k": cost,
    }
    for name, frame in parts.items():
        path = out / f"beside_{name}.csv"
        frame.to_csv(path, index=False)
        files.append(path)
    summary: dict[str, Any] = {name: _records(frame) for name, frame in parts.items()}
    summary["rules"] = {"ci": f"95% percentile bootstrap over answers, {n_resamples} resamples",
                        "experts": None if experts is None else str(experts)}
    return summary


def _write_exports(out: Path, agg: Aggregation) -> list[Path]:
    files = []
    exports = {
        "leaderboard.csv": agg.leaderboard,
        "by_group.csv": agg.by_group,
        "by_criterion.csv": agg.by_criterion,
        "cells.csv": agg.cells,
        "verdicts.csv": agg.scores.drop(columns=["raw_text"], errors="ignore"),
    }
    for name, frame in exports.items():
        path = out / name
        frame.to_csv(path, index=False)
        files.append(path)
    return files


def _summary(db: str | Path, info: Any, agg: Aggregation, gates: str, out_of_scale: str) -> dict[str, Any]:
    scores = agg.scores
    return {
        "database": str(db),
        "run_id": info.run_id,
        "judge": info.judge,
        "config": info.config,
        "created_at": datetime.fromtimestamp(info.created_at, UTC).isoformat(timespec="seconds"),
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "rules": {"gates": gates, "out_of_scale": out_of_scale,
                  "grand_mean": "mean over task groups of the mean over criteria of normalised scores"},
        "counts": {
            "judgements": len(scores),
            "answers": int(scores["answer_key"].nunique()),
            "models": int(scores["model_id"].nunique()),
            "counted": int(scores["counted"].sum()),
            "errors": int(scores["error"].notna().sum()),
            "invalid": int((~scores["usable"] & scores["error"].isna()).sum()),
        },
        "leaderboard": _records(agg.leaderboard),
        "by_group": _records(agg.by_group),
        "by_criterion": _records(agg.by_criterion),
        "cells": _records(agg.cells),
    }


def _charts(agg: Aggregation, models: list[str], groups: list[str]) -> dict[str, str]:
    """The report's SVG charts: grand means, task groups, the criterion heatmap, score histograms."""
    board = agg.leaderboard
    grand = {m: _clean(v) for m, v in zip(board["model_id"], board["grand_mean"], strict=True)}
    group_table = {g: {r["model_id"]: _clean(r["mean"]) for _, r in agg.by_group[agg.by_group["task_group"] == g].iterrows()}
                   for g in groups}
    matrix_df = agg.model_criterion_matrix()
    matrix = {str(c): {m: _clean(matrix_df.loc[c, m]) if m in matrix_df.columns else None for m in models}
              for c in matrix_df.index}
    counted = agg.scores[agg.scores["counted"]]
    samples = {m: counted.loc[counted["model_id"] == m, "norm_score"].dropna().tolist() for m in models}
    return {
        "leaderboard": svg.hbar_chart(grand, title="Grand mean per model"),
        "groups": svg.grouped_bars(group_table, models, title="Mean per task group"),
        "heatmap": svg.heatmap(matrix, models, title="Criterion × model"),
        "distribution": svg.histograms(samples, title="Distribution of normalised scores"),
        "legend": svg.legend(models),
    }


def _verdict_columns(scores: pd.DataFrame) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The page's verdict table, column-wise (names once, then rows as arrays: a run has 100k+
    verdicts), and the answers' texts, stored once per answer (an answer has ~15 verdicts; each
    verdict row points at its answer's index)."""
    verdict_cols = ["model_id", "record_id", "source", "line", "task_type", "task_group", "criteria_name",
                    "criterion_id", "score", "norm_score", "scale_max", "valid", "is_gate", "gated", "error",
                    "invalid_reason", "rationale"]
    present = [c for c in verdict_cols if c in scores.columns]
    text_cols = [c for c in ("instruction", "answer", "reference_answer") if c in scores.columns]
    answer_index = {key: i for i, key in enumerate(dict.fromkeys(scores["answer_key"]))}
    firsts = scores.drop_duplicates("answer_key")
    texts = [{c: _clean(row[c]) for c in text_cols} for _, row in firsts.iterrows()]
    frame = scores[present].assign(a=scores["answer_key"].map(answer_index))
    verdicts = {"columns": list(frame.columns),
                "rows": [[_clean(v) for v in row] for row in frame.itertuples(index=False, name=None)]}
    return verdicts, texts


def _render_html(agg: Aggregation, summary: dict[str, Any], title: str, n_resamples: int = 1000) -> str:
    board = agg.leaderboard
    models = board["model_id"].tolist()
    groups = sorted(agg.by_group["task_group"].unique().tolist())
    charts = _charts(agg, models, groups)
    verdicts, texts = _verdict_columns(agg.scores)
    table_rows = []
    for row in _records(board):
        table_rows.append({
            "rank": row["rank"], "model_id": row["model_id"], "grand_mean": row["grand_mean"],
            "groups": [row.get(g) for g in groups], "answers": row["answers"], "judgements": row["judgements"],
            "gated": row["gated_answers"], "invalid": row["invalid"], "errors": row["errors"],
        })
    per_model = []
    for model in models:
        table = agg.criterion_table(model)
        per_model.append({
            "model": model,
            "columns": [str(c) for c in table.columns],
            "rows": [(str(idx), [_clean(v) for v in table.loc[idx].tolist()]) for idx in table.index],
        })
    template = _environment().get_template("template.html")
    return template.render(
        title=title,
        summary=summary,
        config_json=json.dumps(summary["config"], ensure_ascii=False, indent=2, default=str),
        groups=groups,
        board=table_rows,
        charts=charts,
        verdicts_json=_script_json({"verdicts": verdicts, "answers": texts}),
        models=models,
        criteria=sorted(agg.scores["criteria_name"].unique().tolist()),
        per_model=per_model,
        beside=summary.get("beside"),
        **_pairwise_context(summary.get("pairwise"), n_resamples),
    )
