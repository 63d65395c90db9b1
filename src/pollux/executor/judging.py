"""Judging on the executor: the worker that holds one judge, and the rows it takes and returns.

`pollux evaluate --ray` (and `pollux meta-eval --judge … --ray`) send pending judgements through
`pollux.executor.map_batches`. Each worker — a Ray Data actor, or a local thread — loads ONE judge
from a picklable `JudgeFactory` (the spec string and the validated options: nothing loaded travels)
and judges batch after batch. Rows are plain JSON:

* in: one row per *answer* — `{"key": first job key, "jobs": [{"key": item key, "item": JudgeItem}]}` —
  so the criteria of one answer stay in one batch and the engine shares their prompt prefix;
* out: one row per judgement — `{"key": item key, "verdict": Verdict}` — emitted the moment the
  engine reports the verdict (the worker is `Streaming`); the first row of every batch also
  carries `"config"`, the worker's `run_config`, which is how a driver that never loads the
  weights learns the run's configuration.

`pollux evaluate` without `--ray` takes the same road: one local worker thread, wrapping the judge
this process loaded. A judge call that raises becomes error verdicts for the items it did not
finish (the run goes on, a resume retries them; the first such row carries `"failure"`, which the
driver logs); a judge that cannot load, or a worker process that dies, is the executor's business
(a clear `ExecutorError`, or the batch retried on a fresh worker).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pollux.engine.registry import CommonOptions
from pollux.executor import Emit, Row, Streaming
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
    """The executor's worker factory: `load` (picklable, e.g. a `JudgeFactory`; or, for a judge this
    process already loaded, a function returning it) → a `Streaming` worker that emits one result
    row per verdict the moment the engine reports it (locally, so the driver stores each verdict
    at once; on Ray a batch's rows travel back together)."""

    load: Callable[[], Any]

    def __call__(self) -> Streaming:
        judge = self.load()
        config = run_config(judge)

        def run(rows: list[Row], emit: Emit) -> None:
            jobs = [job for row in rows for job in row["jobs"]]
            first = True

            def send(index: int, verdict: Verdict, failure: str | None) -> None:
                nonlocal first
                out: Row = {"key": jobs[index]["key"], "verdict": verdict.to_dict()}
                if first:  # the batch's first row tells a driver that never loaded the judge its run
                    out["config"], first = config, False
                if failure is not None:
                    out["failure"] = failure
                emit([out])

            judge_jobs(judge, jobs, send)

        return Streaming(run)


def run_config(judge: Any) -> dict[str, Any]:
    """What makes a run's verdicts what they are; resuming requires the same. Here, not in
    `pollux.evaluate` (which uses it too): the workers compute it, and evaluate imports this module
    (never the reverse: no import cycle)."""
    from pollux import __version__

    return {
        "judge": judge.name,
        "kind": judge.kind,
        "engine": judge.describe(),
        "pollux_version": __version__,
    }


def judge_jobs(judge: Any, jobs: list[Row], send: Callable[[int, Verdict, str | None], None]) -> None:
    """One engine call for the jobs of a batch; `send(index, verdict, failure)` once per job, as the
    engine reports each verdict. A call that raises gives an error verdict for each job it did not
    finish, the first of them sent with `failure` (what the call raised) for the driver's log."""
    items = [JudgeItem.from_dict(job["item"], where=f"job {job['key']}") for job in jobs]
    sent: set[int] = set()
    failure: list[str] = []

    def deliver(index: int, verdict: Verdict) -> None:
        if index in sent:
            return
        sent.add(index)
        verdict.judge = verdict.judge or judge.name
        send(index, verdict, failure.pop() if failure else None)

    try:
        verdicts = judge.judge_many(items, on_verdict=deliver)
    except Exception as exc:  # as ever: record it, the run goes on, a resume retries
        message = f"{type(exc).__name__}: {exc}"
        failure.append(f"a batch of {len(items)} failed ({message}); recorded as errors, the run goes on")
        verdicts = [error_verdict(item, message, judge=judge.name) for item in items]
    for index, verdict in enumerate(verdicts):  # engines that do not call on_verdict for every item
        deliver(index, verdict)


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
