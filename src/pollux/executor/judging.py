"""Judging on the executor: the worker that holds one judge, and the rows it takes and returns.

`pollux evaluate --ray` (and `pollux meta-eval --judge … --ray`) send pending judgements through
`pollux.executor.map_batches`. Each worker — a Ray Data actor, or a local thread — loads ONE judge
from a picklable `JudgeFactory` (the spec string and the validated options: nothing loaded travels)
and judges batch after batch. Rows are plain JSON:

* in: one row per *answer* — `{"key": first job key, "jobs": [{"key": item key, "item": JudgeItem}]}` —
  so the criteria of one answer stay in one batch and the engine shares their prompt prefix;
* out: one row per judgement — `{"key": item key, "verdict": Verdict}`; the first row of every
  result batch also carries `"config"`, the worker's `run_config`, which is how a
  driver that never loads the weights learns the run's configuration.

A judge call that raises becomes error verdicts for its items (as in the local loop: the run goes
on, a resume retries them); a judge that cannot load, or a worker process that dies, is the
executor's business (a clear `ExecutorError`, or the batch retried on a fresh worker).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pollux.engine.registry import CommonOptions
from pollux.executor import BatchFn, Row
from pollux.records import JudgeItem
from pollux.verdicts import Verdict, error_verdict


@dataclass(frozen=True)
class JudgeFactory:
    """Loads `Judge.from_spec(spec, options)` wherever it is called — in the driver for a local run,
    inside each actor on Ray. Picklable: a spec string and the options (a dict, validated where the
    judge loads, or the engine's validated options object)."""

    spec: str
    options: Mapping[str, Any] | CommonOptions = field(default_factory=dict)

    def __call__(self) -> Any:
        from pollux.judge import Judge

        return Judge.from_spec(self.spec, self.options)


@dataclass(frozen=True)
class JudgingWorker:
    """The executor's worker factory: `load` (picklable, e.g. a `JudgeFactory`) → a batch function."""

    load: Callable[[], Any]

    def __call__(self) -> BatchFn:
        judge = self.load()
        config = run_config(judge)

        def run(rows: list[Row]) -> list[Row]:
            jobs = [job for row in rows for job in row["jobs"]]
            out = [{"key": job["key"], "verdict": verdict.to_dict()}
                   for job, verdict in zip(jobs, judge_jobs(judge, jobs), strict=True)]
            if out:
                out[0]["config"] = config
            return out

        return run


def run_config(judge: Any) -> dict[str, Any]:
    """What makes a run's verdicts what they are; resuming requires the same. Here, not in
    `pollux.evaluate` (which uses it too): the workers compute it, and evaluate imports this module."""
    from pollux import __version__

    return {
        "judge": judge.name,
        "kind": judge.kind,
        "engine": judge.describe(),
        "pollux_version": __version__,
    }


def judge_jobs(judge: Any, jobs: list[Row]) -> list[Verdict]:
    """One engine call for the jobs of a batch; a call that raises gives an error verdict per item."""
    items = [JudgeItem.from_dict(job["item"], where=f"job {job['key']}") for job in jobs]
    try:
        verdicts = judge.judge_many(items)
    except Exception as exc:  # as the local loop does: record it, the run goes on, a resume retries
        message = f"{type(exc).__name__}: {exc}"
        verdicts = [error_verdict(item, message, judge=judge.name) for item in items]
    for verdict in verdicts:
        verdict.judge = verdict.judge or judge.name
    return verdicts


def answer_rows(answers: Iterable[list[tuple[str, JudgeItem]]]) -> list[Row]:
    """One executor row per answer: its pending (key, item) pairs, in criterion order."""
    return [{"key": jobs[0][0], "jobs": [{"key": key, "item": item.to_dict()} for key, item in jobs]}
            for jobs in answers if jobs]


def answers_per_batch(rows: list[Row], judgements_per_batch: int) -> int:
    """How many answers make a batch of about `judgements_per_batch` judgements."""
    jobs = sum(len(row["jobs"]) for row in rows)
    per_answer = jobs / len(rows) if rows else 1.0
    return max(1, round(judgements_per_batch / max(per_answer, 1.0)))


def verdict_of(row: Row) -> Verdict:
    return Verdict.from_dict(row["verdict"])
