"""The model card's tables as data (`pollux/data/model_card/tables.json`) and our numbers beside them.

The card reports, per judge, Spearman, MAE and Verdict Confidence per evaluated LLM and their
mean ("Avg."). The file holds the card's three tables verbatim (LLM names as the card prints
them); a cell the card does not have (pollux-judge-32b's per-LLM cells) is shown as missing and
never compared. It also says on which split each metric is computed (`splits`) and how the card's
LLM names map to the dataset's `model_id`s (`ModelCard.card_name`).

The card's printed "Avg." is not always the plain mean of its seven cells (it was presumably
averaged before rounding, or over other rows); ours is the plain mean over LLMs, so the
comparison carries both the card's printed Avg. and the mean of the card's cells.

`compare_with_card` lines up, for one of our judges and one card judge, each card cell with our
value, the difference (ours − card), our bootstrap interval and whether the card's value lies
inside it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from html import escape
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd

from pollux.metaeval.evaluate import ALL_GROUPS, AVG, MetaEvalResult, split_rows

CARD_METRICS = ("spearman", "mae", "vc")
COMPARE_COLUMNS = ("judge", "score", "card_judge", "metric", "split", "model", "model_id", "ours", "ci_low",
                   "ci_high", "card", "card_note", "delta", "card_in_ci", "n_rows", "card_cells_mean")
# What a missing cell means: the card has no such number (pollux-judge-32b's per-LLM cells).
CARD_NA = "n/a (not in the card)"
_DATE = re.compile(r"[-_ ]?(?:20\d\d[-_.]?\d\d[-_.]?\d\d)$")


@dataclass(frozen=True)
class ModelCard:
    """The card's numbers: `judges[judge][metric]` = {"avg": float | None, "per_model": {name: float}}."""

    judges: dict[str, dict[str, dict[str, Any]]]
    models: list[dict[str, Any]]
    splits: dict[str, str]
    notes: dict[str, str]

    def value(self, judge: str, metric: str, model: str) -> float | None:
        """The card's value for a card LLM name, or AVG; None where the card (or this file) has none."""
        cell = self.judges[judge].get(metric, {})
        v = cell.get("avg") if model == AVG else cell.get("per_model", {}).get(model)
        return None if v is None else float(v)

    def card_name(self, model_id: str) -> str | None:
        """The card's name of a dataset `model_id`: equal, after `_norm`, to a row's model_id, its
        card name with or without the parenthesised version ("GigaChat-Max (1.0.26.20)"), or an
        alias ("YandexGPT 4 Pro" for "YaGPT-4-Pro (2024-10-23)") — also once a trailing date is
        dropped from the id ("gpt-4o-2024-08-06"). None: the card has no row for it."""
        wanted = {_norm(model_id), _norm(_DATE.sub("", str(model_id).strip()))}
        for m in self.models:
            names = [m["model_id"], m["card_name"], _bare(m["card_name"]), *m.get("aliases", [])]
            if wanted & {_norm(n) for n in names}:
                return str(m["card_name"])
        return None

    def cells_mean(self, judge: str, metric: str) -> float | None:
        """The plain mean of the card's per-LLM cells (None unless the card has all of them)."""
        cells = self.judges[judge].get(metric, {}).get("per_model", {})
        values = [cells.get(m["card_name"]) for m in self.models]
        return None if not values or None in values else float(np.mean(values))

    def judge(self, name: str) -> str:
        """The card judge called `name` (spelling-insensitive, "GPT-4o (2024-11-20)" = "GPT-4o");
        an error listing them otherwise."""
        for j in self.judges:
            if _norm(j) in (_norm(name), _norm(_bare(name))):
                return j
        raise ValueError(f"the model card has no judge {name!r}: it lists {', '.join(self.judges)}")


def _norm(text: str) -> str:
    return re.sub(r"[^0-9a-zа-яё]", "", str(text).lower())


def _bare(name: str) -> str:
    """A card name without its parenthesised version or date: "o1 (2024-12-17)" → "o1"."""
    return re.sub(r"\s*\([^)]*\)\s*$", "", str(name))


def unplaced_models(models: Sequence[str]) -> list[str]:
    """The dataset `model_id`s that match no row of the card (shown under their own id)."""
    card = load_model_card()
    return [m for m in models if card.card_name(m) is None]


@cache
def load_model_card() -> ModelCard:
    """The card's tables shipped with pollux."""
    raw = json.loads((resources.files("pollux") / "data" / "model_card" / "tables.json").read_text("utf-8"))
    notes = {k: v for k, v in raw.items() if isinstance(v, str)}
    return ModelCard(judges=raw["judges"], models=raw["models"], splits=raw["splits"], notes=notes)


def card_splits(metrics: tuple[str, ...] = CARD_METRICS) -> list[str]:
    """The splits the card's tables need (each computed once)."""
    card = load_model_card()
    return list(dict.fromkeys(card.splits[m] for m in metrics))


def compare_with_card(results: dict[str, MetaEvalResult], judge: str, card_judge: str,
                      metrics: tuple[str, ...] = CARD_METRICS) -> pd.DataFrame:
    """One row per card cell (metric × LLM and Avg.) for our `judge` against the card's
    `card_judge`. `results` maps split → result; each metric is read from the card's split."""
    card = load_model_card()
    card_judge = card.judge(card_judge)
    rows = []
    for metric in metrics:
        split = card.splits[metric]
        if split not in results:
            raise ValueError(f"the card's {metric} is on split {split!r}, which was not computed")
        result = results[split]
        score = result.sources.get(judge, (judge, result.settings.get("score", "")))[1]
        m = result.metrics
        mine = m[(m["judge"] == judge) & (m["metric"] == metric) & (m["group"] == ALL_GROUPS)].set_index("model")
        cells_mean = card.cells_mean(card_judge, metric)
        for model in [*result.models, AVG]:
            name = AVG if model == AVG else (card.card_name(model) or model)
            ours = mine.loc[model] if model in mine.index else None
            value = float(ours["value"]) if ours is not None else np.nan
            lo = float(ours["ci_low"]) if ours is not None else np.nan
            hi = float(ours["ci_high"]) if ours is not None else np.nan
            theirs = card.value(card_judge, metric, name)
            inside = None if theirs is None or np.isnan(lo) else bool(lo <= theirs <= hi)
            rows.append({"judge": judge, "score": score, "card_judge": card_judge, "metric": metric, "split": split,
                         "model": name, "model_id": "" if model == AVG else model, "ours": value, "ci_low": lo,
                         "ci_high": hi, "card": np.nan if theirs is None else theirs,
                         "card_note": CARD_NA if theirs is None else "",
                         "delta": np.nan if theirs is None else value - theirs, "card_in_ci": inside,
                         "n_rows": int(ours["n_rows"]) if ours is not None else 0,
                         "card_cells_mean": _differs(cells_mean, theirs) if model == AVG else np.nan})
    return pd.DataFrame(rows, columns=list(COMPARE_COLUMNS))


def compare_judges(results: dict[str, MetaEvalResult], card_judges: Sequence[str] = (),
                   metrics: tuple[str, ...] = CARD_METRICS) -> pd.DataFrame:
    """`compare_with_card` for every judge column of `results`. `card_judges`: the card judge of
    each of our judges, in order (default: the card judge of the same name). With several scores
    per judge (greedy and expected), a card cell's rows for the judge's scores are adjacent."""
    first = next(iter(results.values()))
    sources = {label: first.sources.get(label, (label, "")) for label in first.judges}
    base = list(dict.fromkeys(judge for judge, _ in sources.values()))
    if card_judges and len(card_judges) != len(base):
        raise ValueError(f"{len(card_judges)} --card-judge for {len(base)} judge(s)")
    card_of = dict(zip(base, card_judges or base, strict=True))
    parts = [compare_with_card(results, label, card_of[judge], metrics) for label, (judge, _) in sources.items()]
    table = pd.concat(parts, ignore_index=True)
    if len(parts) > len(base):  # interleave: each card cell's scores side by side
        order = {"judge": {j: i for i, j in enumerate(base)}, "metric": {m: i for i, m in enumerate(metrics)}}
        table = table.assign(_j=table["judge"].map(lambda lb: order["judge"][sources[lb][0]]),
                             _m=table["metric"].map(order["metric"]), _r=table.groupby("judge").cumcount())
        table = table.sort_values(["_j", "_m", "_r"], kind="stable").drop(columns=["_j", "_m", "_r"])
    return table.reset_index(drop=True)


def _differs(cells_mean: float | None, printed: float | None) -> float:
    """The mean of the card's cells where it differs from the card's printed Avg. at the card's
    precision (three decimals); NaN where they agree or either is missing."""
    if cells_mean is None or printed is None or round(cells_mean, 3) == round(printed, 3):
        return np.nan
    return cells_mean


def _num(v: float, digits: int = 3) -> str:
    return "—" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{digits}f}"


def comparison_text(table: pd.DataFrame) -> str:
    """The comparison as an aligned plain-text table (terminal)."""
    header = ("judge", "score", "card judge", "metric", "split", "LLM", "ours", "95% CI", "card", "Δ", "card in CI",
              "card cells' mean")
    lines = [header]
    for r in table.itertuples(index=False):
        ci = "—" if np.isnan(r.ci_low) else f"[{r.ci_low:.3f}, {r.ci_high:.3f}]"
        inside = "—" if r.card_in_ci is None else ("inside" if r.card_in_ci else "OUTSIDE")
        delta = "—" if np.isnan(r.delta) else f"{r.delta:+.3f}"
        lines.append((r.judge, r.score, r.card_judge, r.metric, r.split, r.model, _num(r.ours), ci, _card(r.card),
                      delta, inside, "" if np.isnan(r.card_cells_mean) else f"{r.card_cells_mean:.3f}"))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    out = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    return "\n".join([*out, "", NOTE]) + "\n"


NOTE = (f"card: the model card's value; card {CARD_NA}: the card has no such cell. Δ = ours − card; 'card in CI': "
        "whether the card's value lies in our bootstrap interval. Our average is the plain mean over the LLMs; the "
        "card's printed average is not always the mean of its own cells: where they differ (at three decimals) "
        "'card cells' mean' gives the mean of the card's cells, the number comparable with ours.")


def _card(v: float) -> str:
    return CARD_NA if v is None or np.isnan(v) else f"{v:.3f}"


def comparison_json(table: pd.DataFrame) -> list[dict[str, Any]]:
    """JSON-ready rows (NaN → null)."""
    return [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
            for r in table.to_dict(orient="records")]


def _bars_svg(rows: pd.DataFrame, title: str) -> str:
    """Per-LLM bars of our value with its CI as a whisker and the card's value as a tick (when known)."""
    ok = rows[np.isfinite(rows["ours"].astype(float))]
    if ok.empty:
        return f"<p>{escape(title)}: no values</p>"
    values = np.concatenate([ok["ours"], ok["ci_high"].dropna(), ok["card"].dropna()]).astype(float)
    top = max(float(np.nanmax(values)), 1e-9)
    bottom = min(0.0, float(np.nanmin(values)))
    width, bar, gap, left, height = 640, 26, 8, 150, 30 + len(ok) * (26 + 8)

    def x(v: float) -> float:
        return left + (v - bottom) / (top - bottom) * (width - left - 20)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
             f'<text x="4" y="16" font-size="13" font-weight="bold">{escape(title)}</text>']
    for i, r in enumerate(ok.itertuples(index=False)):
        y = 26 + i * (bar + gap)
        parts.append(f'<text x="4" y="{y + bar * 0.7:.1f}" font-size="12">{escape(str(r.model))}</text>')
        parts.append(f'<rect x="{x(min(0.0, r.ours)):.1f}" y="{y}" width="{abs(x(r.ours) - x(0.0)):.1f}" '
                     f'height="{bar}" fill="#4e79a7"><title>ours {r.ours:.3f}</title></rect>')
        if np.isfinite(r.ci_low):
            mid = y + bar / 2
            parts.append(f'<line x1="{x(r.ci_low):.1f}" x2="{x(r.ci_high):.1f}" y1="{mid}" y2="{mid}" '
                         f'stroke="#222" stroke-width="2"><title>95% CI [{r.ci_low:.3f}, {r.ci_high:.3f}]</title>'
                         "</line>")
        if np.isfinite(r.card):
            parts.append(f'<line x1="{x(r.card):.1f}" x2="{x(r.card):.1f}" y1="{y - 2}" y2="{y + bar + 2}" '
                         f'stroke="#e15759" stroke-width="3"><title>card {r.card:.3f}</title></line>')
    parts.append("</svg>")
    return "".join(parts)


def comparison_html(table: pd.DataFrame, results: dict[str, MetaEvalResult],
                    confusion: dict[str, pd.DataFrame] | None = None, reliability: pd.DataFrame | None = None) -> str:
    """A standalone page: the comparison table, per-LLM bars with CIs (card values as red ticks)
    and, when given, judge-vs-expert confusion tables per criterion and the calibration table."""
    head = ["judge", "score", "card judge", "metric", "split", "LLM", "ours", "95% CI", "card", "Δ", "card in CI",
            "card cells' mean"]
    body = []
    for r in table.itertuples(index=False):
        ci = "—" if np.isnan(r.ci_low) else f"[{r.ci_low:.3f}, {r.ci_high:.3f}]"
        inside = "—" if r.card_in_ci is None else ("inside" if r.card_in_ci else "<b>outside</b>")
        delta = "—" if np.isnan(r.delta) else f"{r.delta:+.3f}"
        cells = [escape(str(c)) for c in (r.judge, r.score, r.card_judge, r.metric, r.split, r.model)]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in
                                     [*cells, _num(r.ours), ci, escape(_card(r.card)), delta, inside,
                                      "" if np.isnan(r.card_cells_mean) else _num(r.card_cells_mean)]) + "</tr>")
    charts = [_bars_svg(g, f"{j} — {m} ({s})") for (j, m, s), g in table.groupby(["judge", "metric", "split"],
                                                                                  sort=False)]
    blocks = []
    for label, frame in (confusion or {}).items():
        blocks.append(f"<h3>{escape(label)}</h3>" + frame.to_html(border=0, na_rep="—"))
    settings = next(iter(results.values())).settings
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>pollux meta-eval vs model card"
            "</title><style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}</style></head><body>"
            "<h1>Judges against experts, beside the model card</h1>"
            f"<p>{escape(json.dumps(settings, ensure_ascii=False, default=str))}</p>"
            "<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(body) + "</table>"
            f"<p>{escape(NOTE)}</p>"
            "<p>Bars: ours; black whisker: our 95% bootstrap interval; red tick: the card's value (none where the "
            f"card's cell is {CARD_NA}).</p>"
            + "".join(f"<div>{c}</div>" for c in charts)
            + ("<h2>Judge vs experts per criterion</h2>" + "".join(blocks) if blocks else "")
            + ("<h2>Calibration (out-of-domain rows): mean expert score per bin of the judge's score</h2>"
               + reliability.to_html(index=False, border=0, na_rep="—", float_format="%.3f")
               if reliability is not None and not reliability.empty else "")
            + "</body></html>\n")


def confusion_by_criterion(experts: Any, scores: pd.DataFrame, *, score: str | Sequence[str] = "auto", rows: np.ndarray | None = None,
                           limit: int = 20) -> dict[str, pd.DataFrame]:
    """Per judge and criterion: a count table of the judge's score (rounded half away from zero)
    against the experts' aggregate (rounded the same way), over `rows` (all by default) — the
    `limit` criteria with the most rows, so a page on POLLUX's hundreds of criteria stays readable."""
    from pollux.metaeval.evaluate import _join
    from pollux.metaeval.scores import round_half_away

    values, _ = _join(experts, scores, score, "drop", [])
    frame = experts.frame
    mask = np.ones(len(frame), dtype=bool) if rows is None else rows
    expert = frame["expert"].to_numpy()
    top = frame.loc[mask & np.isfinite(expert), "criteria_name"].value_counts().index[:limit]
    out: dict[str, pd.DataFrame] = {}
    for judge, v in values.items():
        ok = mask & np.isfinite(v) & np.isfinite(expert)
        for criterion in top:
            sel = ok & (frame["criteria_name"].to_numpy() == criterion)
            if not sel.any():
                continue
            table = pd.crosstab(pd.Series(round_half_away(expert[sel]), name="experts"),
                                pd.Series(round_half_away(v[sel]), name=f"judge {judge}"))
            out[f"{judge} — {criterion} ({int(sel.sum())} rows)"] = table
    return out


def calibration(experts: Any, scores: pd.DataFrame, *, score: str | Sequence[str] = "auto", rows: np.ndarray | None = None,
                bins: int = 10) -> pd.DataFrame:
    """Reliability of a judge's continuous score (a `-r` judge's head): the rows split into `bins`
    equal-width bins of the judge's score over its observed range; per bin the number of rows,
    the mean judge score and the mean expert score. A calibrated judge has the two means equal
    (points on the diagonal of a reliability plot); a judge that is right on average but
    shrinks towards the middle of the scale shows expert means steeper than judge means."""
    from pollux.metaeval.evaluate import _join

    values, _ = _join(experts, scores, score, "drop", [])
    expert = experts.frame["expert"].to_numpy()
    mask = np.ones(len(expert), dtype=bool) if rows is None else rows
    out = []
    for judge, v in values.items():
        ok = mask & np.isfinite(v) & np.isfinite(expert)
        if not ok.any():
            continue
        x, y = v[ok], expert[ok]
        edges = np.linspace(x.min(), x.max(), bins + 1)
        which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, bins - 1)  # the max in the last bin
        for b in range(bins):
            sel = which == b
            out.append({"judge": judge, "bin": b, "bin_low": float(edges[b]), "bin_high": float(edges[b + 1]),
                        "n_rows": int(sel.sum()),
                        "mean_judge": float(x[sel].mean()) if sel.any() else np.nan,
                        "mean_expert": float(y[sel].mean()) if sel.any() else np.nan})
    return pd.DataFrame(out, columns=["judge", "bin", "bin_low", "bin_high", "n_rows", "mean_judge",
                                      "mean_expert"])


def render_comparison(results: dict[str, MetaEvalResult], card_judges: Sequence[str], fmt: str, experts: Any,
                      scores: Sequence[pd.DataFrame], score: tuple[str, ...]) -> str:
    """`pollux meta-eval --compare model-card` in `fmt`: each judge beside the card's numbers; JSON
    and HTML add the calibration (and HTML the confusion tables) of the out-of-domain rows."""
    first = next(iter(results.values()))
    unplaced = unplaced_models(first.models)
    if unplaced:
        import warnings

        from pollux.metaeval.experts import MetaEvalWarning

        names = ", ".join(m["card_name"] for m in load_model_card().models)
        warnings.warn(f"the model card has no row for dataset model(s) {', '.join(unplaced)}: shown under their own "
                      f"id, without card values (the card's LLMs: {names})", MetaEvalWarning, stacklevel=2)
    table = compare_judges(results, card_judges)
    system = system_levels(results)
    if fmt == "csv":
        return str(table.to_csv(index=False))
    if fmt not in ("json", "html"):
        return comparison_text(table) + ("\n" + SYSTEM_TITLE + "\n" + system_text(system) if not system.empty else "")
    ood = split_rows(experts, "ood")[0]
    all_scores = pd.concat(list(scores), ignore_index=True)
    reliability = calibration(experts, all_scores, score=score, rows=ood)
    if fmt == "json":
        return json.dumps({"comparison": comparison_json(table), "calibration": comparison_json(reliability),
                           "system": comparison_json(system),
                           "results": {x: r.to_dict() for x, r in results.items()}},
                          ensure_ascii=False, indent=2, default=str) + "\n"
    confusion = confusion_by_criterion(experts, all_scores, score=score, rows=ood)
    page = comparison_html(table, results, confusion, reliability)
    extra = f"<h2>{escape(SYSTEM_TITLE)}</h2><pre>{escape(system_text(system))}</pre>" if not system.empty else ""
    return page.replace("</body></html>", extra + "</body></html>", 1)


SYSTEM_TITLE = ("System-level agreement: the evaluated LLMs ranked by the judge's mean score vs by the experts' "
                "(Spearman and Kendall over LLMs; 95% bootstrap intervals over answers), per split and criterion group")


def system_levels(results: dict[str, MetaEvalResult]) -> pd.DataFrame:
    """Every split's system-level agreement table, with the split named."""
    parts = [r.diagnostics["system"].assign(split=x) for x, r in results.items() if "system" in r.diagnostics]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def system_text(system: pd.DataFrame) -> str:
    """The system-level table as aligned text."""
    lines = [("judge", "split", "group", "statistic", "value", "95% CI")]
    for r in system.itertuples(index=False):
        ci = "—" if np.isnan(r.ci_low) else f"[{r.ci_low:.3f}, {r.ci_high:.3f}]"
        lines.append((str(r.judge), str(r.split), str(r.group), str(r.statistic), _num(r.value), ci))
    widths = [max(len(line[i]) for line in lines) for i in range(6)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines) + "\n"
