"""Small SVG charts drawn by hand, so the HTML report is one offline file with no chart library.

Each function returns an `<svg>` string. Every text that comes from data (model, criterion and
group names) is escaped; values are expected in [0, 1] (normalised scores).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

# Colour-blind-friendly palette (Okabe–Ito), one colour per evaluated model.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
FONT = 'font-family="system-ui, sans-serif" font-size="12"'


def colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _fmt(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _short(text: str, limit: int = 48) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def hbar_chart(values: Mapping[str, float | None], *, title: str, css_class: str = "chart-leaderboard") -> str:
    """Horizontal bars, one per label, on a 0–1 axis (the leaderboard's grand means)."""
    labels = list(values)
    label_w, bar_w, row_h, top = 200, 420, 26, 30
    height = top + row_h * max(len(labels), 1) + 30
    width = label_w + bar_w + 70
    parts = [f'<svg class="chart {css_class}" role="img" viewBox="0 0 {width} {height}" width="{width}" '
             f'height="{height}" {FONT}><title>{escape(title)}</title>']
    parts.append(_axis(label_w, bar_w, top, top + row_h * len(labels)))
    for i, label in enumerate(labels):
        v = values[label]
        y = top + i * row_h
        w = 0.0 if v is None or math.isnan(v) else max(0.0, min(1.0, v)) * bar_w
        parts.append(f'<text x="{label_w - 8}" y="{y + 17}" text-anchor="end">{escape(_short(label, 30))}</text>')
        parts.append(f'<rect class="bar" data-label="{escape(label)}" x="{label_w}" y="{y + 4}" width="{w:.1f}" '
                     f'height="{row_h - 8}" fill="{colour(i)}"><title>{escape(label)}: {_fmt(v)}</title></rect>')
        parts.append(f'<text x="{label_w + w + 6:.1f}" y="{y + 17}">{_fmt(v)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _axis(x0: float, width: float, y0: float, y1: float) -> str:
    out = []
    for k in range(0, 11, 2):
        x = x0 + width * k / 10
        out.append(f'<line x1="{x:.1f}" y1="{y0 - 4}" x2="{x:.1f}" y2="{y1}" stroke="#ddd"/>')
        out.append(f'<text x="{x:.1f}" y="{y0 - 8}" text-anchor="middle" fill="#666">{k / 10:.1f}</text>')
    return "".join(out)


def grouped_bars(table: Mapping[str, Mapping[str, float | None]], models: Sequence[str], *, title: str) -> str:
    """Vertical bars: one cluster per category (task group), one bar per model, 0–1 axis."""
    cats = list(table)
    n_models = max(len(models), 1)
    bar, gap, left, top, plot_h = 14, 18, 130, 20, 220
    cluster = bar * n_models + gap
    width = left + cluster * max(len(cats), 1) + 20
    label_h = 150
    height = top + plot_h + label_h
    parts = [f'<svg class="chart chart-groups" role="img" viewBox="0 0 {width} {height}" width="{width}" '
             f'height="{height}" {FONT}><title>{escape(title)}</title>']
    for k in range(0, 11, 2):
        y = top + plot_h * (1 - k / 10)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - 10}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#666">{k / 10:.1f}</text>')
    for ci, cat in enumerate(cats):
        x0 = left + ci * cluster + gap / 2
        for mi, model in enumerate(models):
            v = table[cat].get(model)
            if v is None or math.isnan(v):
                continue
            h = max(0.0, min(1.0, v)) * plot_h
            parts.append(f'<rect class="bar" x="{x0 + mi * bar:.1f}" y="{top + plot_h - h:.1f}" width="{bar - 2}" '
                         f'height="{h:.1f}" fill="{colour(mi)}"><title>{escape(model)} · {escape(cat)}: '
                         f'{_fmt(v)}</title></rect>')
        cx = x0 + bar * n_models / 2
        parts.append(f'<text x="{cx:.1f}" y="{top + plot_h + 12}" text-anchor="end" '
                     f'transform="rotate(-40 {cx:.1f} {top + plot_h + 12})">{escape(_short(cat, 28))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def heat_colour(v: float | None) -> str:
    """White-ish for missing; red (0) → yellow (0.5) → green (1)."""
    if v is None or math.isnan(v):
        return "#f2f2f2"
    v = max(0.0, min(1.0, v))
    if v < 0.5:
        r, g, b = 215, int(48 + (v / 0.5) * (200 - 48)), 39
    else:
        t = (v - 0.5) / 0.5
        r, g, b = int(215 - t * (215 - 26)), int(200 - t * (200 - 152)), int(39 + t * (80 - 39))
    return f"#{r:02x}{g:02x}{b:02x}"


def heatmap(matrix: Mapping[str, Mapping[str, float | None]], models: Sequence[str], *, title: str) -> str:
    """Rows: criteria; columns: models; each cell coloured and labelled by its mean (0–1)."""
    rows = list(matrix)
    label_w, cell_w, cell_h, top = 430, 90, 22, 70
    width = label_w + cell_w * max(len(models), 1) + 10
    height = top + cell_h * max(len(rows), 1) + 10
    parts = [f'<svg class="chart chart-heatmap" role="img" viewBox="0 0 {width} {height}" width="{width}" '
             f'height="{height}" {FONT}><title>{escape(title)}</title>']
    for mi, model in enumerate(models):
        x = label_w + mi * cell_w + cell_w / 2
        parts.append(f'<text x="{x:.1f}" y="{top - 8}" text-anchor="start" '
                     f'transform="rotate(-30 {x:.1f} {top - 8})">{escape(_short(model, 24))}</text>')
    for ri, row in enumerate(rows):
        y = top + ri * cell_h
        parts.append(f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end">{escape(_short(row, 60))}'
                     f'<title>{escape(row)}</title></text>')
        for mi, model in enumerate(models):
            v = matrix[row].get(model)
            x = label_w + mi * cell_w
            parts.append(f'<rect class="cell" x="{x}" y="{y}" width="{cell_w - 2}" height="{cell_h - 2}" '
                         f'fill="{heat_colour(v)}"><title>{escape(row)} · {escape(model)}: {_fmt(v)}</title></rect>')
            parts.append(f'<text x="{x + cell_w / 2 - 1:.1f}" y="{y + 15}" text-anchor="middle">{_fmt(v)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def histograms(samples: Mapping[str, Sequence[float]], *, bins: int = 10, title: str) -> str:
    """Distribution of normalised scores per model: side-by-side bars per bin, share of the model's scores."""
    models = list(samples)
    n_models = max(len(models), 1)
    left, top, plot_h, bin_w = 44, 20, 200, max(24, 10 * n_models + 8)
    width = left + bin_w * bins + 20
    height = top + plot_h + 40
    shares: dict[str, list[float]] = {}
    for model, values in samples.items():
        counts = [0] * bins
        for v in values:
            if v is None or math.isnan(v):
                continue
            counts[min(bins - 1, max(0, int(v * bins)))] += 1
        total = sum(counts) or 1
        shares[model] = [c / total for c in counts]
    peak = max([s for sh in shares.values() for s in sh] + [0.01])
    parts = [f'<svg class="chart chart-dist" role="img" viewBox="0 0 {width} {height}" width="{width}" '
             f'height="{height}" {FONT}><title>{escape(title)}</title>']
    for k in range(0, 5):
        y = top + plot_h * (1 - k / 4)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - 10}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#666">{peak * k / 4:.0%}</text>')
    bar = (bin_w - 6) / n_models
    for b in range(bins):
        x0 = left + b * bin_w + 3
        for mi, model in enumerate(models):
            s = shares[model][b]
            h = s / peak * plot_h
            parts.append(f'<rect class="bar" x="{x0 + mi * bar:.1f}" y="{top + plot_h - h:.1f}" width="{bar:.1f}" '
                         f'height="{h:.1f}" fill="{colour(mi)}"><title>{escape(model)} · '
                         f'[{b / bins:.1f}, {(b + 1) / bins:.1f}): {s:.0%}</title></rect>')
        parts.append(f'<text x="{left + b * bin_w:.1f}" y="{top + plot_h + 16}" text-anchor="middle" '
                     f'fill="#666">{b / bins:.1f}</text>')
    parts.append(f'<text x="{left + bins * bin_w:.1f}" y="{top + plot_h + 16}" text-anchor="middle" fill="#666">1.0</text>')
    parts.append("</svg>")
    return "".join(parts)


def legend(models: Sequence[str]) -> str:
    items = "".join(f'<span class="legend-item"><span class="swatch" style="background:{colour(i)}"></span>'
                    f'{escape(m)}</span>' for i, m in enumerate(models))
    return f'<div class="legend">{items}</div>'
