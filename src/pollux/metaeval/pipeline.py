"""`run`: a whole meta-evaluation as `pollux meta-eval` does it — expert data, score files and
run databases, judges run on the expert data, one result per split, the model card comparison —
so the verb only parses flags, calls `run` and prints `MetaEvalRun.render(...)`.

    from pollux.metaeval import JudgeRun, run
    done = run("POLLUX/data", scores=["judge-a.jsonl", "runs/7b.db"], judges=[JudgeRun("openai:gpt-4o")],
               names=["A", "7b", "gpt-4o"], splits="all,ood", log=print)
    print(done.render("markdown"))

Everything that can be checked is checked before any data is read or any judge is loaded (a
typo must not cost an hour of judging). A judge runs only on the expert rows the requested
splits use, each distinct judgement once, in this process, on the executor (`executor`) or
through a `pollux evaluate` run store (`db`: resumable, reused by later runs).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pollux.metaeval.domains import check_split, parse_ood_tasks
from pollux.metaeval.evaluate import MetaEvalResult, meta_evaluate, split_rows
from pollux.metaeval.experts import ExpertData, MetaEvalWarning, load_experts
from pollux.metaeval.metrics import METRICS
from pollux.metaeval.scores import (
    ScoreFile,
    parse_score_choices,
    scores_from_db,
    scores_from_judge,
    write_score_jsonl,
)
from pollux.metaeval.tables import FORMATS, render
from pollux.metaeval.trust import Jury, check_jury_rule

DB_SUFFIXES = (".db", ".sqlite", ".sqlite3")  # a score source with these is a pollux run database
COMPARISONS = ("model-card",)
SHOWN = ("spearman", "mae", "vc")  # the tables shown by default (the model card's)


@dataclass(frozen=True)
class JudgeRun:
    """A judge to run on the expert data. `spec`: a checkpoint folder, `vllm:PATH` or
    `openai:MODEL`; `options`: its engine options, already checked against its engine (None: the
    engine's defaults); `given`: the options as the user gave them — a run store (`db`) records
    them as the run's configuration, so the same options resume the same run. `store_tag`: a run
    store holds one configuration, so a repeat with another sampling seed is judged in a store of
    its own beside `db` ("runs.db" → "runs.seed1.db"), resumable like any other."""

    spec: str
    options: Any = None
    given: Mapping[str, Any] = field(default_factory=dict)
    store_tag: str = ""


@dataclass
class MetaEvalRun:
    """What `run` computed: the expert data, every judge's score frame, and one result per split."""

    experts: ExpertData
    scores: list[pd.DataFrame]
    results: dict[str, MetaEvalResult]
    score: tuple[str, ...]
    compare: str | None = None
    card_judges: list[str] = field(default_factory=list)

    def render(self, fmt: str = "table", metrics: Sequence[str] = SHOWN) -> str:
        """The output of `pollux meta-eval --format FMT --metrics …`: the comparison with the model
        card, one result, or several splits (JSON keyed by split, other formats one block each)."""
        check_format(fmt)
        if self.compare is not None:
            from pollux.metaeval.card import render_comparison

            return render_comparison(self.results, self.card_judges, fmt, self.experts, self.scores, self.score)
        if len(self.results) == 1:
            return render(next(iter(self.results.values())), fmt, tuple(metrics))
        if fmt == "json":
            return json.dumps({"splits": {x: r.to_dict() for x, r in self.results.items()}}, ensure_ascii=False,
                              indent=2, default=str) + "\n"
        heading = {"markdown": "## split: {}\n\n", "html": "<h2>split: {}</h2>\n"}.get(fmt, "=== split: {} ===\n")
        return "\n".join(heading.format(x) + render(r, fmt, tuple(metrics)) for x, r in self.results.items())


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown --format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return fmt


def parse_metrics(value: str | Sequence[str]) -> tuple[str, ...]:
    """`spearman,mae`, `all` or a sequence → the metric tables to show."""
    if isinstance(value, str):
        return METRICS if value.strip() == "all" else tuple(m.strip() for m in value.split(",") if m.strip())
    return tuple(value)


def parse_splits(value: str | Sequence[str]) -> list[str]:
    """`ood`, `all,ood,id` or a sequence → the splits, each checked, in order, once each."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    splits = list(dict.fromkeys(x.strip() for x in parts if x.strip()))
    for x in splits:
        check_split(x)
    if not splits:
        raise ValueError("no split given: expected ood, id or all")
    return splits


def run(
    experts: str | Path | pd.DataFrame | ExpertData,
    *,
    scores: Sequence[str | Path] = (),
    judges: Sequence[JudgeRun] = (),
    names: Sequence[str] = (),
    splits: str | Sequence[str] | None = None,
    score: str | Sequence[str] = "auto",
    on: Sequence[str] = (),
    ood_tasks: str | Sequence[str] | None = None,
    strict: bool = False,
    compare: str | None = None,
    card_judges: Sequence[str] = (),
    db: str | Path | None = None,
    executor: Any = None,
    save_scores: str | Path | None = None,
    log: Callable[[str], None] | None = None,
    repeats: int = 1,
    juries: Sequence[str] = (),
    **evaluate: Any,
) -> MetaEvalRun:
    """A meta-evaluation from its inputs (see the module docstring).

    `scores`: score files (`read_score_jsonl`) and pollux run databases (by suffix,
    `scores_from_db`); `judges`: judges to run on the expert data; `names`: every source's name,
    in that order (all `scores`, then all `judges`), or none. `on`: join score files on these
    columns instead of by content. `strict`: an expert row that cannot be read or used is an
    error (`load_experts`). `compare="model-card"`: compute the splits the card's tables use,
    for `MetaEvalRun.render` (`splits` is then ignored, with a warning). `save_scores`: write the
    judges' scores as JSONL. `log`: progress lines. `repeats`: the sources, in order, are runs of
    one judge N at a time (`--repeats N`: the CLI runs each `--judge` N times with sampling seeds
    0..N-1): each block gets a median and a mean column and a consistency table. `juries`: rules
    (`trust.JURY_RULES`) combining every source into a jury column each. `evaluate`:
    `meta_evaluate`'s settings (n_bootstrap, confidence, seed, by_group, out_of_scale,
    kendall_ci, alpha_ci, common_rows)."""
    wanted, choices, rules = _check_request(splits, score, compare, scores, judges, names, repeats, juries)
    say = log or (lambda _message: None)
    source_names: list[str | None] = list(names) or [None] * (len(scores) + len(judges))
    data, files = _read_inputs(experts, scores, on, ood_tasks, strict)
    if compare is not None:
        from pollux.metaeval.card import card_splits

        wanted = card_splits()
    frames = [_join_scores(f, name, data) for f, name in zip(files, source_names, strict=False)]
    needed = rows_for(data, wanted)
    ran = [_judge(j, name, needed, db, executor, say)
           for j, name in zip(judges, source_names[len(scores):], strict=True)]
    if save_scores is not None and ran:
        write_score_jsonl(pd.concat(ran, ignore_index=True), save_scores)
        say(f"saved judge scores to {save_scores}")
    sources, blocks = _repeat_blocks(frames + ran, repeats)
    results = {x: meta_evaluate(data, sources, score=choices, split=x, juries=rules, repeats=blocks, **evaluate)
               for x in wanted}
    return MetaEvalRun(experts=data, scores=frames + ran, results=results, score=choices, compare=compare,
                       card_judges=list(card_judges))


def _repeat_blocks(frames: list[pd.DataFrame], repeats: int) -> tuple[list[pd.DataFrame], list[list[str]]]:
    """The score frames, and with `repeats` > 1 the judge names of each block of `repeats` runs.
    Runs of one block that share a name (the same judge's score files) are told apart as
    "NAME run i"."""
    if repeats == 1:
        return frames, []
    out: list[pd.DataFrame] = []
    blocks: list[list[str]] = []
    for start in range(0, len(frames), repeats):
        block = frames[start:start + repeats]
        names = [str(f["judge"].iloc[0]) if len(f) else "" for f in block]
        if len(set(names)) < len(names):
            names = [f"{names[0]} run {i + 1}" for i in range(len(block))]
            block = [f.assign(judge=n) for f, n in zip(block, names, strict=True)]
        out += block
        blocks.append(names)
    return out, blocks


def _check_request(splits: str | Sequence[str] | None, score: str | Sequence[str], compare: str | None,
                   scores: Sequence[str | Path], judges: Sequence[JudgeRun], names: Sequence[str], repeats: int,
                   juries: Sequence[str]) -> tuple[list[str], tuple[str, ...], list[Jury]]:
    """What can be checked before reading anything: (the splits, the score choices, the juries)."""
    if compare is not None and compare not in COMPARISONS:
        raise ValueError(f"unknown --compare {compare!r}: expected {', '.join(COMPARISONS)}")
    if compare is not None and splits is not None:
        warnings.warn(f"--split {splits if isinstance(splits, str) else ','.join(splits)} is ignored with --compare "
                      "model-card: each metric is computed on the card's own split (Spearman and MAE out-of-domain, "
                      "Verdict Confidence on all rows)", MetaEvalWarning, stacklevel=3)
    wanted = parse_splits("ood" if splits is None else splits)
    choices = parse_score_choices(score)
    n_sources = len(scores) + len(judges)
    if repeats < 1 or n_sources % repeats:
        raise ValueError(f"--repeats {repeats}: the {n_sources} judge source(s) must be whole blocks of {repeats} "
                         "runs of one judge")
    rules = [Jury(check_jury_rule(how)) for how in juries]
    if compare is not None and (repeats > 1 or juries):
        raise ValueError("--jury and --repeats are not in the model card: run them without --compare")
    if repeats > 1 and len(choices) > 1:
        raise ValueError("--repeats compares one score per judge: give a single --score")
    if not scores and not judges:
        raise ValueError("give at least one judge: --scores FILE or --judge SPEC")
    if names and len(names) != len(scores) + len(judges):
        raise ValueError(f"{len(names)} --judge-name for {len(scores) + len(judges)} judge sources")
    return wanted, choices, rules


def _read_inputs(experts: str | Path | pd.DataFrame | ExpertData, scores: Sequence[str | Path], on: Sequence[str],
                 ood_tasks: str | Sequence[str] | None, strict: bool) -> tuple[ExpertData, list[Path | ScoreFile]]:
    """The expert data and the score sources, read side by side: the experts load on a thread
    while the score files are read here (both mostly in pyarrow, which releases the GIL; joining
    needs the experts, so it waits for them). Run databases are read later, by `_join_scores`. An
    error in the expert data is raised first, as when reading one after the other."""
    if isinstance(experts, ExpertData):
        return experts, [_read_score_file(Path(p), on) for p in scores]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pollux-read") as pool:
        loading = pool.submit(load_experts, experts, ood_tasks=parse_ood_tasks(ood_tasks), keep=tuple(on),
                              strict=strict)
        try:
            files = [_read_score_file(Path(p), on) for p in scores]
        except Exception:
            loading.result()  # the experts' error first
            raise
        return loading.result(), files


def _read_score_file(path: Path, on: Sequence[str]) -> Path | ScoreFile:
    """A score file read (not yet joined), or a run database's path (by suffix)."""
    if not path.exists():
        raise ValueError(f"{path}: no such file")
    if path.suffix.lower() in DB_SUFFIXES:
        return path
    return ScoreFile.read(path, on=on)


def _join_scores(source: Path | ScoreFile, name: str | None, experts: ExpertData) -> pd.DataFrame:
    """A score source's frame: a pollux run database's scores, or a score file joined to `experts`."""
    if isinstance(source, Path):
        return scores_from_db(source, judge=name)
    return source.join(name, experts)


def rows_for(experts: ExpertData, splits: Sequence[str]) -> ExpertData:
    """The expert rows the tables of `splits` use (`split_rows`): a judge is run on those only."""
    from pollux.metaeval.runstore import subset

    masks = [split_rows(experts, x)[0] for x in splits]
    used = masks[0].copy()
    for mask in masks[1:]:
        used |= mask
    return experts if used.all() else subset(experts, used)


def _judge(judge: JudgeRun, name: str | None, experts: ExpertData, db: str | Path | None, executor: Any,
           say: Callable[[str], None]) -> pd.DataFrame:
    """One judge's scores on `experts`: through the run store (`db`), on the executor, or here."""
    n = experts.frame["key"].nunique()
    if db is not None:
        from pollux.evaluate import JudgeLoader

        db = Path(db)
        if judge.store_tag:
            db = db.with_name(f"{db.stem}.{judge.store_tag}{db.suffix}")
        from pollux.executor.judging import JudgeFactory
        from pollux.metaeval.runstore import judge_through_store

        say(f"judge {name or judge.spec}: {n:,} judgements, run store {db}")
        loader = JudgeLoader({"judge": judge.spec, "options": dict(judge.given)},
                             JudgeFactory(judge.spec, judge.options))
        return judge_through_store(experts, db, loader, name=name, log=say, executor=executor)

    def progress(done: int, total: int) -> None:
        if done == total or done % 50 == 0:
            say(f"  {done}/{total}")

    if executor is not None:
        say(f"running judge {name or judge.spec} on {n:,} judgements, "
            f"{executor.workers} worker(s){' on Ray' if executor.ray else ''}")
        return scores_from_judge(judge.spec, experts, options=judge.options, name=name, on_progress=progress,
                                 executor=executor)
    from pollux.judge import Judge

    loaded = Judge.from_spec(judge.spec, judge.options)
    say(f"running judge {name or loaded.name} on {n:,} judgements")
    return scores_from_judge(loaded, experts, name=name, on_progress=progress)
