"""`pollux report RUN.db --out DIR`: leaderboard on the terminal, HTML report + CSV / JSON in DIR.

A thin shell over `pollux.report.build_report`. The leaderboard table is printed to stderr (for
people); stdout gets the JSON summary (the files written and the leaderboard), for scripts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer


def report_command(
    dbs: list[Path] = typer.Argument(..., metavar="RUN.DB [MORE.DB ...]",
                                     help="Run databases written by `pollux evaluate`; the first is the report's "
                                          "run, the others (latest run each) are shown beside it."),
    out: Path = typer.Option(Path("report"), "--out", help="Folder for report.html, CSV and JSON exports."),
    run: int | None = typer.Option(None, "--run", help="Which run of the database (default: the latest)."),
    taxonomy: Path | None = typer.Option(None, "--taxonomy", help="Official criteria.json + tasks.json folder."),
    gates: str = typer.Option("binary", "--gates", help="Which 0/1 criteria gate an answer: binary (official) or critical."),
    out_of_scale: str = typer.Option("drop", "--out-of-scale", help="Scores outside their scale: drop (official) or clip."),
    title: str | None = typer.Option(None, "--title", help="The report's title."),
    beside_experts: Path | None = typer.Option(None, "--beside-experts", help="An expert-scored file (POLLUX "
                                               "format, .jsonl / .parquet): its LLMs join the leaderboard."),
    prices: Path | None = typer.Option(None, "--prices", help='Judge price table {"JUDGE": {"input": USD/1M, '
                                       '"output": USD/1M}} (as `pollux answer --prices`): cost per 1k judgements.'),
    resamples: int = typer.Option(1000, "--resamples", min=1, help="Bootstrap resamples for the CIs (beside, side by side)."),
) -> None:
    """Aggregate a run (official POLLUX rules) and write its report; with `pollux compare`
    verdicts in the database, a "Side by side" section too (alone when there is no run)."""
    from rich.console import Console

    from pollux.answer import AnswerError
    from pollux.report import build_report
    from pollux.store import StoreError
    from pollux.taxonomy import TaxonomyError, load_catalog

    if gates not in ("binary", "critical") or out_of_scale not in ("drop", "clip"):
        print("error: --gates takes binary|critical, --out-of-scale takes drop|clip", file=sys.stderr)
        raise typer.Exit(2)
    try:
        catalog = load_catalog(taxonomy) if taxonomy else load_catalog()
        files = build_report(dbs[0], out, run=run, catalog=catalog, gates=gates,  # type: ignore[arg-type]
                             out_of_scale=out_of_scale, title=title,  # type: ignore[arg-type]
                             beside=dbs[1:], experts=beside_experts, prices=prices, n_resamples=resamples)
    except (StoreError, TaxonomyError, AnswerError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(2) from None

    console = Console(file=sys.stderr)
    if files.leaderboard:  # none in a database of `pollux compare` alone
        console.print(_leaderboard_table(files.run_id, files.leaderboard))
    if files.beside is not None:
        console.print(_beside_table(files.beside["leaderboard"]))
    if files.pairwise is not None:
        from pollux.cli.compare import print_table

        for comparison in files.pairwise:  # the same table `pollux compare` prints
            print_table(comparison)
    console.print(f"report: {files.html}")
    print(json.dumps(files.to_dict(), ensure_ascii=False, indent=2))


def _leaderboard_table(run_id: int, rows: list[dict]) -> object:
    from rich.table import Table

    table = Table(title=f"Leaderboard — run {run_id}")
    for col in ("#", "model", "grand mean", "answers", "judgements", "gated", "invalid", "errors"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for row in rows:
        grand = row.get("grand_mean")
        table.add_row(str(row["rank"]), str(row["model_id"]), "–" if grand is None else f"{grand:.3f}",
                      str(row["answers"]), str(row["judgements"]), str(row["gated_answers"]),
                      str(row["invalid"]), str(row["errors"]))
    return table


def _beside_table(rows: list[dict]) -> object:
    """The leaderboard beside other runs and the experts, with its CIs, for the terminal."""
    from rich.table import Table

    def num(v: float | None) -> str:
        return "–" if v is None else f"{v:.3f}"

    table = Table(title="Beside reference models (95% bootstrap CI over answers)")
    for col in ("#", "model", "kind", "judge", "grand mean", "CI", "answers"):
        table.add_column(col, justify="right" if col in ("#", "grand mean", "answers") else "left")
    for r in rows:
        table.add_row(str(r["rank"]), str(r["model_id"]), str(r["kind"]), str(r["judge"]), num(r["mean"]),
                      f"[{num(r['ci_low'])}, {num(r['ci_high'])}]", str(r["answers"]))
    return table


def register(app: typer.Typer) -> None:
    app.command("report")(report_command)
