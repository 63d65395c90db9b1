"""`pollux compare A.jsonl B.jsonl --judge SPEC --db RUN.db`: side-by-side judging, resumably.

A thin shell over `pollux.pairwise` (see its module doc and docs/pairwise.md): both orders of every
record × criterion are judged with Pollux-4B-Judge's side-by-side prompt (`--template pollux-4b-sbs`,
the default here), and stdout gets the JSON summary — win / tie / loss of A against B and the flip
rate, with bootstrap intervals, overall, per criterion and per task type. Unusable records are
listed on stderr and skipped. Exit codes: 0 every judgement is stored, 1 some failed (rerun to retry
them), 2 the comparison could not start (bad options, inputs, or a regression judge), 130 interrupted.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from pollux.cli import _options as opt


def compare_command(
    answers_a: Path = typer.Argument(..., metavar="A", help="Answer file A (JSONL, CSV or Parquet; POLLUX columns)."),
    answers_b: Path = typer.Argument(..., metavar="B", help="Answer file B: the same record ids as A."),
    judge: opt.JudgeSpec = ...,  # type: ignore[assignment]
    db: Path = typer.Option(..., "--db", help="SQLite file for the side-by-side verdicts; reused to resume."),
    criteria: Path | None = typer.Option(None, "--criteria", help="A criteria file for records that name none."),
    taxonomy: Path | None = typer.Option(None, "--taxonomy", help="Folder with official criteria.json + tasks.json."),
    chunk_size: int = typer.Option(64, "--chunk-size", min=1, help="Judgements per engine call."),
    resamples: int = typer.Option(1000, "--resamples", min=10, help="Bootstrap resamples for the intervals."),
    seed: int = typer.Option(0, "--seed", help="The bootstrap's seed."),
    engine_options: dict[str, Any] | None = None,
) -> None:
    """Judge A against B (both orders; --template pollux-4b-sbs unless given) into --db; print
    win/tie/loss of A and the flip rate with bootstrap intervals."""
    from pollux.checkpoint import CheckpointError
    from pollux.judge import Judge
    from pollux.pairwise import CompareError, compare, read_pairs
    from pollux.taxonomy import TaxonomyError, load_catalog, load_user_criteria

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    given = {"template": "pollux-4b-sbs", **(engine_options or {})}
    options = opt.check_options(judge, given)
    try:
        catalog = load_catalog(taxonomy) if taxonomy else load_catalog()
        user_criteria = load_user_criteria(criteria, catalog) if criteria else None
        inputs = read_pairs(answers_a, answers_b, catalog=catalog, user_criteria=user_criteria)
        for problem in inputs.problems:
            log(f"skipped: {problem}")
        if not inputs.pairs:
            raise CompareError("no record of A has a partner in B with criteria: nothing to compare")
        summary = compare(Judge.from_spec(judge, options), inputs.pairs, db, chunk_size=chunk_size,
                          n_resamples=resamples, seed=seed, log=log)
    except (CompareError, TaxonomyError, CheckpointError, OSError, ValueError, ImportError) as e:
        log(f"error: {e}")
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        log("interrupted: run the same command again to resume")
        raise typer.Exit(130) from None
    summary["records_skipped"] = len(inputs.problems)
    print_table(summary)
    print(json.dumps(summary, ensure_ascii=False, indent=2))
    if summary["errors"]:
        log(f"{summary['errors']} judgement(s) failed; run the same command again to retry them")
        raise typer.Exit(1)


def print_table(summary: dict[str, Any]) -> None:
    """The rates for people, on stderr: overall, then per criterion and per task type."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"A vs B — {summary['judge']} (95% bootstrap intervals)")
    for col in ("group", "pairs", "win (A)", "tie", "loss (A)", "flip"):
        table.add_column(col, justify="left" if col == "group" else "right")
    groups = [("overall", summary["overall"]),
              *((f"criterion: {k}", v) for k, v in summary["per_criterion"].items()),
              *((f"task: {k}", v) for k, v in summary["per_task"].items())]
    for name, row in groups:
        table.add_row(name, str(row["pairs"]), *(_rate(row[k]) for k in ("win", "tie", "loss", "flip")))
    Console(file=sys.stderr).print(table)


def _rate(cell: dict[str, Any]) -> str:
    if cell.get("rate") is None:
        return "–"
    lo, hi = cell["ci"]
    return f"{cell['rate']:.0%} [{lo:.0%}, {hi:.0%}]"


def register(app: typer.Typer) -> None:
    app.command("compare")(opt.with_engine_options(compare_command, flags={"seed": "--sampling-seed"}))
