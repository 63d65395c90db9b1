"""`pollux meta-eval`: how well judges agree with expert scores (a thin shell over
`pollux.metaeval.run`: it parses the flags, calls it and prints the rendered result).

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
from pathlib import Path
from typing import Any

import typer

from pollux.cli import _options as opt


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
    split: str | None = typer.Option(None, "--split", help="ood (held-out task types, as the model card; the "
                                     "default), id or all; several as a comma list (all,ood,id): the data is read "
                                     "and keyed once. Ignored, with a warning, by --compare model-card."),
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
                                "spearman, mae, vc, kendall, pearson, exact, within1, kappa (quadratic Cohen's), alpha (ordinal "
                                "Krippendorff's). JSON has all."),
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
    alpha_ci: bool = typer.Option(False, "--alpha-ci", help="Also bootstrap Krippendorff's alpha (as costly as "
                                  "Spearman's intervals); its point value is always computed."),
    jury: list[str] = typer.Option([], "--jury", help="Add a jury of all judge sources: mean, median or majority "
                                   "(of the rounded scores). Repeatable; the 'juries' table compares each jury with "
                                   "each member on the same resamples."),
    repeats: int = typer.Option(1, "--repeats", min=1, help="Repeat consistency: each --judge runs N times with "
                                "sampling seeds 0..N-1 (set --temperature > 0; with --db each seed in its own run store "
                                "beside it, DB.seed0.db, DB.seed1.db, …), "
                                "and --scores files are taken N at a time as runs of one judge."),
    strict: bool = typer.Option(False, "--strict", help="An expert row that cannot be read or used (out of the "
                                "rubric's scale, not finite, duplicated) is an error instead of a counted warning."),
    engine_options: dict[str, Any] | None = None,
    ray: opt.Ray = None,
    workers: opt.Workers = None,
    cpus_per_worker: opt.CpusPerWorker = None,
    gpus_per_worker: opt.GpusPerWorker = None,
) -> None:
    """Judges against expert scores: Spearman, MAE, Verdict Confidence (and more) per evaluated LLM and
    their average, with bootstrap confidence intervals, in the model card's table shape.

    \f
    Long only in its option declarations (one typer parameter each); the work is one API call.
    """
    from pollux.metaeval import MetaEvalWarning, run
    from pollux.metaeval.pipeline import check_format, parse_metrics

    given = engine_options or {}
    # Every judge gets the same options, each checked against its own engine before anything runs.
    executor = opt.executor_options(ray=ray, workers=workers, cpus_per_worker=cpus_per_worker,
                                    gpus_per_worker=gpus_per_worker,
                                    tensor_parallel_size=given.get("tensor_parallel_size"))
    judges, names = _expand_repeats(judge, judge_name, len(scores), repeats, given, executor)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MetaEvalWarning)
        try:
            check_format(fmt)
            done = run(expert_file, scores=scores, judges=judges, names=names, splits=split, score=score,
                       on=[c.strip() for c in (on or "").split(",") if c.strip()], ood_tasks=ood_tasks,
                       strict=strict, compare=compare, card_judges=card_judge, db=db, executor=executor,
                       save_scores=save_scores, log=lambda message: typer.echo(message, err=True),
                       n_bootstrap=bootstrap, confidence=confidence, seed=seed, by_group=not no_groups,
                       out_of_scale=out_of_scale, kendall_ci=kendall_ci, common_rows=common_rows,
                       alpha_ci=alpha_ci, juries=jury, repeats=repeats)
            text = done.render(fmt, parse_metrics(metrics))
        except (ValueError, OSError, ImportError, RuntimeError) as e:  # RuntimeError: pollux.store
            _echo_warnings(caught)
            _fail(e)
    _echo_warnings(caught)
    if out is not None:
        out.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {out}", err=True)
    else:
        sys.stdout.write(text)


def _expand_repeats(specs: list[str], names: list[str], n_scores: int, repeats: int, given: dict[str, Any],
                    executor: Any) -> tuple[list[Any], list[str]]:
    """Each --judge once, or `repeats` times with sampling seeds 0..N-1 (each seed its own run in
    a run store: the options are the run's configuration), named "NAME seed=i"."""
    from pollux.metaeval import JudgeRun

    if repeats == 1 or not specs:
        judges = [JudgeRun(spec, opt.check_options(spec, given, defaults=opt.worker_defaults(executor)), given)
                  for spec in specs]
        return judges, list(names)
    if names and len(names) != n_scores + len(specs):
        _fail(f"{len(names)} --judge-name for {n_scores + len(specs)} judge sources")
    seeds = list(range(repeats))
    judges, judge_names = [], []
    own: list[str | None] = list(names[n_scores:]) if names else [None] * len(specs)
    for spec, name in zip(specs, own, strict=False):
        for s in seeds:
            options = {**given, "seed": s}
            judges.append(JudgeRun(spec, opt.check_options(spec, options, defaults=opt.worker_defaults(executor)),
                                   options, store_tag=f"seed{s}"))
            judge_names.append(f"{name or spec} seed={s}")
    # "" = the source's own name (a score file's judge field or its stem)
    return judges, [*(names[:n_scores] if names else [""] * n_scores), *judge_names]


def _echo_warnings(caught: list[warnings.WarningMessage]) -> None:
    """Each distinct warning once: several splits repeat the notes about the same scores."""
    for message in dict.fromkeys(str(w.message) for w in caught):
        typer.echo(f"warning: {message}", err=True)
    caught.clear()


def register(app: typer.Typer) -> None:
    # the engine flags come from the registry, as in every judging verb; --seed is the bootstrap's
    app.command("meta-eval")(opt.with_engine_options(meta_eval, flags={"seed": "--sampling-seed"}))
