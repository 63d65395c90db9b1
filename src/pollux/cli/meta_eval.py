"""`pollux meta-eval`: how well judges agree with expert scores (a thin shell over
`pollux.metaeval`).

    pollux meta-eval experts.parquet --scores judge-a.jsonl --scores run.db --judge ./pollux-judge-7b-r \\
        --judge-name A --judge-name B --judge-name C --split ood --format markdown --out table.md

Judges come from score files (`--scores`: JSONL of scores or a pollux run database) and from
judges run on the expert data (`--judge SPEC`); `--judge-name` renames them, in that order
(all `--scores` first, then all `--judge`). The table goes to stdout (or `--out`), warnings
(skipped rows, missing scores, NaN metrics) to stderr.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from pollux.cli import _options as opt

DB_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def _fail(message: object) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def meta_eval(
    expert_file: Path = typer.Argument(..., help="Expert data in POLLUX format (parquet, JSONL, JSON or CSV): a "
                                       "file, a folder of shards (the released dataset) or a glob."),
    scores: list[Path] = typer.Option([], "--scores", help="Judge scores: a JSONL of scores or a pollux run "
                                      "database (.db). Repeat for several judges."),
    judge: list[str] = typer.Option([], "--judge", "--model", "-m", help="Run this judge on the expert data: a "
                                    "checkpoint folder, vllm:PATH or openai:MODEL. Repeatable."),
    judge_name: list[str] = typer.Option([], "--judge-name", help="Name of each judge source, in order: all "
                                         "--scores, then all --judge."),
    score: str = typer.Option("auto", "--score", help="Which score a judge contributes: auto (head, else text), "
                              "head, text, head-rounded (half away from zero) or expected (a generative judge's "
                              "probability-weighted score at [RESULT]). Several as a comma list, or both "
                              "(= auto,expected): one column per judge and score, side by side."),
    split: str = typer.Option("ood", "--split", help="ood (held-out task types, as the model card), id or all; "
                              "several as a comma list (all,ood,id): the data is read and keyed once."),
    on: str | None = typer.Option(None, "--on", help="Join --scores files to expert rows on these columns "
                                  "(comma list, e.g. id) instead of by text content."),
    compare: str | None = typer.Option(None, "--compare", help="model-card: print ours, the model card's value, "
                                       "the difference and our CI side by side (each metric on the card's split)."),
    card_judge: list[str] = typer.Option([], "--card-judge", help="With --compare: the card's judge each of our "
                                         "judges is compared with, in order (default: the card judge of the "
                                         "same name)."),
    db: Path | None = typer.Option(None, "--db", help="Judge --judge runs through this pollux run store (as "
                                   "pollux evaluate): resumable, and judgements are reused by later runs."),
    ood_tasks: str | None = typer.Option(None, "--ood-tasks", help="Out-of-domain task types: a file (one per "
                                         "line) or a comma-separated list. Default: the 8 held-out types."),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=0, help="Bootstrap resamples of answers (0: no CIs)."),
    confidence: float = typer.Option(0.95, "--confidence", min=0.5, max=0.999, help="Interval coverage."),
    seed: int = typer.Option(0, "--seed", help="Seed of the resampling."),
    metrics: str = typer.Option("spearman,mae,vc", "--metrics", help="Tables to show (comma list or 'all'): "
                                "spearman, mae, vc, kendall, pearson, exact, within1. JSON has all."),
    fmt: str = typer.Option("table", "--format", help="table, markdown, csv, html or json."),
    out: Path | None = typer.Option(None, "--out", help="Write the result here instead of stdout."),
    no_groups: bool = typer.Option(False, "--no-groups", help="Skip the breakdown by criterion group."),
    out_of_scale: str = typer.Option("drop", "--out-of-scale", help="Judge scores outside the rubric's scale: "
                                     "drop (counted) or clip."),
    common_rows: bool = typer.Option(False, "--common-rows", help="Compare all judges on the rows every judge "
                                     "scored."),
    kendall_ci: bool = typer.Option(False, "--kendall-ci", help="Also bootstrap Kendall's tau (slow)."),
    save_scores: Path | None = typer.Option(None, "--save-scores", help="Save the scores of --judge runs as "
                                            "JSONL (reusable with --scores)."),
    template: opt.Template = None,
    max_new_tokens: opt.MaxNewTokens = None,
    min_new_tokens: opt.MinNewTokens = None,
    temperature: opt.Temperature = None,
    top_p: opt.TopP = None,
    top_k: opt.TopK = None,
    repetition_penalty: opt.RepetitionPenalty = None,
    seed_sampling: int | None = typer.Option(None, "--sampling-seed", help="The judges' sampling seed "
                                             "(--seed is the bootstrap's)."),
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
    ray: opt.Ray = None,
    workers: opt.Workers = None,
    cpus_per_worker: opt.CpusPerWorker = None,
    gpus_per_worker: opt.GpusPerWorker = None,
) -> None:
    """Judges against expert scores: Spearman, MAE, Verdict Confidence (and more) per evaluated LLM and
    their average, with bootstrap confidence intervals, in the model card's table shape."""
    from pollux.metaeval import (
        FORMATS,
        METRICS,
        MetaEvalWarning,
        load_experts,
        meta_evaluate,
        parse_ood_tasks,
        read_score_jsonl,
        render,
        scores_from_db,
        scores_from_judge,
        write_score_jsonl,
    )
    from pollux.metaeval.domains import check_split
    from pollux.metaeval.scores import parse_score_choices

    if fmt not in FORMATS:
        _fail(f"unknown --format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if compare is not None and compare != "model-card":
        _fail(f"unknown --compare {compare!r}: expected model-card")
    splits = list(dict.fromkeys(x.strip() for x in split.split(",") if x.strip()))
    try:
        for x in splits:
            check_split(x)
    except ValueError as e:
        _fail(e)
    try:
        score_choices = parse_score_choices(score)
    except ValueError as e:
        _fail(e)
    on_columns = tuple(c.strip() for c in on.split(",") if c.strip()) if on else ()
    shown = METRICS if metrics.strip() == "all" else tuple(m.strip() for m in metrics.split(",") if m.strip())
    if not scores and not judge:
        _fail("give at least one judge: --scores FILE or --judge SPEC")
    if judge_name and len(judge_name) != len(scores) + len(judge):
        _fail(f"{len(judge_name)} --judge-name for {len(scores) + len(judge)} judge sources")
    names: list[str | None] = list(judge_name) or [None] * (len(scores) + len(judge))
    given = opt.engine_options(
        option=option, template=template, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
        temperature=temperature, top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty,
        seed=seed_sampling, dtype=dtype, device=device, batch_size=batch_size,
        max_batch_tokens=max_batch_tokens, share_prefix=share_prefix, threads=threads, base_url=base_url,
        api_key_env=api_key_env, concurrency=concurrency, prompt_style=prompt_style, timeout=api_timeout)
    # Every judge gets the same options, each checked against its own engine before anything runs.
    executor = opt.executor_options(ray=ray, workers=workers, cpus_per_worker=cpus_per_worker,
                                    gpus_per_worker=gpus_per_worker)
    judge_options = [opt.check_options(spec, given, defaults=opt.worker_defaults(executor)) for spec in judge]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MetaEvalWarning)
        try:
            experts = load_experts(expert_file, ood_tasks=parse_ood_tasks(ood_tasks), keep=on_columns)
            if compare is not None:
                from pollux.metaeval.card import card_splits

                splits = card_splits()
            frames = []
            for path, name in zip(scores, names, strict=False):
                if not path.exists():
                    _fail(f"{path}: no such file")
                is_db = path.suffix.lower() in DB_SUFFIXES
                frames.append(scores_from_db(path, judge=name) if is_db else
                              read_score_jsonl(path, judge=name, on=on_columns, experts=experts))
            ran = []
            needed = _rows_for(experts, splits)  # judge only the rows the requested tables use
            for spec, options, name in zip(judge, judge_options, names[len(scores):], strict=True):
                if db is not None:
                    ran.append(_run_judge_in_store(spec, given, options, name, needed, db, executor))
                else:
                    ran.append(_run_judge(spec, options, name, needed, scores_from_judge, executor))
            if save_scores is not None and ran:
                import pandas as pd

                write_score_jsonl(pd.concat(ran, ignore_index=True), save_scores)
                typer.echo(f"saved judge scores to {save_scores}", err=True)
            results = {x: meta_evaluate(experts, frames + ran, score=score_choices, split=x, n_bootstrap=bootstrap,
                                        confidence=confidence, seed=seed, by_group=not no_groups,
                                        out_of_scale=out_of_scale, kendall_ci=kendall_ci)
                       for x in splits}
            if compare is not None:
                text = _comparison(results, card_judge, fmt, experts, frames + ran, score_choices)
            elif len(results) == 1:
                text = render(results[splits[0]], fmt, shown)
            else:
                text = _render_splits(results, fmt, shown, render)
        except (ValueError, OSError, ImportError, RuntimeError) as e:  # RuntimeError: pollux.store
            _echo_warnings(caught)
            _fail(e)
    _echo_warnings(caught)
    if out is not None:
        out.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {out}", err=True)
    else:
        sys.stdout.write(text)


def _echo_warnings(caught: list[warnings.WarningMessage]) -> None:
    """Each distinct warning once: several splits repeat the notes about the same scores."""
    for message in dict.fromkeys(str(w.message) for w in caught):
        typer.echo(f"warning: {message}", err=True)
    caught.clear()


def _run_judge(spec: str, options: Any, name: str | None, experts: Any,
               scores_from_judge: Callable[..., Any], executor: Any = None) -> Any:
    """Load (or connect to) a judge and score every distinct judgement of the expert data; with
    `executor` (--ray/--workers) the workers load it instead."""
    from pollux.judge import Judge

    def progress(done: int, total: int) -> None:
        if done == total or done % 50 == 0:
            typer.echo(f"  {done}/{total}", err=True)

    if executor is not None:
        typer.echo(f"running judge {name or spec} on {experts.frame['key'].nunique():,} judgements, "
                   f"{executor.workers} worker(s){' on Ray' if executor.ray else ''}", err=True)
        return scores_from_judge(spec, experts, options=options, name=name, on_progress=progress, executor=executor)
    judge = Judge.from_spec(spec, options)
    typer.echo(f"running judge {name or judge.name} on {experts.frame['key'].nunique():,} judgements", err=True)
    return scores_from_judge(judge, experts, name=name, on_progress=progress)


def _rows_for(experts: Any, splits: list[str]) -> Any:
    """The expert rows the tables of `splits` use (all rows when one of them is "all")."""
    from pollux.metaeval.runstore import subset

    ood = experts.frame["ood"].to_numpy()
    if "all" in splits or {"ood", "id"} <= set(splits):
        return experts
    return subset(experts, ood if "ood" in splits else ~ood)


def _run_judge_in_store(spec: str, given: Any, options: Any, name: str | None, experts: Any, db: Path,
                        executor: Any) -> Any:
    """Judge through the run store of `pollux evaluate` (`--db`): only what it lacks is judged."""
    from pollux.evaluate import JudgeLoader
    from pollux.executor.judging import JudgeFactory
    from pollux.metaeval.runstore import judge_through_store

    typer.echo(f"judge {name or spec}: {experts.frame['key'].nunique():,} judgements, run store {db}", err=True)
    loader = JudgeLoader({"judge": spec, "options": given}, JudgeFactory(spec, options))
    return judge_through_store(experts, db, loader, name=name, log=lambda m: typer.echo(m, err=True),
                               executor=executor)


def _render_splits(results: dict[str, Any], fmt: str, shown: tuple[str, ...], render: Callable[..., str]) -> str:
    """Several splits in one output: JSON keyed by split, other formats one block per split."""
    if fmt == "json":
        import json

        return json.dumps({"splits": {x: r.to_dict() for x, r in results.items()}}, ensure_ascii=False,
                          indent=2, default=str) + "\n"
    heading = {"markdown": "## split: {}\n\n", "html": "<h2>split: {}</h2>\n"}.get(fmt, "=== split: {} ===\n")
    return "\n".join(heading.format(x) + render(r, fmt, shown) for x, r in results.items())


def _comparison(results: dict[str, Any], card_judge: list[str], fmt: str, experts: Any, scores: list[Any],
                score: tuple[str, ...]) -> str:
    """Each judge beside the model card's numbers (`pollux.metaeval.card`)."""
    import json

    import pandas as pd

    from pollux.metaeval.card import (
        calibration,
        compare_judges,
        comparison_html,
        comparison_json,
        comparison_text,
        confusion_by_criterion,
    )

    table = compare_judges(results, card_judge)
    ood = experts.frame["ood"].to_numpy()
    all_scores = pd.concat(scores, ignore_index=True)
    reliability = calibration(experts, all_scores, score=score, rows=ood)
    if fmt == "csv":
        return str(table.to_csv(index=False))
    if fmt == "json":
        return json.dumps({"comparison": comparison_json(table), "calibration": comparison_json(reliability),
                           "results": {x: r.to_dict() for x, r in results.items()}},
                          ensure_ascii=False, indent=2, default=str) + "\n"
    if fmt == "html":
        confusion = confusion_by_criterion(experts, all_scores, score=score, rows=ood)
        return comparison_html(table, results, confusion, reliability)
    return comparison_text(table)


def register(app: typer.Typer) -> None:
    app.command("meta-eval")(meta_eval)
