"""An evaluation run: input rows × criteria → judgements → the SQLite run store, resumable.

`evaluate(inputs, db, judge)` is what `pollux evaluate` runs:

1. read the input files (`pollux.inputs`): bad rows are reported with their line and skipped
   (`strict=True` stops at the first one, before any model is loaded);
2. expand every row into one `JudgeItem` per criterion (`pollux.taxonomy.resolve_criteria`: the row's
   own criteria, else its task's, else the user's criteria file); an unknown task or criterion is a
   problem of that row;
3. open (or resume) the run whose configuration — judge, template, sampling, pollux version — equals
   this one; a different configuration is refused unless `new_run=True`;
4. judge what is still missing, a chunk at a time, committing each verdict the moment the engine
   reports it (`on_verdict`), so a crash or SIGKILL loses at most the verdicts in flight and Ctrl-C
   stops cleanly. A chunk whose call fails records an error verdict for each of its unfinished
   items and the run goes on; errors are retried by the next resume.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pollux.inputs import (
    DEFAULT_MAX_FIELD_CHARS,
    InputError,
    InputProblem,
    InputRow,
    check_row,
    model_id,
    read_rows,
    record_id,
)
from pollux.records import JudgeItem, RecordError
from pollux.store import JobRow, RunStore
from pollux.verdicts import Verdict, error_verdict

DEFAULT_CHUNK_SIZE = 256

# Columns that are the record itself, not extra metadata worth keeping.
_KNOWN_COLUMNS = {
    "instruction", "answer", "reference_answer", "criteria", "criteria_name", "rubrics", "task_type",
    "task_subtype", "task_subsubtype", "model_id", "model", "id", "record_id", "prompt_id", "meta",
}


@dataclass
class PreparedRecord:
    """A valid input row with its store fields and its items (one per criterion)."""

    row: InputRow
    fields: dict[str, Any]
    items: list[JudgeItem]


@dataclass
class Expansion:
    records: list[PreparedRecord] = field(default_factory=list)
    problems: list[InputProblem] = field(default_factory=list)

    @property
    def items(self) -> list[JudgeItem]:
        return [it for rec in self.records for it in rec.items]


@dataclass
class EvaluateSummary:
    db: str
    run_id: int = 0
    new_run: bool = False
    judge: str = ""
    rows_read: int = 0
    rows_skipped: int = 0
    problems: list[str] = field(default_factory=list)
    jobs: int = 0
    items: int = 0
    already_done: int = 0
    judged: int = 0
    failed: int = 0
    remaining: int = 0
    interrupted: bool = False
    elapsed_s: float = 0.0  # the whole call, loading included
    judging_s: float = 0.0  # judging only: what judgements_per_s is measured over
    judgements_per_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class EvaluateError(RuntimeError):
    """The run cannot start (unreadable input in strict mode, configuration mismatch, ...)."""


def answer_key(instruction: str, reference: str, answer: str, model: str) -> str:
    """Identifies one answer of one model: all its criteria share it (gating groups by it)."""
    payload = json.dumps([instruction, reference, answer, model], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def _task_group(data: Mapping[str, Any], catalog: Any) -> str | None:
    meta = data.get("meta")
    if isinstance(meta, str) and meta.strip():
        return meta.strip()  # POLLUX-instructions: `meta` is the task group
    task_type = data.get("task_type")
    if catalog is not None and isinstance(task_type, str) and task_type.strip():
        try:
            return catalog.task_group(task_type)
        except Exception:  # an unknown task type only loses the group label here
            return None
    return None


def expand(
    paths: Sequence[str | Path],
    *,
    catalog: Any = None,
    user_criteria: Any = None,
    strict: bool = False,
    max_field_chars: int = DEFAULT_MAX_FIELD_CHARS,
) -> Expansion:
    """Read the inputs and turn each valid row into its items; every bad row becomes a problem."""
    from pollux.taxonomy import TaxonomyError, load_catalog, resolve_criteria

    catalog = catalog if catalog is not None else load_catalog()
    out = Expansion()
    for path in paths:
        read = read_rows(path)
        out.problems += read.problems
        if strict and read.problems:
            raise EvaluateError(f"{read.problems[0]} (--strict)")
        for row in read.rows:
            problem = check_row(row, max_field_chars=max_field_chars)
            items: list[JudgeItem] = []
            fields: dict[str, Any] = {}
            if problem is None:
                try:
                    fields = _record_fields(row, catalog)
                    specs = resolve_criteria(row.data, catalog, user_criteria=user_criteria)
                    if not specs:
                        raise TaxonomyError("no criteria: give `criteria`, `criteria_name` + `rubrics`, or a task_type")
                    items = [_item(row, fields, spec) for spec in specs]
                except (TaxonomyError, RecordError, ValueError, TypeError) as e:
                    problem = str(e)
            if problem is not None:
                p = InputProblem(row.source, row.line, problem)
                if strict:
                    raise EvaluateError(f"{p} (--strict)")
                out.problems.append(p)
                continue
            out.records.append(PreparedRecord(row, fields, items))
    out.problems.sort(key=lambda p: (p.source, p.line))
    return out


def _record_fields(row: InputRow, catalog: Any) -> dict[str, Any]:
    d = row.data
    instruction, answer = d["instruction"], d["answer"]
    reference = d.get("reference_answer") or ""
    model = model_id(row)
    extra = {k: v for k, v in d.items() if k not in _KNOWN_COLUMNS and _jsonable(v)}
    return {
        "source": row.source,
        "record_id": record_id(row),
        "model_id": model,
        "line": row.line,
        "answer_key": answer_key(instruction, reference, answer, model),
        "instruction": instruction,
        "answer": answer,
        "reference_answer": reference,
        "task_type": _str_or_none(d.get("task_type")),
        "task_subtype": _str_or_none(d.get("task_subtype")),
        "task_subsubtype": _str_or_none(d.get("task_subsubtype")),
        "task_group": _task_group(d, catalog),
        "extra_json": json.dumps(extra, ensure_ascii=False, default=str),
    }


def _item(row: InputRow, fields: Mapping[str, Any], spec: Any) -> JudgeItem:
    return JudgeItem(
        instruction=fields["instruction"],
        answer=fields["answer"],
        criteria_name=spec.name,
        rubrics=spec.rubrics,
        reference_answer=fields["reference_answer"],
        meta={
            "source": row.source,
            "line": row.line,
            "record_id": fields["record_id"],
            "model_id": fields["model_id"],
            "task_type": fields["task_type"],
            "task_group": fields["task_group"],
            "criterion_id": getattr(spec, "criterion_id", None),
            "criterion_group": getattr(spec, "group", None),
        },
    )


def _str_or_none(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def run_config(judge: Any) -> dict[str, Any]:
    """What makes a run's verdicts what they are; resuming requires the same."""
    from pollux import __version__

    return {
        "judge": judge.name,
        "kind": judge.kind,
        "engine": judge.describe(),
        "pollux_version": __version__,
    }


class Progress:
    """Progress reporting hook: `start(total, done)`, `advance(n)`, `stop()`. Silent by default."""

    def start(self, total: int, done: int) -> None: ...

    def advance(self, n: int = 1) -> None: ...

    def stop(self) -> None: ...


class RichProgress(Progress):
    """A rich progress bar on stderr: judgements done / total, judgements per second, ETA."""

    def __init__(self, description: str = "judging") -> None:
        self.description = description
        self._progress: Any = None
        self._task: Any = None
        self._t0 = 0.0
        self._n = 0

    def start(self, total: int, done: int) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} judgements/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(file=sys.stderr),
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(self.description, total=total, completed=done, rate="–")
        self._t0 = time.monotonic()

    def advance(self, n: int = 1) -> None:
        if self._progress is None:
            return
        self._n += n
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        self._progress.update(self._task, advance=n, rate=f"{self._n / elapsed:.2f}")

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def evaluate(
    inputs: Sequence[str | Path] | str | Path,
    db: str | Path,
    judge: Any,
    *,
    catalog: Any = None,
    user_criteria: Any = None,
    strict: bool = False,
    new_run: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    max_field_chars: int = DEFAULT_MAX_FIELD_CHARS,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> EvaluateSummary:
    """Judge every (row × criterion) of `inputs` that `db` does not hold yet; see the module doc.

    `judge` is a `pollux.judge.Judge` or a zero-argument callable that loads one — called only
    after the inputs were read, so a bad file fails before a large model is loaded. Raises
    `EvaluateError` before judging anything when the run cannot start; KeyboardInterrupt is caught:
    the summary says `interrupted` and what remains.
    """
    if isinstance(inputs, str | Path):
        inputs = [inputs]
    if chunk_size < 1:
        raise EvaluateError("chunk_size must be ≥ 1")
    log = log or (lambda _msg: None)
    progress = progress or Progress()
    t0 = time.monotonic()
    summary = EvaluateSummary(db=str(db))

    try:
        expansion = expand(inputs, catalog=catalog, user_criteria=user_criteria, strict=strict,
                           max_field_chars=max_field_chars)
    except InputError as e:
        raise EvaluateError(str(e)) from None
    summary.problems = [str(p) for p in expansion.problems]
    summary.rows_read = len(expansion.records) + len(expansion.problems)
    summary.rows_skipped = len(expansion.problems)
    for p in expansion.problems:
        log(f"skipped {p}")

    if not hasattr(judge, "judge_many"):  # a loader: load only now that the inputs are known good
        judge = judge()
    config = run_config(judge)
    summary.judge = judge.name

    with RunStore(db) as store:
        from pollux.store import StoreError

        try:
            run, created = store.open_run(judge.name, config, new_run=new_run)
        except StoreError as e:
            raise EvaluateError(str(e)) from None
        summary.run_id, summary.new_run = run.run_id, created

        by_key: dict[str, JudgeItem] = {}
        order: list[str] = []
        with store.transaction():
            for rec in expansion.records:
                pk = store.upsert_record(rec.fields)
                jobs = []
                for position, item in enumerate(rec.items):
                    key = item.key
                    jobs.append(JobRow(pk, item.criteria_name, item.meta.get("criterion_id"),
                                       item.meta.get("criterion_group"), item.rubrics, key, position))
                    if key not in by_key:
                        by_key[key] = item
                        order.append(key)
                store.add_jobs(run.run_id, jobs)
        summary.jobs = sum(len(rec.items) for rec in expansion.records)
        summary.items = len(order)
        done = store.done_keys(run.run_id, judge.name)
        todo = [k for k in order if k not in done]
        summary.already_done = summary.items - len(todo)
        log(f"run {run.run_id} ({'new' if created else 'resumed'}): {summary.items} judgements, "
            f"{summary.already_done} already done, {len(todo)} to judge")

        progress.start(total=summary.items, done=summary.already_done)
        t_judge = time.monotonic()
        try:
            for start in range(0, len(todo), chunk_size):
                chunk_keys = todo[start : start + chunk_size]
                _judge_chunk(store, run.run_id, judge, [by_key[k] for k in chunk_keys], chunk_keys,
                             summary, progress, log)
        except KeyboardInterrupt:
            summary.interrupted = True
            log("interrupted: every verdict so far is saved; run the same command again to resume")
        finally:
            progress.stop()
        judging_s = time.monotonic() - t_judge
        summary.remaining = summary.items - len(store.done_keys(run.run_id, judge.name))

    summary.elapsed_s = round(time.monotonic() - t0, 3)
    summary.judging_s = round(judging_s, 3)
    judged_total = summary.judged + summary.failed
    summary.judgements_per_s = round(judged_total / judging_s, 3) if judging_s > 0 else 0.0
    return summary


def _judge_chunk(
    store: RunStore,
    run_id: int,
    judge: Any,
    items: list[JudgeItem],
    keys: list[str],
    summary: EvaluateSummary,
    progress: Progress,
    log: Callable[[str], None],
) -> None:
    written: set[int] = set()

    def on_verdict(index: int, verdict: Verdict) -> None:
        if index in written:
            return
        verdict.judge = verdict.judge or judge.name
        store.write_verdict(run_id, keys[index], verdict)
        written.add(index)
        if verdict.error:
            summary.failed += 1
        else:
            summary.judged += 1
        progress.advance(1)

    try:
        verdicts = judge.judge_many(items, on_verdict=on_verdict)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # one failing call must not end an hours-long run
        message = f"{type(e).__name__}: {e}"
        log(f"a batch of {len(items)} failed ({message}); recorded as errors, the run goes on")
        for index, item in enumerate(items):
            if index not in written:
                on_verdict(index, error_verdict(item, message, judge=judge.name))
        return
    # Engines that do not call on_verdict for every item still get every verdict stored.
    for index, verdict in enumerate(verdicts):
        if index not in written:
            on_verdict(index, verdict)
