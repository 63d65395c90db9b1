"""An evaluation run: input rows × criteria → judgements → the SQLite run store, resumable.

`evaluate(inputs, db, judge)` is what `pollux evaluate` runs:

1. read the input files (`pollux.inputs`): bad rows are reported with their line and skipped
   (`strict=True` stops at the first one, before any model is loaded);
2. expand every row into one `JudgeItem` per criterion (`pollux.taxonomy.resolve_criteria`: the row's
   own criteria, else its task's, else the user's criteria file); an unknown task or criterion is a
   problem of that row;
   rows sharing an id and model are one answer (`merge_rows`: the same texts or all are rejected);
3. open (or resume) the run whose configuration — judge, template, sampling, pollux version — equals
   this one; a different configuration is refused unless `new_run=True`. A `JudgeLoader` whose
   request already finished every judgement of the inputs is found without loading the judge;
4. judge what is still missing on `pollux.executor.map_batches` — one path, local or on Ray: without
   an executor the judge loaded here is the one worker, on a local thread — about `chunk_size`
   judgements a batch, one answer's criteria together. This process is the only writer of the
   store (`_Driver`): each verdict is committed the moment it reaches it, and locally that is the
   moment the engine reports it (`on_verdict`), so a crash or SIGKILL loses at most the verdicts
   in flight and Ctrl-C stops cleanly. A batch whose call fails records an error verdict for each
   of its unfinished items and the run goes on; errors are retried by the next resume.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from pathlib import Path
from typing import Any

from pollux.executor import ExecutorError, ExecutorOptions, Row, map_batches
from pollux.executor.judging import JudgingWorker, answer_rows, answers_per_batch, run_config, verdict_of
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
from pollux.progress import Progress, RichProgress, Throughput  # noqa: F401  (re-exported: the verbs' progress)
from pollux.records import JudgeItem, RecordError
from pollux.store import JobRow, Run, RunStore, StoreError, config_diff, config_hash, peek_runs
from pollux.verdicts import Verdict

DEFAULT_CHUNK_SIZE = 256

# Columns that are the record itself, not extra metadata worth keeping.
_KNOWN_COLUMNS = {
    "instruction", "answer", "reference_answer", "criteria", "criteria_name", "rubrics", "task_type",
    "task_subtype", "task_subsubtype", "model_id", "model", "id", "record_id", "prompt_id", "meta",
}


@dataclass
class PreparedRecord:
    """One answer to judge: its store fields and its items (one per criterion). `row` is its first
    input row; `lines` all of them (the POLLUX dataset layout gives one row per answer × criterion)."""

    row: InputRow
    fields: dict[str, Any]
    items: list[JudgeItem]
    lines: list[int] = field(default_factory=list)

    @property
    def identity(self) -> tuple[str, str, str]:
        """What the user calls this answer: (file, id, evaluated model)."""
        return self.fields["source"], self.fields["record_id"], self.fields["model_id"]


@dataclass
class Expansion:
    records: list[PreparedRecord] = field(default_factory=list)
    problems: list[InputProblem] = field(default_factory=list)

    @property
    def items(self) -> list[JudgeItem]:
        return [it for rec in self.records for it in rec.items]

    @property
    def rows(self) -> int:
        """Valid input rows (several rows may make one record)."""
        return sum(len(rec.lines) for rec in self.records)


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
    prepared: list[PreparedRecord] = []
    for path in _distinct_inputs(paths):
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
            prepared.append(PreparedRecord(row, fields, items, [row.line]))
    out.records, duplicates = merge_rows(prepared)
    if strict and duplicates:
        raise EvaluateError(f"{duplicates[0]} (--strict)")
    out.problems += duplicates
    out.problems.sort(key=lambda p: (p.source, p.line))
    return out


def _distinct_inputs(paths: Sequence[str | Path]) -> list[Path]:
    """The input files, each once. Rows are known by (file name, id, model) — the name, not the
    folder, so a database stays readable when files move — so two different files with one
    name would mix their rows (the default id is the line number): that is refused up front."""
    by_name: dict[str, Path] = {}
    for path in map(Path, paths):
        other = by_name.setdefault(path.name, path)
        if other is not path and other.resolve() != path.resolve():
            raise EvaluateError(f"two input files are named {path.name!r} ({other}, {path}): rows are "
                                "identified by file name, id and model; rename one")
    return list(by_name.values())


def merge_rows(rows: Sequence[PreparedRecord]) -> tuple[list[PreparedRecord], list[InputProblem]]:
    """The duplicate-id rule: rows with the same (file, id, model) are one answer.

    They must then carry the same texts (instruction, reference answer, answer): their criteria
    are merged into one record (the POLLUX dataset layout, one row per answer × criterion). Rows
    that share an id and model but differ in a text are ambiguous — which answer did the id mean?
    — so all of them are rejected, each naming the others' lines; judging both would attach one
    id to two answers, keeping one would silently drop the other. A criterion an answer already
    has (from an earlier row, or twice in one row) is rejected too: one judgement per answer and
    criterion, so the job count always equals what the store holds."""
    groups: dict[tuple[str, str, str], list[PreparedRecord]] = {}
    for rec in rows:
        groups.setdefault(rec.identity, []).append(rec)
    merged: list[PreparedRecord] = []
    problems: list[InputProblem] = []
    for (_source, rid, model), group in groups.items():
        texts = {rec.fields["answer_key"] for rec in group}
        if len(texts) > 1:
            problems += [_conflict(rec, group, rid, model) for rec in group]
            continue
        first = group[0]
        record = PreparedRecord(first.row, first.fields, [], [])
        seen: dict[str, int] = {}
        for rec in group:
            names = [it.criteria_name for it in rec.items]
            repeated = next((n for n in names if n in seen or names.count(n) > 1), None)
            if repeated is not None:
                where = f"line {seen[repeated]}" if repeated in seen else "this row"
                problems.append(InputProblem(rec.row.source, rec.row.line,
                                             f"criterion {repeated!r} of id {rid!r} (model {model!r}) is already "
                                             f"at {where}: an answer is judged once per criterion"))
                continue
            seen.update(dict.fromkeys(names, rec.row.line))
            record.items += rec.items
            record.lines.append(rec.row.line)
        if record.items:
            merged.append(record)
    return merged, problems


def _conflict(rec: PreparedRecord, group: Sequence[PreparedRecord], rid: str, model: str) -> InputProblem:
    others = [o for o in group if o is not rec and o.fields["answer_key"] != rec.fields["answer_key"]]
    fields = [f for f in ("instruction", "reference_answer", "answer")
              if any(o.fields[f] != rec.fields[f] for o in others)]
    lines = ", ".join(str(o.row.line) for o in others)
    message = (f"id {rid!r} of model {model!r} is also at line{'s' if len(others) > 1 else ''} {lines} with "
               f"a different {' / '.join(fields)}: an id must name one answer per model (all its rows skipped)")
    return InputProblem(rec.row.source, rec.row.line, message)


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


@dataclass(frozen=True)
class JudgeLoader:
    """A judge to load only when something is left to judge.

    `request` is what the user asked for — the judge spec and its options, as given — and `load`
    loads it. A run remembers the request that opened it, so rerunning a finished run with the
    same request needs no weights: `evaluate` finds the run by the request and, when every
    judgement of the inputs is already stored there, never calls `load`. (The run's own
    configuration — `run_config` — needs the loaded judge: its resolved dtype, architecture, ….)
    """

    request: Mapping[str, Any]
    load: Callable[[], Any]

    def describe(self) -> dict[str, Any]:
        """The request as plain JSON-able values (an API key is never part of it)."""
        return _plain_value(dict(self.request))

    def __call__(self) -> Any:
        return self.load()


def _plain_value(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain_value(v) for k, v in value.items() if k != "api_key"}
    if hasattr(value, "model_dump"):  # a pydantic options object
        return _plain_value(dict(value))
    if is_dataclass(value) and not isinstance(value, type):
        return _plain_value(asdict(value))
    if isinstance(value, list | tuple):
        return [_plain_value(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)


def request_key(loader: Any) -> str:
    """The hash a run remembers its request by (`JudgeLoader.describe()` and the pollux version)."""
    from pollux import __version__

    return config_hash({"request": loader.describe(), "pollux_version": __version__})


def refuse_a_known_change(db: str | Path, loader: Any, options: Any, *, new_run: bool) -> None:
    """Refuse, before the judge loads, a resume whose options the run database already contradicts.

    The store records a run's configuration as the LOADED judge describes it (`run_config`), so
    `evaluate` can compare it only after loading — minutes for a large judge. What the user set
    that the record states, though, is known now: the prompt template, and each sampling value
    given explicitly (unset ones resolve against the checkpoint, unknown until it loads). When
    every run in the database differs in one of those, no run can resume: the store's own refusal
    (an `EvaluateError`) comes now. Anything else is still checked after loading, as before. The
    database is only read (`peek_runs`): a run stopped later (a bad Ray address) leaves it as it was."""
    if new_run:
        return
    runs, resumed = peek_runs(db, request_key(loader))
    if not runs or resumed is not None:
        return
    given = loader.request["options"]
    wanted = {"template": options.template.to_dict(),
              "sampling": {k: v for k, v in asdict(options.sampling).items() if k in given}}
    diffs = []
    for run in runs:
        engine = run.config.get("engine") or {}
        recorded = {"template": engine.get("template", wanted["template"]),
                    "sampling": {k: (engine.get("sampling") or {}).get(k, v) for k, v in wanted["sampling"].items()}}
        diffs.append(config_diff(recorded, wanted))
    if all(diffs):
        raise EvaluateError(f"{db} holds run {runs[-1].run_id} made with a different configuration:\n  "
                            + "\n  ".join(diffs[-1]) + "\nResume with the same options, or pass --new-run to start "
                            "a new run in this database (checked before loading the judge).")


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
    executor: Any = None,
) -> EvaluateSummary:
    """Judge every (row × criterion) of `inputs` that `db` does not hold yet; see the module doc.

    `judge` is a `pollux.judge.Judge` or a zero-argument callable that loads one — called only
    after the inputs were read, so a bad file fails before a large model is loaded; a
    `JudgeLoader` is not called at all when its earlier run already holds every judgement. Raises
    `EvaluateError` before judging anything when the run cannot start; KeyboardInterrupt is caught:
    the summary says `interrupted` and what remains.

    Judging always runs on `pollux.executor.map_batches`, with this process the only writer of
    `db` (`_Driver`). Without `executor` the judge loaded here is the one worker, on a local
    thread. With `executor` (a `pollux.executor.ExecutorOptions`: more worker threads, or
    `ray="auto"`) `judge` must be a `JudgeLoader` whose `load` is picklable (a
    `pollux.executor.judging.JudgeFactory`): each worker loads its own judge and this process never
    does. A bad cluster address or a missing Ray is an `EvaluateError` before anything is written.
    """
    if executor is not None:
        _check_executor(judge, executor)
    if isinstance(inputs, str | Path):
        inputs = [inputs]
    if chunk_size < 1:
        raise EvaluateError("chunk_size must be ≥ 1")
    t0 = time.monotonic()
    summary = EvaluateSummary(db=str(db))
    log = log or (lambda _msg: None)
    expansion, by_key = _read_inputs(inputs, summary, log, catalog=catalog, user_criteria=user_criteria,
                                     strict=strict, max_field_chars=max_field_chars)

    request = request_key(judge) if _is_loader(judge) and hasattr(judge, "describe") else None
    finished = None if new_run or request is None else _finished_run(db, request, list(by_key))
    if finished is not None:
        log(f"run {finished.run_id} already holds every judgement of these inputs: the judge is not loaded")
    elif executor is None and _is_loader(judge):  # load only now that the inputs are known good and something is left
        judge = judge()
    with RunStore(db) as store:
        driver = _Driver(store, request, expansion, by_key, new_run, summary, progress or Progress(), log)
        if finished is not None:
            driver.resume(finished)
        elif executor is None:
            driver.open(run_config(judge))  # the loaded judge's configuration: its run resumed, or a new one
        elif request is not None and not new_run and (found := store.run_for_request(request)) is not None:
            driver.resume(found)  # the workers' configuration is checked against it as it arrives
        judging_s = driver.judge(JudgingWorker(_worker_judge(judge, executor)), executor, chunk_size)
    return _finish(summary, t0, judging_s)


def _read_inputs(inputs: Sequence[str | Path], summary: EvaluateSummary, log: Callable[[str], None],
                 **options: Any) -> tuple[Expansion, dict[str, JudgeItem]]:
    """Step 1-2 of the module doc: the inputs' valid rows as items, each distinct judgement once
    (by key: identical judgements are made once); every bad row logged and counted in `summary`."""
    try:
        expansion = expand(inputs, **options)
    except InputError as e:
        raise EvaluateError(str(e)) from None
    summary.problems = [str(p) for p in expansion.problems]
    summary.rows_read = expansion.rows + len(expansion.problems)
    summary.rows_skipped = len(expansion.problems)
    for p in expansion.problems:
        log(f"skipped {p}")
    by_key: dict[str, JudgeItem] = {}
    for item in expansion.items:
        by_key.setdefault(item.key, item)
    return expansion, by_key


def _is_loader(judge: Any) -> bool:
    return not hasattr(judge, "judge_many")


def _worker_judge(judge: Any, executor: Any) -> Callable[[], Any]:
    """What a worker calls for its judge: on the executor the JudgeLoader's picklable `load`; else
    the judge loaded here (a loader is left unloaded only when nothing is left to judge)."""
    if executor is not None:
        return judge.load
    return judge if _is_loader(judge) else lambda: judge


def _finished_run(db: str | Path, request: str, keys: Sequence[str]) -> Run | None:
    """The run this request opened before, if it already holds a verdict for every key."""
    if not Path(db).is_file():
        return None
    with RunStore(db) as store:
        run = store.run_for_request(request)
        if run is None or not set(keys) <= store.done_keys(run.run_id, run.judge):
            return None
        return run


def _store_jobs(store: RunStore, run_id: int, records: Sequence[PreparedRecord]) -> None:
    """Each record and its jobs, in one transaction; a record's jobs replace those of its id."""
    with store.transaction():
        for rec in records:
            pk = store.upsert_record(rec.fields)
            store.replace_jobs(run_id, pk, [
                JobRow(pk, item.criteria_name, item.meta.get("criterion_id"), item.meta.get("criterion_group"),
                       item.rubrics, item.key, position)
                for position, item in enumerate(rec.items)
            ])


def _check_executor(judge: Any, executor: Any) -> None:
    """Before anything is read or written: the judge can travel to workers, and the cluster answers
    (no Ray installed, a bad address → `EvaluateError`)."""
    if not isinstance(judge, JudgeLoader):
        raise EvaluateError("judging on the executor needs a JudgeLoader whose `load` the workers can run "
                            "(e.g. pollux.executor.judging.JudgeFactory), not a loaded judge")
    if executor.ray is not None:
        from pollux.executor.ray_data import connect

        try:
            connect(executor.ray)
        except ExecutorError as e:
            raise EvaluateError(str(e)) from None


class _Driver:
    """Step 4 of the module doc, for every run — the judge loaded here or on workers, local or on
    Ray: the one place that opens or resumes the run, stores the jobs, writes each verdict the
    moment it arrives (the only writer of the store), counts the summary, reports progress and
    turns Ctrl-C into a clean stop.

    A driver whose workers load the judge learns the run's configuration from them: a run this
    request opened before is resumed at once (its configuration must then equal the workers');
    otherwise the run is opened when the first verdicts arrive, from the configuration their rows
    carry. Each verdict is written once: a key the run already holds, or one this session already
    wrote (a retried batch delivers its results again), is skipped — unless the earlier one was an
    error and this one is not."""

    def __init__(self, store: RunStore, request: str | None, expansion: Expansion, by_key: dict[str, JudgeItem],
                 new_run: bool, summary: EvaluateSummary, progress: Progress, log: Callable[[str], None]) -> None:
        self.store, self.request, self.expansion, self.by_key = store, request, expansion, by_key
        self.new_run, self.summary, self.progress, self.log = new_run, summary, progress, log
        self.run: Run | None = None
        self.done: set[str] = set()
        self.written: dict[str, bool] = {}  # key → that verdict was an error

    def resume(self, run: Run) -> None:
        self.run = run
        self.summary.run_id, self.summary.judge = run.run_id, run.judge
        _store_jobs(self.store, run.run_id, self.expansion.records)
        self.done = self.store.done_keys(run.run_id, run.judge)

    def open(self, config: Mapping[str, Any]) -> None:
        """The run of `config`: resumed or new (a different configuration is refused unless
        `new_run`); with a run already open, `config` must be its configuration."""
        if self.run is not None:
            if config_hash(dict(config)) != self.run.config_hash:
                raise EvaluateError(f"the workers' judge configuration differs from run {self.run.run_id}'s (a "
                                    "changed checkpoint or pollux version?); start a new run with --new-run")
            return
        try:
            run, created = self.store.open_run(str(config["judge"]), dict(config), new_run=self.new_run)
        except StoreError as e:
            raise EvaluateError(str(e)) from None
        if self.request is not None:
            self.store.remember_request(self.request, run.run_id)
        self.summary.new_run = created
        self.resume(run)

    def judge(self, worker: JudgingWorker, executor: Any, chunk_size: int) -> float:
        """Judge what the run lacks on `executor` (None: one local worker thread), answer by answer
        (one answer's criteria in one batch, for prefix sharing), about `chunk_size` judgements a
        batch; returns the judging time."""
        summary = self.summary
        summary.jobs = sum(len(rec.items) for rec in self.expansion.records)
        summary.items = len(self.by_key)
        todo = {k for k in self.by_key if k not in self.done}
        summary.already_done = summary.items - len(todo)
        rows = answer_rows(_pending_by_answer(self.expansion.records, self.by_key, todo))
        self.log(f"{self._where(executor)}: {summary.items} judgements, {summary.already_done} already done, "
                 f"{len(todo)} to judge")
        options = replace(executor or ExecutorOptions(), batch_size=answers_per_batch(rows, chunk_size))
        t_judge = time.monotonic()
        self.progress.start(total=summary.items, done=summary.already_done)
        parts = map_batches(rows, worker, options) if rows else iter(())
        try:
            for part in parts:
                self.take(part)
        except KeyboardInterrupt:
            summary.interrupted = True
            self.log("interrupted: every verdict so far is saved; run the same command again to resume")
        except ExecutorError as e:
            raise EvaluateError(f"{e} (every verdict so far is saved; run the same command again to resume)") from None
        finally:
            getattr(parts, "close", lambda: None)()  # stops the workers at once, also on Ctrl-C
            self.progress.stop()
        judging_s = time.monotonic() - t_judge
        run = self.run
        summary.remaining = summary.items - (len(self.store.done_keys(run.run_id, run.judge)) if run else 0)
        return judging_s

    def _where(self, executor: Any) -> str:
        run = self.run
        what = f"run {run.run_id} ({'new' if self.summary.new_run else 'resumed'})" if run else "a run"
        if executor is None:
            return f"{what}, judged in this process"
        where = f"Ray ({executor.ray})" if executor.ray else "local worker threads"
        return f"{what} on {where}, {executor.workers} worker(s)"

    def take(self, part: list[Row]) -> None:
        """A part of a batch's results, as the executor hands it over: each verdict stored now."""
        config = next((row["config"] for row in part if "config" in row), None)
        if config is not None:
            self.open(config)
        for row in part:
            if "failure" in row:
                self.log(row["failure"])
            self.write(row["key"], verdict_of(row))

    def write(self, key: str, verdict: Verdict) -> None:
        if self.run is None:
            raise EvaluateError("a worker's verdicts came without its judge configuration")
        if key in self.done or self.written.get(key) is False or (key in self.written and verdict.error):
            return
        self.store.write_verdict(self.run.run_id, key, verdict)
        replaced = key in self.written  # an error replaced by a verdict: the item is counted once
        self.written[key] = verdict.error is not None
        if verdict.error:
            self.summary.failed += 1
        else:
            self.summary.judged += 1
        if replaced:
            self.summary.failed -= 1
        else:
            self.progress.advance(1)


def _pending_by_answer(records: Sequence[PreparedRecord], by_key: Mapping[str, JudgeItem],
                       todo: set[str]) -> list[list[tuple[str, JudgeItem]]]:
    """The pending judgements, answer by answer (each key once, where it first appears)."""
    left = set(todo)
    answers = []
    for rec in records:
        jobs = [(item.key, by_key[item.key]) for item in rec.items if item.key in left]
        left -= {key for key, _ in jobs}
        answers.append(jobs)
    return answers


def _finish(summary: EvaluateSummary, t0: float, judging_s: float) -> EvaluateSummary:
    summary.elapsed_s = round(time.monotonic() - t0, 3)
    summary.judging_s = round(judging_s, 3)
    judged_total = summary.judged + summary.failed
    summary.judgements_per_s = round(judged_total / judging_s, 3) if judging_s > 0 else 0.0
    return summary
