"""Export: the sample as `pollux train` rows in Parquet, with provenance, plus a summary (JSON and
a small static HTML page with inline-SVG plots).

The Parquet file is written deterministically — rows in key order, a fixed schema built with
pyarrow (no pandas metadata, no timestamps) — so the same config and seed give a byte-identical file.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from html import escape
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pollux.report.svg import hbar_chart, histograms
from pollux.scales import parse_scale

Row = dict[str, Any]

# `pollux train`'s row format (pollux.train.data), then provenance.
TRAIN_COLUMNS = ("instruction", "reference_answer", "answer", "criteria_name", "rubrics", "rationale", "score")
PROVENANCE = ("key", "task_group", "task_type", "task_subtype", "task_subsubtype", "complexity", "criterion_id",
              "criterion_group", "generator", "answer_model", "teacher", "instruction_prompt", "answer_prompt",
              "annotate_prompt", "instruction_key", "answer_key", "attempts")
SCHEMA = pa.schema([(c, pa.float64() if c == "score" else pa.int64() if c == "attempts" else pa.string())
                    for c in TRAIN_COLUMNS + PROVENANCE])


def export_rows(store: Any) -> list[Row]:
    """The sampled annotations joined with their answer and instruction, in key order."""
    sample = store.keys("sample")
    instructions = {r["key"]: r for r in store.iter_rows("filtered")}
    answers = {r["key"]: r for r in store.iter_rows("answers")}
    rows = []
    for ann in store.iter_rows("annotations"):
        if ann["key"] not in sample:
            continue
        ins, ans = instructions[ann["instruction_key"]], answers[ann["answer_key"]]
        rows.append({
            "instruction": ins["instruction"], "reference_answer": "", "answer": ans["answer"],
            "criteria_name": ann["criteria_name"], "rubrics": ann["rubrics"], "rationale": ann["rationale"],
            "score": float(ann["score"]), "key": ann["key"], "task_group": ins["task_group"],
            "task_type": ins["task_type"], "task_subtype": ins["task_subtype"],
            "task_subsubtype": ins["task_subsubtype"], "complexity": ins["complexity"],
            "criterion_id": ann["criterion_id"], "criterion_group": ann["criterion_group"],
            "generator": ins["generator"], "answer_model": ans["answer_model"], "teacher": ann["teacher"],
            "instruction_prompt": ins["prompt_version"], "answer_prompt": ans["prompt_version"],
            "annotate_prompt": ann["prompt_version"], "instruction_key": ann["instruction_key"],
            "answer_key": ann["answer_key"], "attempts": ann["attempts"],
        })
    return rows


def write_parquet(rows: list[Row], path: Path) -> None:
    """Deterministic Parquet: fixed schema and column order, no pandas metadata, one row group."""
    table = pa.Table.from_pydict({c: [r[c] for r in rows] for c in SCHEMA.names}, schema=SCHEMA)
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp, compression="zstd", row_group_size=max(len(rows), 1))
    tmp.replace(path)  # readers never see half a file


def summarize(store: Any, rows: list[Row]) -> dict[str, Any]:
    """Counts per stage and reason, per task type / criterion group, score histograms."""
    instructions = store.rows("instructions")
    rejects = store.rows("rejects")
    annotations = store.rows("annotations")
    by_group: dict[str, list[float]] = defaultdict(list)
    histogram: dict[str, Counter[str]] = defaultdict(Counter)
    for r in rows:
        scale = parse_scale(r["rubrics"])
        group = r["criterion_group"] or "other"
        histogram[group][f"{r['score']:g}"] += 1
        if scale is not None and scale.max > 0:
            by_group[group].append(r["score"] / scale.max)
    return {
        "stages": {
            "instructions": {"generated": len(instructions),
                             "per_generator": _count(instructions, "generator")},
            "filter": {"kept": store.count("filtered"), "rejected": _count(rejects, "reason")},
            "criteria": {"instructions": store.count("criteria")},
            "answers": {"answers": store.count("answers"),
                        "per_model": _count(store.rows("answers"), "answer_model")},
            "annotate": {"annotations": len(annotations),
                         "valid": sum(1 for a in annotations if not a["drop"]),
                         "dropped": _count([a for a in annotations if a["drop"]], "drop"),
                         "attempts": _count(annotations, "attempts"),
                         "answers_skipped": dict(sorted(Counter(
                             "empty" if not a["answer"] else "invalid_text" for a in store.iter_rows("answers")
                             if not a["answer"] or a.get("invalid_text")).items()))},
            "sample": store.get_meta("result:sample", {}),
            "export": {"rows": len(rows)},
        },
        "export": {
            "per_task_type": _count(rows, "task_type"),
            "per_criterion_group": _count(rows, "criterion_group"),
            "per_answer_model": _count(rows, "answer_model"),
            "score_histogram": {g: dict(sorted(c.items(), key=lambda kv: float(kv[0])))
                                for g, c in sorted(histogram.items())},
            "normalised_scores": {g: sorted(v) for g, v in sorted(by_group.items())},
        },
    }


def write_html(summary: dict[str, Any], path: Path) -> None:
    export = summary["export"]
    per_task = export["per_task_type"]
    peak = max(per_task.values(), default=1)
    parts = [
        "<!doctype html><html lang='ru'><head><meta charset='utf-8'><title>pollux synth: summary</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:72em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}</style></head><body>",
        "<h1>pollux synth: training data summary</h1><h2>Stages</h2><table><tr><th>stage</th><th>counts</th></tr>",
    ]
    for stage, counts in summary["stages"].items():
        parts.append(f"<tr><td>{escape(stage)}</td><td><code>{escape(json.dumps(counts, ensure_ascii=False))}"
                     "</code></td></tr>")
    parts.append("</table><h2>Rows per task type (share of the largest)</h2>")
    parts.append(hbar_chart({t: n / peak for t, n in per_task.items()}, title="rows per task type",
                            css_class="chart-tasks"))
    parts.append("<h2>Normalised scores per criterion group</h2>")
    parts.append(histograms(export["normalised_scores"], bins=5, title="normalised scores per criterion group"))
    parts.append("<p>" + " · ".join(f"{escape(g)}: {len(v)}" for g, v in export["normalised_scores"].items())
                 + "</p></body></html>\n")
    path.write_text("".join(parts), encoding="utf-8")


def run_export(store: Any, out_dir: Path) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = export_rows(store)
    write_parquet(rows, out_dir / "train.parquet")
    rejects = store.rows("rejects")
    (out_dir / "rejects.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n"
                                                   for r in rejects), encoding="utf-8")
    summary = summarize(store, rows)
    (out_dir / "summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2, sort_keys=True) + "\n",
                                          encoding="utf-8")
    write_html(summary, out_dir / "summary.html")
    return {"rows": len(rows), "parquet": str(out_dir / "train.parquet"), "summary": str(out_dir / "summary.json"),
            "html": str(out_dir / "summary.html"), "rejects": str(out_dir / "rejects.jsonl")}


def _count(rows: list[Row], field: str) -> dict[str, int]:
    return dict(sorted(Counter(str(r[field]) for r in rows).items()))
