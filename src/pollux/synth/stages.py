"""The seven stages. Each reads its input table(s) from the run's store and writes its own table;
each can run alone (`pollux synth STAGE CONFIG`) and does only the work its table lacks.

    instructions  (leaf × level × generator × variant) → instructions
    filter        instructions → filtered + rejects            (whole set, recomputed)
    criteria      filtered → criteria                           (whole set, recomputed)
    answers       filtered × answer models → answers
    annotate      answers × criteria → annotations (valid ones and counted drops)
    sample        annotations − held-out task types → sample   (whole set, recomputed)
    export        sample → Parquet + summary JSON + HTML        (see export.py)

Row keys are content hashes (`content_key`): the stage, its inputs' keys and every setting that
changes the output (model identity, prompt version, generation settings, seed). A rerun after a
crash asks only for keys its table lacks; a changed prompt or model makes new keys, never a mix.
LLM calls go through `pollux.executor.map_batches` (local threads, or Ray Data), and the driver —
this process — is the only writer of the store, one transaction per result batch.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from pollux.executor import ExecutorOptions, map_batches
from pollux.progress import StageProgress
from pollux.synth.config import SynthConfig, required
from pollux.synth.models import ChatWorker
from pollux.synth.prompts import read_prompt
from pollux.synth.store import Store
from pollux.taxonomy import Catalog, TaskNode, TaxonomyError, resolve_criteria

Row = dict[str, Any]

COMPLEXITY_RU = {"easy": "лёгкий", "medium": "средний", "hard": "сложный"}


class SynthError(RuntimeError):
    """A stage cannot finish (an endpoint refusing every call, missing input); results so far stay stored."""


@dataclass
class StageContext:
    """What every stage needs: the config, the store, the taxonomy, where to run, progress."""

    config: SynthConfig
    store: Store
    catalog: Catalog
    options: ExecutorOptions
    progress: StageProgress = field(default_factory=lambda: StageProgress(enabled=False))


def content_key(*parts: Any) -> str:
    """sha256 of the parts as canonical JSON: the same inputs and settings give the same key."""
    text = json.dumps(parts, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def seed_of(key: str) -> int:
    return int(key[:8], 16)


# -- 1. instructions ----------------------------------------------------------------------------

def select_leaves(config: SynthConfig, catalog: Catalog) -> list[TaskNode]:
    """The configured leaves (task types expand to all their leaves), in tree order, no repeats."""
    if not config.tasks:
        return catalog.leaves()
    chosen: dict[tuple[str, ...], TaskNode] = {}
    for i, spec in enumerate(config.tasks):
        node = _task_node(catalog, spec, f"taxonomy.tasks[{i}]")
        for leaf in node.iter_leaves():
            chosen.setdefault(leaf.path, leaf)
    order = {leaf.path: n for n, leaf in enumerate(catalog.leaves())}
    return sorted(chosen.values(), key=lambda leaf: order[leaf.path])


def check_held_out(config: SynthConfig, catalog: Catalog) -> None:
    """Held-out task types are matched exactly, so a misspelt one would silently hold out nothing."""
    for i, name in enumerate(config.sample.held_out):
        if name not in catalog.tasks:
            close = difflib.get_close_matches(name, list(catalog.tasks), n=3, cutoff=0.6)
            hint = f" (did you mean: {close}?)" if close else ""
            raise SynthError(f"sample.held_out[{i}]: {name!r} is not a task type of the taxonomy{hint}")


def _task_node(catalog: Catalog, spec: str, where: str) -> TaskNode:
    """A task type or a node under it, named by its path ("type / subtype / subsubtype")."""
    parts = [p.strip() for p in spec.split(" / ")]
    try:
        node = catalog.task_type(parts[0])
    except TaxonomyError as e:
        raise SynthError(f"{where}: unknown task leaf {spec!r}: {e.args[0]}") from None
    for part in parts[1:]:
        found = [c for c in node.children if c.matches(part)]
        if not found:
            choices = [c.name for c in node.children] or "none: it is a leaf"
            raise SynthError(f"{where}: unknown task leaf {spec!r}: {node.name!r} has no {part!r} (children: {choices})")
        node = found[0]
    return node


def instruction_requests(ctx: StageContext) -> list[Row]:
    cfg = ctx.config
    section = required(cfg.instructions, "instructions")
    prompt = read_prompt(section.prompt, "instruction")
    gen = section.generation
    requests = []
    for leaf in select_leaves(cfg, ctx.catalog):
        levels = [level for level in cfg.levels if not leaf.complexity or level in leaf.complexity]
        group = ctx.catalog.task_group(leaf.path[0])
        for level in levels:
            for name in section.generators:
                model = cfg.models[name]
                for variant in range(section.per_generator):
                    key = content_key("instructions", model.identity(), leaf.path, level, variant, prompt.version,
                                      asdict(gen), cfg.seed)
                    text = prompt.render(task_group=group, task_path=" → ".join(leaf.path),
                                         complexity_ru=COMPLEXITY_RU[level], complexity=level,
                                         variant=str(variant + 1), domain=leaf.domain or "")
                    requests.append({
                        "key": key, "model": name, "messages": [{"role": "user", "content": text}],
                        "temperature": gen.temperature, "max_tokens": gen.max_tokens, "seed": seed_of(key),
                        "task_group": group, "task_type": leaf.path[0],
                        "task_subtype": leaf.path[1] if len(leaf.path) > 1 else "",
                        "task_subsubtype": leaf.path[2] if len(leaf.path) > 2 else "",
                        "task_leaf": " / ".join(leaf.path), "complexity": level, "variant": variant,
                        "prompt_version": prompt.version,
                    })
    return requests


def run_instructions(ctx: StageContext) -> dict[str, Any]:
    def to_row(request: Row, reply: Row) -> Row:
        return {**_meta(request), "instruction": reply["text"].strip(), "generator": request["model"],
                "invalid_text": reply["invalid_text"]}

    return _run_requests(ctx, "instructions", instruction_requests(ctx), to_row,
                         lambda name: ChatWorker(ctx.config.models[name]))


# -- 2. filter ----------------------------------------------------------------------------------

def run_filter(ctx: StageContext) -> dict[str, Any]:
    from pollux.synth.filter import filter_instructions, missing_dependencies

    if missing := missing_dependencies():
        raise SynthError(f"the filter stage needs {', '.join(missing)}: pip install 'pollux[synth]'")
    rows = ctx.store.rows("instructions")
    _need(ctx, rows, "filter", "instructions")
    unusable = [{**r, "reason": "empty", "detail": ""} if not r["instruction"] else
                {**r, "reason": "invalid_text", "detail": r["invalid_text"]}
                for r in rows if not r["instruction"] or r.get("invalid_text")]
    usable = [r for r in rows if r["instruction"] and not r.get("invalid_text")]
    settings = ctx.config.filter
    # The filter looks at the whole set (duplicates across it); the same set and settings give the same
    # result, so a resumed run skips it (loading the language models alone takes seconds).
    fingerprint = content_key("filter", sorted(r["key"] for r in rows), asdict(settings))
    if ctx.store.get_meta("fingerprint:filter") == fingerprint:
        return {**ctx.store.get_meta("result:filter", {}), "already_done": True}
    with ctx.progress.stage("filter", total=len(rows)) as bar:
        kept, rejected = filter_instructions(usable, settings)
        bar.advance(len(rows))
    rejected = sorted(unusable + rejected, key=lambda r: r["key"])
    ctx.store.replace("filtered", kept)
    ctx.store.replace("rejects", rejected)
    reasons = Counter(r["reason"] for r in rejected)
    result = {"input": len(rows), "kept": len(kept), "rejected": dict(sorted(reasons.items()))}
    ctx.store.set_meta("result:filter", result)
    ctx.store.set_meta("fingerprint:filter", fingerprint)
    return result


# -- 3. criteria --------------------------------------------------------------------------------

def run_criteria(ctx: StageContext) -> dict[str, Any]:
    rows = ctx.store.rows("filtered")
    _need(ctx, rows, "criteria", "filter")
    out = []
    with ctx.progress.stage("criteria", total=len(rows)) as bar:
        for row in rows:
            record = {k: row[k] or None for k in ("task_type", "task_subtype", "task_subsubtype")}
            specs = resolve_criteria(record, ctx.catalog)
            out.append({"key": row["key"], "criteria": [
                {"criteria_name": s.name, "rubrics": s.rubrics, "criterion_id": s.criterion_id, "group": s.group}
                for s in specs]})
            bar.advance(1)
    ctx.store.replace("criteria", out)
    return {"instructions": len(out), "criteria": sum(len(r["criteria"]) for r in out)}


# -- 4. answers ---------------------------------------------------------------------------------

def answer_requests(ctx: StageContext) -> list[Row]:
    cfg = ctx.config
    section = required(cfg.answers, "answers")
    prompt = read_prompt(section.prompt, "answer")
    gen = section.generation
    models = section.models
    requests = []
    for i, row in enumerate(ctx.store.rows("filtered")):
        # "equal": one model per instruction, in turn over the instructions in key order (equal shares)
        chosen = models if section.mode == "all" else (models[i % len(models)],)
        for name in chosen:
            model = cfg.models[name]
            key = content_key("answers", row["key"], model.identity(), prompt.version, asdict(gen), cfg.seed)
            requests.append({
                "key": key, "model": name, "instruction_key": row["key"], "prompt_version": prompt.version,
                "messages": [{"role": "user", "content": prompt.render(instruction=row["instruction"])}],
                "temperature": gen.temperature, "max_tokens": gen.max_tokens, "seed": seed_of(key),
            })
    return requests


def run_answers(ctx: StageContext) -> dict[str, Any]:
    _need(ctx, ctx.store.rows("filtered"), "answers", "filter")

    def to_row(request: Row, reply: Row) -> Row:
        return {**_meta(request), "answer": reply["text"].strip(), "answer_model": request["model"],
                "invalid_text": reply["invalid_text"]}

    return _run_requests(ctx, "answers", answer_requests(ctx), to_row,
                         lambda name: ChatWorker(ctx.config.models[name]))


# -- 5. annotate --------------------------------------------------------------------------------

def usable_answer(answer: Row) -> bool:
    """An answer worth judging: not empty, and text `pollux train` accepts."""
    return bool(answer["answer"]) and not answer.get("invalid_text")


def annotate_requests(ctx: StageContext) -> list[Row]:
    cfg = ctx.config
    section = required(cfg.annotate, "annotate")
    prompt = read_prompt(section.prompt, "annotate")
    gen = section.generation
    teacher = cfg.models[section.teacher]
    instructions = {r["key"]: r for r in ctx.store.iter_rows("filtered")}
    criteria = {r["key"]: r["criteria"] for r in ctx.store.iter_rows("criteria")}
    requests = []
    for answer in ctx.store.iter_rows("answers"):
        instruction = instructions.get(answer["instruction_key"])
        if instruction is None or not usable_answer(answer):  # the filter changed since; no usable answer
            continue
        for crit in criteria.get(answer["instruction_key"], []):
            key = content_key("annotate", answer["key"], crit["criteria_name"], crit["rubrics"], teacher.identity(),
                              prompt.version, asdict(gen), section.max_attempts, cfg.seed)
            text = prompt.render(instruction=instruction["instruction"], reference_answer="",
                                 answer=answer["answer"], criteria_name=crit["criteria_name"], rubrics=crit["rubrics"])
            requests.append({
                "key": key, "model": section.teacher, "answer_key": answer["key"],
                "instruction_key": answer["instruction_key"], "criteria_name": crit["criteria_name"],
                "rubrics": crit["rubrics"], "criterion_id": crit["criterion_id"], "criterion_group": crit["group"],
                "prompt_version": prompt.version, "messages": [{"role": "user", "content": text}],
                "temperature": gen.temperature, "max_tokens": gen.max_tokens, "seed": seed_of(key),
            })
    return requests


def run_annotate(ctx: StageContext) -> dict[str, Any]:
    _need(ctx, ctx.store.rows("answers"), "annotate", "answers")
    _need(ctx, ctx.store.rows("criteria"), "annotate", "criteria")

    def to_row(request: Row, reply: Row) -> Row:
        return {**_meta(request), "teacher": request["model"], "score": reply.get("score"),
                "rationale": reply.get("rationale"), "drop": reply.get("drop"), "attempts": reply["attempts"]}

    cfg = required(ctx.config.annotate, "annotate")
    result = _run_requests(ctx, "annotations", annotate_requests(ctx), to_row,
                           lambda name: ChatWorker(ctx.config.models[name], validate="verdict",
                                                   max_attempts=cfg.max_attempts))
    drops = Counter(r["drop"] for r in ctx.store.iter_rows("annotations") if r["drop"])
    result["dropped"] = dict(sorted(drops.items()))
    skipped = Counter("empty" if not a["answer"] else "invalid_text"
                      for a in ctx.store.iter_rows("answers") if not usable_answer(a))
    result["answers_skipped"] = dict(sorted(skipped.items()))
    return result


# -- 6. sample ----------------------------------------------------------------------------------

def candidates(ctx: StageContext) -> tuple[list[Row], int]:
    """Valid annotations joined with their instruction, minus held-out task types (and how many those were)."""
    instructions = {r["key"]: r for r in ctx.store.iter_rows("filtered")}
    held_out = set(ctx.config.sample.held_out)
    rows, excluded = [], 0
    for ann in ctx.store.iter_rows("annotations"):
        instruction = instructions.get(ann["instruction_key"])
        if ann["drop"] or instruction is None:
            continue
        if instruction["task_type"] in held_out:
            excluded += 1
            continue
        rows.append({"key": ann["key"], "task_type": instruction["task_type"],
                     "criterion_group": ann["criterion_group"] or "", "score": ann["score"]})
    return rows, excluded


def allocate(sizes: dict[Any, int], target: int) -> dict[Any, int]:
    """Equal shares of `target` over strata; what a small stratum cannot fill goes to the others
    (water-filling), so the sample reaches `target` whenever there are that many rows."""
    quota = dict.fromkeys(sizes, 0)
    open_ = sorted(s for s in sizes if sizes[s] > 0)
    left = min(target, sum(sizes.values()))
    while left > 0 and open_:
        share, extra = divmod(left, len(open_))
        for i, s in enumerate(open_):
            quota[s] += min(share + (1 if i < extra else 0), sizes[s] - quota[s])
        left = min(target, sum(sizes.values())) - sum(quota.values())
        open_ = [s for s in open_ if quota[s] < sizes[s]]
    return quota


def run_sample(ctx: StageContext) -> dict[str, Any]:
    _need(ctx, ctx.store.rows("annotations"), "sample", "annotate")
    cfg = ctx.config
    rows, excluded = candidates(ctx)
    strata: dict[tuple[str, ...], list[Row]] = defaultdict(list)
    for row in rows:
        strata[tuple(str(row[b]) for b in cfg.sample.by)].append(row)
    quota = allocate({s: len(v) for s, v in strata.items()}, cfg.sample.size)
    chosen = []
    with ctx.progress.stage("sample", total=len(rows)) as bar:
        for stratum in sorted(strata):
            # a row's rank depends only on the seed and its own key: deterministic, and stable as rows come and go
            ranked = sorted(strata[stratum], key=lambda r: content_key(cfg.seed, r["key"]))
            chosen += [{"key": r["key"], "stratum": list(stratum)} for r in ranked[: quota[stratum]]]
            bar.advance(len(strata[stratum]))
    ctx.store.replace("sample", sorted(chosen, key=lambda r: r["key"]))
    return {"candidates": len(rows), "held_out_excluded": excluded, "strata": len(strata), "selected": len(chosen)}


# -- shared -------------------------------------------------------------------------------------

WorkerFor = Callable[[str], ChatWorker]


def _run_requests(ctx: StageContext, table: str, requests: list[Row], to_row: Callable[[Row, Row], Row],
                  worker_for: WorkerFor) -> dict[str, Any]:
    """Send the requests whose keys `table` lacks, model by model, storing each result batch at once.

    A request that fails for good (the endpoint refused it after all retries) is recorded in the
    stage's failures table and the stage ends with a `SynthError` after the others are stored; a rerun
    retries only what is missing."""
    done = ctx.store.keys(table)
    todo = [r for r in requests if r["key"] not in done]
    failures_table = {"instructions": "instruction_failures", "answers": "answer_failures"}.get(table)
    if failures_table:  # failures of requests this config no longer makes (e.g. a fixed model name) are stale
        wanted = {r["key"] for r in todo}
        ctx.store.delete(failures_table, [k for k in ctx.store.keys(failures_table) if k not in wanted])
    by_model: dict[str, list[Row]] = defaultdict(list)
    for r in todo:
        by_model[r["model"]].append(r)
    failed: list[Row] = []
    stored = 0
    tokens = Counter[str]()
    with ctx.progress.stage(table, total=len(requests), completed=len(requests) - len(todo)) as bar:
        for name in sorted(by_model):
            keys = [r["key"] for r in by_model[name]]
            pending = {r["key"]: r for r in by_model[name]}
            for batch in map_batches(_wire(by_model[name]), worker_for(name), _options_for(ctx, name)):
                rows, bad = [], []
                for reply in batch:
                    request = pending.pop(reply["key"], None)
                    if request is None:  # a second delivery after an executor retry
                        continue
                    if reply.get("error"):
                        bad.append({"key": reply["key"], "model": name, "error": reply["error"]})
                    else:
                        rows.append(to_row(request, reply))
                        tokens.update({k: reply.get(k) or 0 for k in ("prompt_tokens", "completion_tokens")})
                stored += ctx.store.add(table, rows)
                if failures_table and bad:
                    ctx.store.add(failures_table, bad)
                failed += bad
                bar.advance(len(rows) + len(bad))
            if failures_table:  # what was retried and made it is no longer a failure
                have = ctx.store.keys(table)
                ctx.store.delete(failures_table, [k for k in keys if k in have])
    if failed:
        raise SynthError(f"{table}: {len(failed)} of {len(todo)} request(s) failed for good; first: model "
                         f"{failed[0]['model']!r}: {failed[0]['error']} — the other results are stored; "
                         "fix the endpoint and rerun to do only what is missing")
    return {"requested": len(requests), "new": stored, "already_done": len(requests) - len(todo),
            "total": ctx.store.count(table), "tokens": dict(sorted(tokens.items()))}


def _options_for(ctx: StageContext, name: str) -> ExecutorOptions:
    """Where a model's batches run. Locally, a checkpoint gets one worker thread: each thread would load
    its own copy, and torch already uses the cores. Endpoints get `workers` threads sharing one client."""
    if ctx.options.ray is None and ctx.config.models[name].kind != "openai":
        return replace(ctx.options, workers=1)
    return ctx.options


def _wire(requests: Iterable[Row]) -> list[Row]:
    """What a worker needs of a request (kept small: it travels to Ray actors)."""
    fields = ("key", "messages", "temperature", "max_tokens", "seed", "rubrics")
    return [{k: r[k] for k in fields if k in r} for r in requests]


def _meta(request: Row) -> Row:
    """A request's own columns, without what only the worker needed."""
    return {k: v for k, v in request.items()
            if k not in ("messages", "temperature", "max_tokens", "seed", "model")}


def _need(ctx: StageContext, rows: list[Row], stage: str, previous: str) -> None:
    """A stage without input says why: the previous stage has not run, or the filter rejected everything."""
    if rows:
        return
    result = ctx.store.get_meta(f"result:{previous}")
    if previous == "filter" and result:
        rejected = ", ".join(f"{reason} {n}" for reason, n in result.get("rejected", {}).items())
        raise SynthError(f"{stage}: no input — the 'filter' stage kept none of its {result['input']} instruction(s) "
                         f"(rejected: {rejected or 'none'}); each reject's reason and detail is in "
                         "RUN_DIR/export/rejects.jsonl after `pollux synth export CONFIG`; write more or other "
                         "instructions, or loosen [filter]")
    raise SynthError(f"{stage}: no input — run the {previous!r} stage first (pollux synth {previous} CONFIG)")
