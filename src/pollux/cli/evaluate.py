"""`pollux evaluate INPUT... --judge SPEC --db RUN.db`: judge a file of answers, resumably.

A thin shell over `pollux.evaluate.evaluate`. The summary (JSON) goes to stdout; skipped rows,
the progress bar and logs go to stderr. Exit codes: 0 every judgement is in the database (bad
rows may have been skipped — they are listed), 1 some judgements failed (rerun to retry them),
2 the run could not start, 130 interrupted (rerun to resume).
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

import typer


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _load_judge(spec: str, options: dict[str, Any]) -> Any:
    from pollux.engine import SamplingParams
    from pollux.judge import Judge

    sampling = SamplingParams(max_new_tokens=options["max_new_tokens"], temperature=options["temperature"])
    if spec.startswith("openai:"):
        kwargs: dict[str, Any] = {"sampling": sampling, "concurrency": options["concurrency"]}
        if options["base_url"]:
            kwargs["base_url"] = options["base_url"]
        if options["api_key_env"]:
            kwargs["api_key_env"] = options["api_key_env"]
        if options["prompt_style"]:
            kwargs["prompt_style"] = options["prompt_style"]
        if options["api_timeout"]:
            kwargs["timeout"] = options["api_timeout"]
        return Judge.from_spec(spec, **kwargs)
    kwargs = {"dtype": options["dtype"], "device": options["device"], "sampling": sampling}
    if options["batch_size"]:
        kwargs["batch_size"] = options["batch_size"]
    return Judge.from_spec(spec, **kwargs)


def evaluate_command(
    inputs: list[Path] = typer.Argument(..., help="Answer files: JSONL, CSV or Parquet (POLLUX columns)."),
    judge: str = typer.Option(..., "--judge", help="A judge checkpoint folder, openai:MODEL or vllm:PATH."),
    db: Path = typer.Option(..., "--db", help="The run database (SQLite); reused to resume."),
    criteria: Path | None = typer.Option(None, "--criteria", help="A criteria file for rows that name none."),
    taxonomy: Path | None = typer.Option(None, "--taxonomy", help="Folder with official criteria.json + tasks.json."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first bad input row instead of skipping it."),
    new_run: bool = typer.Option(False, "--new-run", help="Start a new run when the database's configuration differs."),
    chunk_size: int = typer.Option(256, "--chunk-size", min=1, help="Judgements per engine call."),
    max_field_chars: int = typer.Option(200_000, "--max-field-chars", min=1, help="Longest accepted text field."),
    dtype: str = typer.Option("auto", "--dtype", help="Local checkpoints: auto, bfloat16, float16, float32."),
    device: str = typer.Option("auto", "--device", help="Local checkpoints: auto, cpu, cuda, cuda:1, ..."),
    batch_size: int = typer.Option(0, "--batch-size", min=0, help="Local checkpoints: judgements per batch (0: engine default)."),
    max_new_tokens: int = typer.Option(1024, "--max-new-tokens", min=1, help="Longest rationale, in tokens."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy (the official offline setting)."),
    base_url: str | None = typer.Option(None, "--base-url", help="openai: the server's base URL (…/v1)."),
    api_key_env: str | None = typer.Option(None, "--api-key-env", help="openai: environment variable with the API key."),
    concurrency: int = typer.Option(8, "--concurrency", min=1, help="openai: requests in flight."),
    prompt_style: str | None = typer.Option(
        None, "--prompt-style",
        help="openai: 'pollux' (a POLLUX judge) or 'general' (asks a general LLM for [FEEDBACK] … [RESULT] n [END])."),
    api_timeout: float | None = typer.Option(None, "--api-timeout", min=0.1, help="openai: seconds per request."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar on stderr."),
) -> None:
    """Judge every answer × criterion of INPUT into --db; run it again to resume."""
    from pollux.checkpoint import CheckpointError
    from pollux.evaluate import EvaluateError, Progress, RichProgress, evaluate
    from pollux.taxonomy import TaxonomyError, load_catalog, load_user_criteria

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    # SIGTERM (e.g. a job scheduler) stops as cleanly as Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    options = {"dtype": dtype, "device": device, "batch_size": batch_size, "max_new_tokens": max_new_tokens,
               "temperature": temperature, "base_url": base_url, "api_key_env": api_key_env,
               "concurrency": concurrency, "prompt_style": prompt_style, "api_timeout": api_timeout}
    try:
        catalog = load_catalog(taxonomy) if taxonomy else load_catalog()
        user_criteria = load_user_criteria(criteria, catalog) if criteria else None
        summary = evaluate(
            inputs, db, lambda: _load_judge(judge, options), catalog=catalog, user_criteria=user_criteria,
            strict=strict, new_run=new_run, chunk_size=chunk_size, max_field_chars=max_field_chars,
            progress=RichProgress() if progress else Progress(), log=log,
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
    app.command("evaluate")(evaluate_command)
