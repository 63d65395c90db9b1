"""Output of a meta-evaluation: the model card's table shape in several formats.

One table per metric — rows: evaluated LLMs, then "Avg."; columns: judges; cells: the value
and its bootstrap interval — then the same per criterion group (each cell the Avg. over LLMs),
then the coverage (rows compared, and why some were not). With several judges the best value
of each row is marked (bold in Markdown and HTML).

Formats: `table` (terminal, rich), `markdown`, `csv` (one line per table row, numbers in
separate value / ci_low / ci_high columns per judge), `html` (a standalone page) and `json`
(everything, tidy). The trust diagnostics (`pollux.metaeval.trust`: system-level agreement,
length bias, juries, repeats) follow the coverage in `table`, `markdown` and `html`, and are
under "diagnostics" in `json`; `csv` keeps one rectangular table of the metrics.
"""

from __future__ import annotations

import html
import io
import json
import math

import pandas as pd

from pollux.metaeval.evaluate import AVG, MetaEvalResult
from pollux.metaeval.metrics import LABELS, LOWER_IS_BETTER

FORMATS = ("table", "markdown", "csv", "html", "json")
DEFAULT_SHOWN = ("spearman", "mae", "vc")
SPLIT_LABELS = {"ood": "out-of-domain", "id": "in-domain", "all": "all task types"}


def _cell(value: float, lo: float, hi: float, digits: int) -> str:
    if value is None or math.isnan(value):
        return "NaN"
    text = f"{value:.{digits}f}"
    if not (math.isnan(lo) or math.isnan(hi)):
        text += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    return text


def _best(values: pd.Series, metric: str) -> set[str]:
    ok = values.dropna()
    if len(values) < 2 or ok.empty:
        return set()
    target = ok.min() if metric in LOWER_IS_BETTER else ok.max()
    return {str(j) for j, v in ok.items() if v == target}


def _tables(result: MetaEvalResult, metrics: tuple[str, ...]):
    """(table kind, metric, values, CI lows, CI highs) for every table to show: per evaluated LLM,
    then per criterion group when the result has groups."""
    for kind in ("models", "groups"):
        if kind == "groups" and not result.groups:
            continue
        for metric in metrics:
            table = result.table if kind == "models" else result.group_table
            yield (kind, metric, table(metric, what="value"), table(metric, what="ci_low"),
                   table(metric, what="ci_high"))


def _blocks(result: MetaEvalResult, metrics: tuple[str, ...]) -> list[tuple[str, str, pd.DataFrame, pd.DataFrame]]:
    """(title, first-column name, values, formatted cells with '**' marks for the best)."""
    split = SPLIT_LABELS.get(result.settings["split"], result.settings["split"])
    digits = 3
    out = []
    for kind, metric, val, lo, hi in _tables(result, metrics):
        cells = val.copy().astype(object)
        for r in val.index:
            best = _best(val.loc[r], metric)
            for j in val.columns:
                text = _cell(val.loc[r, j], lo.loc[r, j], hi.loc[r, j], digits)
                cells.loc[r, j] = f"**{text}**" if j in best else text
        title = f"{LABELS[metric]} — {split}"
        title += "" if kind == "models" else ", by criterion group (Avg. over LLMs)"
        out.append((title, "Evaluated LLM" if kind == "models" else "Criterion group", val, cells))
    return out


DIAGNOSTIC_TITLES = {
    "system": "System-level agreement: the LLMs ranked by the judge's mean score vs by the experts' (Spearman, "
              "Kendall over LLMs)",
    "length_bias": "Length bias: Spearman with the answer's length; partial = with the experts' score held fixed "
                   "(flagged from 0.3)",
    "juries": "Combined judges (juries, median/mean of repeats) minus each member: Avg. over LLMs, paired "
              "intervals",
    "repeats": "Repeat consistency: per-row spread over runs of one judge, share of rows whose rounded score changes",
}


def _diagnostics(result: MetaEvalResult) -> list[tuple[str, pd.DataFrame]]:
    """(title, table as text cells) of each trust diagnostic; a value with an interval is one cell."""
    out = []
    for name, frame in result.diagnostics.items():
        if frame.empty:
            continue
        shown = frame.copy()
        value = "value" if "value" in shown.columns else "difference"
        if "ci_low" in shown.columns:
            shown[value] = [_cell(v, lo, hi, 3) for v, lo, hi in
                            zip(shown[value], shown["ci_low"], shown["ci_high"], strict=True)]
            shown = shown.drop(columns=["ci_low", "ci_high"])
        for c in shown.columns:
            if shown[c].dtype.kind == "f":
                shown[c] = [_cell(v, math.nan, math.nan, 3) for v in shown[c]]
        out.append((DIAGNOSTIC_TITLES.get(name, name), shown.astype(str)))
    return out


def _coverage(result: MetaEvalResult) -> pd.DataFrame:
    return result.coverage.rename(columns={"n_rows": "expert rows", "not_applicable": "not applicable (-1)",
                                           "no_score": "no score", "out_of_scale": "out of scale"})


def _note(result: MetaEvalResult) -> str:
    s = result.settings
    ci = (f"{int(s['confidence'] * 100)}% bootstrap intervals over {s['n_bootstrap']:,} resamples of answers"
          if s["n_bootstrap"] else "no intervals")
    return f"Judge score: {s['score']}; {ci}; seed {s['seed']}."


def to_markdown(result: MetaEvalResult, metrics: tuple[str, ...] = DEFAULT_SHOWN) -> str:
    lines = [_note(result), ""]
    for title, first, _val, cells in _blocks(result, metrics):
        lines += [f"### {title}", "", f"| {first} | " + " | ".join(cells.columns) + " |",
                  "|---|" + "---:|" * len(cells.columns)]
        for r in cells.index:
            label = f"**{r}**" if r == AVG else str(r)
            lines.append(f"| {label} | " + " | ".join(str(c) for c in cells.loc[r]) + " |")
        lines.append("")
    cov = _coverage(result)
    lines += ["### Coverage", "", "| " + " | ".join(cov.columns) + " |", "|" + "---|" * len(cov.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in cov.itertuples(index=False)]
    for title, frame in _diagnostics(result):
        lines += ["", f"### {title}", "", "| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
        lines += ["| " + " | ".join(row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def to_terminal(result: MetaEvalResult, metrics: tuple[str, ...] = DEFAULT_SHOWN, width: int = 160) -> str:
    from rich.console import Console
    from rich.table import Table

    buf = io.StringIO()
    console = Console(file=buf, width=width, force_terminal=False, color_system=None)
    console.print(_note(result))
    for title, first, _val, cells in _blocks(result, metrics):
        t = Table(title=title, title_justify="left")
        t.add_column(first)
        for j in cells.columns:
            t.add_column(str(j), justify="right")
        rows = list(cells.index)
        for i, r in enumerate(rows):
            t.add_row(str(r), *[str(c).replace("**", "") + (" *" if str(c).startswith("**") else "")
                                for c in cells.loc[r]], end_section=i + 1 < len(rows) and rows[i + 1] == AVG)
        console.print(t)
    cov = _coverage(result)
    t = Table(title="Coverage", title_justify="left")
    for c in cov.columns:
        t.add_column(str(c), justify="left" if c in ("judge", "model") else "right")
    for row in cov.itertuples(index=False):
        t.add_row(*[str(v) for v in row])
    console.print(t)
    for title, frame in _diagnostics(result):
        t = Table(title=title, title_justify="left")
        for c in frame.columns:
            t.add_column(str(c))
        for row in frame.itertuples(index=False):
            t.add_row(*row)
        console.print(t)
    return buf.getvalue()


def to_csv(result: MetaEvalResult, metrics: tuple[str, ...] = DEFAULT_SHOWN) -> str:
    parts = []
    for kind, metric, val, lo, hi in _tables(result, metrics):
        block = pd.DataFrame({"table": kind, "metric": metric, "row": val.index})
        for j in result.judges:
            block[j] = val[j].to_numpy()
            block[f"{j} ci_low"] = lo[j].to_numpy()
            block[f"{j} ci_high"] = hi[j].to_numpy()
        parts.append(block)
    return pd.concat(parts, ignore_index=True).to_csv(index=False, float_format="%.6g")


def to_html(result: MetaEvalResult, metrics: tuple[str, ...] = DEFAULT_SHOWN) -> str:
    body = [f"<p>{html.escape(_note(result))}</p>"]
    for title, first, _val, cells in _blocks(result, metrics):
        rows = []
        for r in cells.index:
            tds = []
            for c in cells.loc[r]:
                text = html.escape(str(c).replace("**", ""))
                tds.append(f"<td><b>{text}</b></td>" if str(c).startswith("**") else f"<td>{text}</td>")
            rows.append(f"<tr><th>{html.escape(str(r))}</th>{''.join(tds)}</tr>")
        head = "".join(f"<th>{html.escape(str(j))}</th>" for j in cells.columns)
        body.append(f"<h3>{html.escape(title)}</h3><table><thead><tr><th>{html.escape(first)}</th>{head}</tr>"
                    f"</thead><tbody>{''.join(rows)}</tbody></table>")
    body.append("<h3>Coverage</h3>" + _coverage(result).to_html(index=False, border=0))
    body += [f"<h3>{html.escape(title)}</h3>" + frame.to_html(index=False, border=0) for title, frame in
             _diagnostics(result)]
    if result.warnings:
        body.append("<h3>Warnings</h3><ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in result.warnings)
                    + "</ul>")
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1.5em}"
             "td,th{border:1px solid #ccc;padding:4px 8px}td{text-align:right;font-variant-numeric:tabular-nums}")
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>pollux meta-eval</title>"
            f"<style>{style}</style></head><body><h2>pollux meta-eval</h2>{''.join(body)}</body></html>\n")


def to_json(result: MetaEvalResult) -> str:
    return json.dumps(result.to_dict(), ensure_ascii=False, indent=1) + "\n"


def render(result: MetaEvalResult, fmt: str = "table", metrics: tuple[str, ...] = DEFAULT_SHOWN) -> str:
    """The result as text in one of `FORMATS`; `metrics` chooses the tables (JSON has all)."""
    if fmt == "json":
        return to_json(result)
    renderers = {"table": to_terminal, "markdown": to_markdown, "csv": to_csv, "html": to_html}
    if fmt not in renderers:
        raise ValueError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
    unknown = [m for m in metrics if m not in LABELS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}: expected some of {', '.join(LABELS)}")
    return renderers[fmt](result, tuple(metrics))
