"""`pollux judge`: judge one item from options, or a file of items (one verdict per line)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from pollux.cli import _options as opt
from pollux.records import JudgeItem, RecordError

# (line number, item or what is wrong with that line); line 0 is the item given by options.
Entry = tuple[int, JudgeItem | str]


def read_items(path: Path) -> list[Entry]:
    """Every row of a JSONL/CSV/Parquet file as an item, or as the message saying why it is not
    one, in file order: a bad line never stops the others (`pollux.inputs.read_rows`)."""
    from pollux.inputs import InputError, read_rows

    try:
        read = read_rows(path)
    except InputError as e:
        raise typer.BadParameter(str(e)) from None
    entries: list[Entry] = [(p.line, str(p)) for p in read.problems]
    for row in read.rows:
        try:
            item = JudgeItem.from_dict(row.data, where=row.where)
        except RecordError as e:
            entries.append((row.line, str(e)))
            continue
        entries.append((row.line, JudgeItem(**{**item.to_dict(), "meta": {**item.meta, "line": row.line}})))
    return sorted(entries, key=lambda e: e[0])


def judge_command(
    judge: opt.JudgeSpec,
    instruction: str | None = typer.Option(None, help="The instruction (task) given to the evaluated LLM."),
    answer: str | None = typer.Option(None, help="The evaluated LLM's answer."),
    reference: str = typer.Option("", help="Reference answer (optional)."),
    criterion: str | None = typer.Option(None, help="Criterion name."),
    rubrics: str | None = typer.Option(None, help="Rubric: one level per paragraph, e.g. '0: …\\n\\n1: …'."),
    input: Path | None = typer.Option(None, "--input", "-i", help="A JSONL, CSV or Parquet file of items "
                                      "(POLLUX column names)."),
    template: opt.Template = None,
    max_new_tokens: opt.MaxNewTokens = None,
    min_new_tokens: opt.MinNewTokens = None,
    temperature: opt.Temperature = None,
    top_p: opt.TopP = None,
    top_k: opt.TopK = None,
    repetition_penalty: opt.RepetitionPenalty = None,
    seed: opt.Seed = None,
    dtype: opt.DType = None,
    device: opt.Device = None,
    batch_size: opt.BatchSize = None,
    max_batch_tokens: opt.MaxBatchTokens = None,
    share_prefix: opt.SharePrefix = None,
    threads: opt.Threads = None,
    base_url: opt.BaseUrl = None,
    api_key_env: opt.ApiKeyEnv = None,
    concurrency: opt.Concurrency = None,
    prompt_style: opt.PromptStyle = None,
    api_timeout: opt.ApiTimeout = None,
    option: opt.Option = None,
) -> None:
    """Judge one item (options) or many (--input FILE); prints JSON verdicts to stdout, one per
    line, in input order; a bad line gets {"line": N, "error": …} in its place (exit 1)."""
    from pollux.judge import Judge

    if input is None:
        missing = [n for n, v in (("--instruction", instruction), ("--answer", answer),
                                  ("--criterion", criterion), ("--rubrics", rubrics)) if v is None]
        if missing:
            raise typer.BadParameter(f"give {', '.join(missing)} (or --input FILE)")
        assert instruction is not None and answer is not None and criterion is not None and rubrics is not None
        try:
            entries: list[Entry] = [(0, JudgeItem(instruction=instruction, answer=answer, reference_answer=reference,
                                                  criteria_name=criterion, rubrics=rubrics))]
        except RecordError as e:
            raise typer.BadParameter(str(e)) from None
    else:
        entries = read_items(input)

    options = opt.check_options(judge, opt.engine_options(
        option=option, template=template, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
        temperature=temperature, top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty, seed=seed,
        dtype=dtype, device=device, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
        share_prefix=share_prefix, threads=threads, base_url=base_url, api_key_env=api_key_env,
        concurrency=concurrency, prompt_style=prompt_style, timeout=api_timeout))
    try:
        loaded = Judge.from_spec(judge, options)
    except (OSError, ValueError, RuntimeError) as e:  # a missing checkpoint, no vLLM, a missing API key
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None

    items = [e for _, e in entries if isinstance(e, JudgeItem)]
    verdicts = iter(loaded.judge_many(items))
    failed = 0
    for line, entry in entries:
        if isinstance(entry, str):
            failed += 1
            typer.echo(entry, err=True)
            sys.stdout.write(json.dumps({"line": line, "error": entry}, ensure_ascii=False) + "\n")
            continue
        verdict = next(verdicts)
        failed += verdict.error is not None
        sys.stdout.write(verdict.to_json() + "\n")
    sys.stdout.flush()
    if failed:
        typer.echo(f"{failed} of {len(entries)} item(s) could not be judged", err=True)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("judge")(judge_command)
