"""`pollux judge`: judge one item from options, or a file of items (one verdict per line)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

from pollux.cli import _options as opt
from pollux.records import JudgeItem, RecordError
from pollux.verdicts import Verdict

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
    rubrics: str | None = typer.Option(None, help="Rubric: one level per paragraph ('0: …', a blank line, "
                                       "'1: …'); a typed \\n is read as a line break."),
    input: Path | None = typer.Option(None, "--input", "-i", help="A JSONL, CSV or Parquet file of items "
                                      "(POLLUX column names)."),
    engine_options: dict[str, Any] | None = None,
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
                                                  criteria_name=criterion, rubrics=typed_rubrics(rubrics)))]
        except RecordError as e:
            raise typer.BadParameter(str(e)) from None
    else:
        entries = read_items(input)

    options = opt.check_options(judge, engine_options or {})
    try:
        loaded = Judge.from_spec(judge, options)
    except (OSError, ValueError, RuntimeError) as e:  # a missing checkpoint, no vLLM, a missing API key
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None

    items = [e for _, e in entries if isinstance(e, JudgeItem)]
    failed = write_verdicts(entries, iter(loaded.judge_many(items)))
    if failed:
        typer.echo(f"{failed} of {len(entries)} item(s) could not be judged", err=True)
        raise typer.Exit(1)


def typed_rubrics(text: str) -> str:
    """`--rubrics '0: …\\n\\n1: …'` typed in single quotes reaches us with backslash-n, not line
    breaks: a rubric of one line that states no scale. Read them as line breaks, and say so."""
    if "\\n" not in text or "\n" in text:
        return text
    typer.echo("warning: --rubrics has a typed '\\n' and no line break: read as a line break (a shell "
               "passes real ones with $'0: …\\n\\n1: …' or a newline inside the quotes)", err=True)
    return text.replace("\\n", "\n")


def write_verdicts(entries: list[Entry], verdicts: Iterator[Verdict]) -> int:
    """One JSON line per entry, in input order: its verdict, or {"line", "error"} for a bad line.
    A verdict whose rubric states no scale (so its score was checked against none) gets a
    warning on stderr. Returns how many entries failed."""
    failed = 0
    for line, entry in entries:
        if isinstance(entry, str):
            failed += 1
            typer.echo(entry, err=True)
            sys.stdout.write(json.dumps({"line": line, "error": entry}, ensure_ascii=False) + "\n")
            continue
        verdict = next(verdicts)
        failed += verdict.error is not None
        if verdict.error is None and verdict.scale_min is None:
            where = f"line {line}" if line else "the item"
            typer.echo(f"warning: {where}: the rubric states no scale (levels as '0: …' paragraphs), so the "
                       "score was checked against none", err=True)
        sys.stdout.write(verdict.to_json() + "\n")
    sys.stdout.flush()
    return failed


def register(app: typer.Typer) -> None:
    app.command("judge")(opt.with_engine_options(judge_command))
