"""`pollux evaluate INPUT... --judge SPEC --db RUN.db`: judge a file of answers, resumably.

A thin shell over `pollux.evaluate.evaluate`; the judge's options go through the engine registry
(see `pollux.cli._options`), checked before any input is read. The summary (JSON) goes to
stdout; skipped rows, the progress bar and logs go to stderr. Exit codes: 0 every judgement is in the database (bad
rows may have been skipped — they are listed), 1 some judgements failed (rerun to retry them),
2 the run could not start (or its workers could not: a bad --ray address, no Ray installed, a judge
that does not load on a worker), 130 interrupted (rerun to resume).

`--ray auto|ADDRESS` (with `--workers`, `--cpus-per-worker`, `--gpus-per-worker`) judges on a Ray
cluster: each Ray worker loads the judge, this process only reads the inputs and writes the database
(see docs/scale-out.md). A run resumes the same whether it ran locally or on Ray.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

import typer

from pollux.cli import _options as opt


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def evaluate_command(
    inputs: list[Path] = typer.Argument(..., metavar="INPUT", help="Answer files: JSONL, CSV or Parquet (POLLUX columns)."),
    judge: opt.JudgeSpec = ...,  # type: ignore[assignment]
    db: Path = typer.Option(..., "--db", help="The run database (SQLite); reused to resume."),
    criteria: Path | None = typer.Option(None, "--criteria", help="A criteria file for rows that name none."),
    taxonomy: Path | None = typer.Option(None, "--taxonomy", help="Folder with official criteria.json + tasks.json."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first bad input row instead of skipping it."),
    new_run: bool = typer.Option(False, "--new-run", help="Start a new run when the database's configuration differs."),
    chunk_size: int = typer.Option(256, "--chunk-size", min=1, help="Judgements per engine call."),
    max_field_chars: int = typer.Option(200_000, "--max-field-chars", min=1, help="Longest accepted text field."),
    engine_options: dict[str, Any] | None = None,
    ray: opt.Ray = None,
    workers: opt.Workers = None,
    cpus_per_worker: opt.CpusPerWorker = None,
    gpus_per_worker: opt.GpusPerWorker = None,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar on stderr."),
) -> None:
    """Judge every answer × criterion of INPUT into --db; run it again to resume.

    \f
    Long only in its option declarations (one typer parameter each); the work is one API call.
    """
    from pollux.checkpoint import CheckpointError
    from pollux.evaluate import (
        EvaluateError,
        JudgeLoader,
        Progress,
        RichProgress,
        evaluate,
        refuse_a_known_change,
    )
    from pollux.executor.judging import JudgeFactory
    from pollux.taxonomy import TaxonomyError, load_catalog, load_user_criteria

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    # SIGTERM (e.g. a job scheduler) stops as cleanly as Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    given = engine_options or {}
    executor = opt.executor_options(ray=ray, workers=workers, cpus_per_worker=cpus_per_worker,
                                    gpus_per_worker=gpus_per_worker,
                                    tensor_parallel_size=given.get("tensor_parallel_size"))
    options = opt.check_options(judge, given, defaults=opt.worker_defaults(executor))
    # The run remembers this request (not where it runs), so rerunning a finished run never loads the
    # weights, and a run started locally resumes on Ray and back. The factory is what Ray workers load.
    loader = JudgeLoader({"judge": judge, "options": given}, JudgeFactory(judge, options))
    try:
        refuse_a_known_change(db, loader, options, new_run=new_run)  # before the judge loads
        catalog = load_catalog(taxonomy) if taxonomy else load_catalog()
        user_criteria = load_user_criteria(criteria, catalog) if criteria else None
        summary = evaluate(
            inputs, db, loader, catalog=catalog, user_criteria=user_criteria,
            strict=strict, new_run=new_run, chunk_size=chunk_size, max_field_chars=max_field_chars,
            progress=RichProgress() if progress else Progress(), log=log, executor=executor,
        )
    except (EvaluateError, TaxonomyError, CheckpointError, OSError, ValueError, TypeError, ImportError) as e:
        log(f"error: {e}")
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        log("interrupted before judging started")
        raise typer.Exit(130) from None
    print(json.dumps(summary.to_dict(), ensure_ascii=False, indent=2))
    if summary.rows_skipped:
        log(f"{summary.rows_skipped} bad row(s) skipped (listed above)")
    if summary.interrupted:
        raise typer.Exit(130)
    if summary.remaining:
        log(f"{summary.remaining} judgement(s) failed; run the same command again to retry them")
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("evaluate")(opt.with_engine_options(evaluate_command))
