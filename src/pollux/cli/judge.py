"""`pollux judge`: judge one item from options, or a JSONL file of items (one verdict per line)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from pollux.records import JudgeItem, RecordError


def _read_jsonl(path: Path) -> list[tuple[int, JudgeItem | str]]:
    """(line number, item or error message) for every non-blank line; bad lines never stop the rest."""
    out: list[tuple[int, JudgeItem | str]] = []
    with path.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                out.append((n, f"line {n}: not valid UTF-8 ({e.reason} at byte {e.start})"))
                continue
            except json.JSONDecodeError as e:
                out.append((n, f"line {n}: invalid JSON ({e.msg}, column {e.colno})"))
                continue
            if not isinstance(row, dict):
                out.append((n, f"line {n}: expected a JSON object, got {type(row).__name__}"))
                continue
            try:
                item = JudgeItem.from_dict(row, where=f"line {n}")
            except RecordError as e:
                out.append((n, str(e)))
                continue
            out.append((n, JudgeItem(**{**item.to_dict(), "meta": {**item.meta, "line": n}})))
    return out


def judge_command(
    model: str = typer.Option(..., "--model", "-m", help="Judge checkpoint folder (or openai:MODEL with --base-url)."),
    instruction: str | None = typer.Option(None, help="The instruction (task) given to the evaluated LLM."),
    answer: str | None = typer.Option(None, help="The evaluated LLM's answer."),
    reference: str = typer.Option("", help="Reference answer (optional)."),
    criterion: str | None = typer.Option(None, help="Criterion name."),
    rubrics: str | None = typer.Option(None, help="Rubric: one level per paragraph, e.g. '0: …\\n\\n1: …'."),
    input: Path | None = typer.Option(None, "--input", "-i", help="JSONL of items (POLLUX column names)."),
    max_new_tokens: int = typer.Option(1024, help="Maximum new tokens per judgement."),
    min_new_tokens: int = typer.Option(0, help="Suppress end-of-turn until this many tokens were generated."),
    temperature: float = typer.Option(0.0, help="0 = greedy."),
    top_p: float = typer.Option(1.0),
    top_k: int = typer.Option(0),
    seed: int = typer.Option(0),
    batch_size: int = typer.Option(32, help="Sequences decoded together."),
    max_batch_tokens: int = typer.Option(65_536, help="KV positions per batch (memory bound)."),
    share_prefix: bool = typer.Option(True, help="Encode each answer's shared prompt prefix once."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1, …"),
    dtype: str = typer.Option("auto", help="auto (bf16 on GPUs, fp32 on CPUs), float32, bfloat16, float16."),
    template: Path | None = typer.Option(None, help="A prompt template file (default: the POLLUX template)."),
    base_url: str | None = typer.Option(None, help="For openai:MODEL judges: the server's /v1 URL."),
) -> None:
    """Judge one item (options) or many (--input FILE.jsonl); prints JSON verdicts to stdout."""
    from pollux.engine import SamplingParams
    from pollux.judge import Judge
    from pollux.prompts import PromptTemplate

    if input is None:
        missing = [n for n, v in (("--instruction", instruction), ("--answer", answer),
                                  ("--criterion", criterion), ("--rubrics", rubrics)) if v is None]
        if missing:
            raise typer.BadParameter(f"give {', '.join(missing)} (or --input FILE.jsonl)")
        try:
            entries: list[tuple[int, JudgeItem | str]] = [(0, JudgeItem(
                instruction=instruction, answer=answer, reference_answer=reference,
                criteria_name=criterion, rubrics=rubrics))]  # type: ignore[arg-type]
        except RecordError as e:
            raise typer.BadParameter(str(e)) from None
    else:
        if not input.is_file():
            raise typer.BadParameter(f"{input}: no such file")
        entries = _read_jsonl(input)

    sampling = SamplingParams(max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                              temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
    tmpl = PromptTemplate(text=template.read_text(encoding="utf-8")) if template else PromptTemplate()
    options: dict[str, Any] = {"template": tmpl, "sampling": sampling}
    if model.startswith("openai:"):
        options["base_url"] = base_url
    else:
        options.update(dtype=dtype, device=device, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                       share_prefix=share_prefix)
    judge = Judge.from_spec(model, **options)

    items = [e for _, e in entries if isinstance(e, JudgeItem)]
    verdicts = iter(judge.judge_many(items))
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
