"""`pollux bench`: one command for the model-first path — `answer` → `evaluate` → `report`.

It runs the three verbs themselves, in this process, with the arguments the user would type
(docs/benchmark.md), so each step behaves, resumes and fails exactly as the verb does; bench only
gathers their JSON results into one object on stdout. The answering model and the judge are two
engines, each with its own options: `-M KEY=VALUE` reaches the model's engine (as `answer -o`
does), `-J KEY=VALUE` the judge's (as `evaluate -o`).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
from pathlib import Path
from typing import Any

import typer


def bench_command(
    instructions: Path = typer.Argument(..., help="Instructions (as for `pollux answer`)."),
    model: str = typer.Option(..., "--model", "-m", help="The model to benchmark (as for `pollux answer`)."),
    judge: str = typer.Option(..., "--judge", "-j", help="The judge (as for `pollux evaluate`)."),
    out_dir: Path = typer.Option(Path("bench"), "--dir", help="Where answers-MODEL.jsonl (+ .db), run.db and report/ go; "
                                 "rerun with the same folder to resume."),
    model_option: list[str] | None = typer.Option(None, "--model-option", "-M", help="KEY=VALUE: an option of the "
                                                  "model's engine (base_url=…, temperature=0, …). Repeatable."),
    judge_option: list[str] | None = typer.Option(None, "--judge-option", "-J", help="KEY=VALUE: an option of the "
                                                  "judge's engine (device=cpu, …). Repeatable."),
    name: str | None = typer.Option(None, "--name", help="The model's name in the answers and the report."),
    system: str | None = typer.Option(None, "--system", help="A system prompt for the model: the text, or @FILE."),
    prices: Path | None = typer.Option(None, "--prices", help="A price table (as for `pollux answer`)."),
    criteria: Path | None = typer.Option(None, "--criteria", help="A criteria file for rows that name none."),
    beside: list[Path] | None = typer.Option(None, "--beside", help="Other answer files to judge and report beside "
                                             "the model's (other models' answers). Repeatable."),
    beside_experts: Path | None = typer.Option(None, "--beside-experts", help="An expert-scored file to rank the "
                                               "model beside (as for `pollux report`)."),
    judge_prices: Path | None = typer.Option(None, "--judge-prices", help="The judge's price table, for the "
                                             "report's cost per 1000 judgements (`pollux report --prices`)."),
) -> None:
    """Answer the instructions with --model, judge the answers (and --beside files) with --judge, and
    write the report; prints {"answer": …, "evaluate": …, "report": …}. Exit: the first failing step's."""
    out_dir.mkdir(parents=True, exist_ok=True)
    answers = out_dir / f"answers-{_slug(name or model)}.jsonl"  # evaluate knows rows by file name: one per model
    steps: list[tuple[str, list[str]]] = [
        ("answer", ["answer", str(instructions), "--model", model, "--out", str(answers),
                    *_given("--name", name), *_given("--system", system), *_given("--prices", prices),
                    *_pairs(model_option)]),
        ("evaluate", ["evaluate", str(answers), *map(str, beside or []), "--judge", judge,
                      "--db", str(out_dir / "run.db"), "--no-progress", *_given("--criteria", criteria),
                      *_pairs(judge_option)]),
        ("report", ["report", str(out_dir / "run.db"), "--out", str(out_dir / "report"),
                    *_given("--beside-experts", beside_experts), *_given("--prices", judge_prices)]),
    ]
    results: dict[str, Any] = {}
    failed = 0
    for step, args in steps:
        code, results[step] = _run(args)
        if code and not (step == "answer" and code == 1 and answers.exists()):  # some answers: judge those
            failed = code
            break
        failed = failed or code
    print(json.dumps(results, ensure_ascii=False))
    if failed:
        raise typer.Exit(failed)


def _slug(spec: str) -> str:
    """A file-name part for a model: its name, or its checkpoint folder's."""
    from pollux.engine.registry import OptionsError, resolve

    try:
        target = resolve(spec)[1]
    except OptionsError:
        target = spec
    return re.sub(r"[^\w.-]+", "_", Path(target).name or target).strip("._") or "model"


def _given(flag: str, value: Any) -> list[str]:
    return [] if value is None else [flag, str(value)]


def _pairs(pairs: list[str] | None) -> list[str]:
    return [arg for pair in pairs or [] for arg in ("-o", pair)]


def _run(args: list[str]) -> tuple[int, Any]:
    """One verb of this app, in-process: (its exit code, its stdout's JSON result or text)."""
    from pollux.cli import app

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        try:
            code = app(args, standalone_mode=False, prog_name="pollux")
        except SystemExit as e:  # click's usage errors
            code = e.code
        except Exception as e:  # a verb's uncaught error: the step's failure
            print(f"error: {args[0]}: {type(e).__name__}: {e}", file=sys.stderr)
            code = 1
    text = buffer.getvalue().strip()
    try:
        result = json.loads(text) if text else None
    except json.JSONDecodeError:
        result = text
    return (code if isinstance(code, int) else 0 if code is None else 1), result


def register(app: typer.Typer) -> None:
    app.command("bench")(bench_command)
