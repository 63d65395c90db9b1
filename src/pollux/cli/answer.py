"""`pollux answer`: a model's answers to a file of instructions, ready for `pollux evaluate`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from pollux.cli import _options as opt

MODEL_HELP = ("The model that answers: openai:MODEL (with --base-url), vllm:PATH or a checkpoint folder "
              "(the engine registry's specs, as for --judge).")
# Engine flags that mean nothing to a chat model (judge prompts, judge-only decoding and batching).
NOT_FOR_CHAT = ("template", "prompt_style", "min_new_tokens", "top_p", "top_k", "repetition_penalty",
                "share_prefix", "max_batch_tokens")


def answer_command(
    instructions: Path = typer.Argument(..., help="Instructions: JSONL, CSV or Parquet with an 'instruction' "
                                        "column (POLLUX-instructions rows keep their criteria, task_type, …)."),
    model: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", help="The answer file (JSONL) that `pollux evaluate` reads."),
    db: Path | None = typer.Option(None, "--db", help="The answer store (SQLite) a rerun resumes from "
                                   "(default: --out with the suffix .db)."),
    name: str | None = typer.Option(None, "--name", help="The model's name in the answers (evaluate's model_id; "
                                    "default: the model name, or the checkpoint folder's name)."),
    system: str | None = typer.Option(None, "--system", help="A system prompt: the text, or @FILE."),
    prices: Path | None = typer.Option(None, "--prices", help='A JSON price table {"MODEL": {"input": USD per 1M '
                                       'tokens, "output": USD per 1M tokens}}: each answer gets its cost.'),
    engine_options: dict[str, Any] | None = None,
) -> None:
    """Answer every instruction with --model into --out (and its store --db); run it again to resume:
    only the missing answers are asked for. Prints a JSON summary; exit 1 if some could not be answered."""
    from pollux.answer import AnswerError, generate_answers

    options = opt.check_options(model, engine_options or {})
    try:
        summary = generate_answers(instructions, model, options, out=out, db=db, name=name,
                                   system_prompt=_system_prompt(system), prices=prices,
                                   log=lambda m: print(m, file=sys.stderr, flush=True))
    except (AnswerError, OSError, ValueError, RuntimeError) as e:  # bad input, options, a model that will not load
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    if summary.unfinished_reasoning:
        typer.echo(f"warning: {summary.unfinished_reasoning} answer(s) ended inside <think> (no answer after the "
                   "reasoning): raise --max-new-tokens", err=True)
    print(json.dumps(summary.to_dict(), ensure_ascii=False))
    if summary.problems:
        raise typer.Exit(1)


def _system_prompt(value: str | None) -> str | None:
    """`--system TEXT` or `--system @FILE` (UTF-8)."""
    if value is None or not value.startswith("@"):
        return value
    try:
        return Path(value[1:]).read_text(encoding="utf-8")
    except OSError as e:
        raise typer.BadParameter(f"--system {value}: cannot read the file: {e.strerror or e}") from None


def register(app: typer.Typer) -> None:
    app.command("answer")(opt.with_engine_options(answer_command, exclude=NOT_FOR_CHAT))
