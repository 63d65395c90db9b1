"""Answer generation: instructions → one model's answers, ready for `pollux evaluate` as they are.

A benchmark starts from the model, not from a file of answers (POLLUX's own flow, MT-bench's
`gen_answer`, alpaca_eval's `evaluate_from_model`). `generate_answers` asks a model — any spec of
the engine registry, the one the judges and synth use: `openai:MODEL` (+ base_url), `vllm:PATH`
or a checkpoint folder (`pollux.engine.registry.load_chat`) — for an answer to every instruction
of a file, and writes an answer file that `pollux evaluate` reads unchanged.

* Input: any file `pollux.inputs.read_rows` reads (JSONL, CSV, Parquet, a JSON array): POLLUX-
  instructions rows (`prompt_id`, `instruction`, `reference_answer`, `criteria`, `task_type`,
  `domain`, `difficulty`, …) or plain ones with an `instruction` alone. A row without a usable
  instruction is an error naming its line; the others are answered.
* Output rows: the instruction's own fields as they were (so its `criteria` list, or its
  `task_type` for the taxonomy's set, reach evaluate), its `id`, `model_id` = the model's name
  (the run's model in evaluate), `answer`, `reasoning`, the token counts, the latency, the cost
  where a price table names the model, and `generation`: the settings and system prompt used.
* Reasoning: a `<think>…</think>` block (or, where the chat template opened it, text up to a lone
  `</think>`) is cut from the answer and kept in `reasoning`, as is what a server returns apart
  (`reasoning_content` / `reasoning`): the judge sees only the answer, as in POLLUX's own flow.
* Resumable and content-addressed, like evaluate: each answer is stored in a SQLite file under the
  hash of (model, messages, settings) as soon as it arrives, so a killed run asks on rerun only
  for the answers the store lacks, never for one it holds; the answer file is (re)written from the
  store, in input order, once every answer is there. Failed requests are not stored: a rerun asks
  them again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pollux.engine import SamplingParams
from pollux.engine.registry import CommonOptions, OptionsError, resolve
from pollux.inputs import InputProblem, InputRow, read_rows, record_id

# Sampling options a chat model does not use: refused rather than silently ignored.
UNUSED_SAMPLING = ("min_new_tokens", "top_p", "top_k", "repetition_penalty")
UNUSED_OPTIONS = ("template", "prompt_style", "expected_score", "max_reasks")
# An input row's fields that describe an answer, not the instruction: replaced by this model's.
ANSWER_FIELDS = ("answer", "model_id", "model", "reasoning", "prompt_tokens", "completion_tokens", "latency_s",
                 "cost", "generation")

_THINK = re.compile(r"^\s*<think>(.*?)</think>", re.DOTALL)


class AnswerError(ValueError):
    """Answer generation cannot start: unreadable input, a bad option, an unusable price table."""


@dataclass(frozen=True)
class Generation:
    """What decides an answer's text besides its instruction: recorded in every answer row, and
    (all but `name`) part of its key."""

    model: str  # the registry spec, its folder made absolute
    name: str  # the model's name in the answers (evaluate's model_id)
    system_prompt: str | None
    temperature: float
    max_new_tokens: int
    seed: int

    def identity(self) -> dict[str, Any]:
        """What the key hashes besides the messages: not the base URL, key or concurrency — a
        restarted server on another port serves the same model — nor the display name."""
        return {k: v for k, v in asdict(self).items() if k not in ("name", "system_prompt")}


@dataclass
class AnswerSummary:
    instructions: int = 0  # rows with an instruction
    answered: int = 0  # answer rows written
    asked: int = 0  # requests sent this time
    stored_before: int = 0  # answers the store already held
    failed: int = 0
    unfinished_reasoning: int = 0  # replies that ended inside <think> (max_new_tokens too small)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None
    problems: list[str] = field(default_factory=list)
    out: str = ""
    db: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def split_reasoning(text: str) -> tuple[str, str | None, bool]:
    """(answer, reasoning, finished): a leading `<think>…</think>` block, or text up to a lone
    `</think>` (templates that open the block in the prompt), goes to `reasoning`. `finished` is
    False for a reply that ended inside an unclosed `<think>`: no answer at all. A text without
    them is returned as it is."""
    match = _THINK.match(text)
    if match:
        return text[match.end():].strip(), match.group(1).strip(), True
    if "</think>" in text and "<think>" not in text:
        thought, _, rest = text.partition("</think>")
        return rest.strip(), thought.strip(), True
    if text.lstrip().startswith("<think>"):
        return "", text.lstrip().removeprefix("<think>").strip(), False
    return text, None, True


def request_key(messages: list[dict[str, str]], generation: Generation) -> str:
    """Content address of one request: the same model, messages and settings → the same answer."""
    payload = json.dumps([generation.identity(), messages], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def messages_for(instruction: str, system_prompt: str | None) -> list[dict[str, str]]:
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*system, {"role": "user", "content": instruction}]


class AnswerStore:
    """The answers, one row per request key, in a SQLite file (WAL; each answer committed as it
    arrives, so a killed run keeps every answer it received)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, model TEXT NOT NULL, instruction TEXT NOT NULL, "
            "answer TEXT NOT NULL, reasoning TEXT, finished INTEGER NOT NULL, prompt_tokens INTEGER, "
            "completion_tokens INTEGER, latency_s REAL, generation TEXT NOT NULL, created REAL NOT NULL)")

    def keys(self) -> set[str]:
        return {k for (k,) in self.conn.execute("SELECT key FROM answers")}

    def add(self, key: str, instruction: str, generation: Generation, reply: Mapping[str, Any]) -> bool:
        """Store one reply (its reasoning cut out); returns whether it finished (see `split_reasoning`)."""
        answer, thought, finished = split_reasoning(reply["text"])
        reasoning = "\n\n".join(t for t in (reply.get("reasoning"), thought) if t) or None
        self.conn.execute(
            "INSERT OR IGNORE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (key, generation.model, instruction, answer, reasoning, int(finished), reply.get("prompt_tokens"),
             reply.get("completion_tokens"), reply.get("latency_s"), json.dumps(asdict(generation), ensure_ascii=False),
             time.time()))
        return finished

    def get(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        wanted = list(dict.fromkeys(keys))
        out: dict[str, dict[str, Any]] = {}
        for i in range(0, len(wanted), 500):
            chunk = wanted[i:i + 500]
            cursor = self.conn.execute(
                f"SELECT key, answer, reasoning, finished, prompt_tokens, completion_tokens, latency_s FROM answers "
                f"WHERE key IN ({','.join('?' * len(chunk))})", chunk)
            names = [d[0] for d in cursor.description]
            out.update({row[0]: dict(zip(names, row, strict=True)) for row in cursor})
        return out

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> AnswerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Prices:
    """USD per million prompt (`input`) and completion (`output`) tokens of one model."""

    input: float
    output: float

    def cost(self, prompt_tokens: int | None, completion_tokens: int | None) -> float | None:
        if prompt_tokens is None or completion_tokens is None:
            return None
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1e6


def load_prices(path: str | Path, names: Iterable[str]) -> Prices:
    """The price of the first of `names` in a JSON table `{"MODEL": {"input": USD/1M, "output": USD/1M}}`."""
    try:
        table = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise AnswerError(f"price table {str(path)!r}: {e}") from None
    names = list(names)
    name = next((n for n in names if isinstance(table, dict) and n in table), None)
    if name is None:
        raise AnswerError(f"price table {str(path)!r} has no entry for {' or '.join(map(repr, names))} "
                          '(expected {"MODEL": {"input": USD per 1M tokens, "output": USD per 1M tokens}})')
    entry = table[name]
    values = [entry.get(k) if isinstance(entry, dict) else None for k in ("input", "output")]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in values):
        raise AnswerError(f"price table {str(path)!r}, {name!r}: expected {{\"input\": USD per 1M tokens, "
                          f"\"output\": USD per 1M tokens}} (numbers ≥ 0), got {entry!r}")
    return Prices(float(values[0] or 0), float(values[1] or 0))


def generation_for(spec: str, options: CommonOptions, *, name: str | None, system_prompt: str | None) -> Generation:
    """The settings an answer depends on, from the validated options; an option a chat model does
    not use is an error here, before anything loads."""
    default = SamplingParams()
    unused = [n for n in UNUSED_SAMPLING if getattr(options.sampling, n) != getattr(default, n)]
    unused += [n for n in UNUSED_OPTIONS if n in options.model_fields_set]
    if unused:
        raise AnswerError(f"option(s) {', '.join(unused)} do not apply to answer generation (a chat model takes "
                          "temperature, max_new_tokens and seed)")
    if options.sampling.max_new_tokens < 1:  # 0 is a -r judge's score-only mode, not an answer length
        raise AnswerError("max_new_tokens must be ≥ 1 for answer generation")
    entry, target = resolve(spec)
    if entry.name != "openai":
        target = str(Path(target).expanduser().resolve())
        spec = target if entry.prefix is None else f"{entry.prefix}{target}"
    s = options.sampling
    return Generation(model=spec, name=name or (target if entry.name == "openai" else Path(target).name),
                      system_prompt=system_prompt or None, temperature=float(s.temperature or 0.0),
                      max_new_tokens=s.max_new_tokens, seed=int(s.seed or 0))


@dataclass(frozen=True)
class Instruction:
    row: InputRow
    messages: list[dict[str, str]]
    key: str


def read_instructions(path: str | Path, generation: Generation) -> tuple[list[Instruction], list[InputProblem]]:
    """Every row with a usable instruction, and a problem naming the line for every other."""
    read = read_rows(path)
    problems = list(read.problems)
    out = []
    for row in read.rows:
        instruction = row.data.get("instruction")
        if not isinstance(instruction, str) or not instruction.strip():  # read_rows checked the text itself
            problems.append(InputProblem(row.source, row.line, "field 'instruction': missing or empty "
                                                               "(a non-empty string)"))
            continue
        messages = messages_for(instruction, generation.system_prompt)
        out.append(Instruction(row, messages, request_key(messages, generation)))
    return out, problems


def generate_answers(instructions: str | Path, spec: str, options: CommonOptions, *, out: str | Path,
                     db: str | Path | None = None, name: str | None = None, system_prompt: str | None = None,
                     prices: str | Path | None = None, log: Callable[[str], None] = lambda _: None) -> AnswerSummary:
    """Answer every instruction of `instructions` with the model `spec` names (validated `options`)
    into the store `db` (default: `out` with the suffix .db), then write the answer file `out`
    (JSONL) from it. See the module doc."""
    try:
        generation = generation_for(spec, options, name=name, system_prompt=system_prompt)
    except OptionsError as e:
        raise AnswerError(str(e)) from None
    price = load_prices(prices, [generation.name, resolve(spec)[1]]) if prices else None
    items, problems = read_instructions(instructions, generation)
    db = Path(db) if db is not None else Path(out).with_suffix(".db")
    summary = AnswerSummary(instructions=len(items), problems=[str(p) for p in problems], out=str(out), db=str(db))
    for problem in problems:
        log(str(problem))
    with AnswerStore(db) as store:
        held = store.keys()
        todo = {i.key: i for i in items if i.key not in held}
        summary.stored_before = len({i.key for i in items} - set(todo))
        if todo:
            _ask(spec, options, list(todo.values()), generation, store, summary, log)
        _write(Path(out), items, store.get(i.key for i in items), generation, price, summary)
    return summary


def _ask(spec: str, options: CommonOptions, todo: list[Instruction], generation: Generation, store: AnswerStore,
         summary: AnswerSummary, log: Callable[[str], None]) -> None:
    """Ask the model for the missing answers, storing each as it arrives."""
    from pollux.engine.chat import checked_text  # an LLM's NUL / lone surrogate repaired, as synth does
    from pollux.engine.registry import load_chat

    log(f"answering {len(todo)} instruction(s) with {spec}")
    chat = load_chat(spec, options)
    by_key = {i.key: i for i in todo}
    requests = [{"key": i.key, "messages": i.messages, "temperature": generation.temperature,
                 "max_tokens": generation.max_new_tokens, "seed": generation.seed} for i in todo]
    try:
        for n, reply in enumerate(chat.stream(requests), 1):
            summary.asked += 1
            item = by_key[reply["key"]]
            if reply.get("error") is not None or reply.get("text") is None:
                summary.failed += 1
                summary.problems.append(f"{item.row.where}: no answer: {reply.get('error')}")
                log(summary.problems[-1])
                continue
            store.add(reply["key"], item.messages[-1]["content"], generation, checked_text(reply))
            if n % 50 == 0 or n == len(requests):
                log(f"{n}/{len(requests)} answered")
    finally:
        chat.close()


def _write(out: Path, items: list[Instruction], answers: Mapping[str, dict[str, Any]], generation: Generation,
           price: Prices | None, summary: AnswerSummary) -> None:
    """The answer file, in input order, from the store (atomically: a reader never sees half a file)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    total_cost = 0.0
    with tmp.open("w", encoding="utf-8") as f:
        for item in items:
            stored = answers.get(item.key)
            if stored is None:  # its request failed: the problem is listed, a rerun asks again
                continue
            row = answer_row(item, stored, generation, price)
            summary.answered += 1
            summary.unfinished_reasoning += not stored["finished"]
            summary.prompt_tokens += stored["prompt_tokens"] or 0
            summary.completion_tokens += stored["completion_tokens"] or 0
            total_cost += row.get("cost") or 0.0
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, out)
    summary.cost = round(total_cost, 6) if price else None


def answer_row(item: Instruction, stored: Mapping[str, Any], generation: Generation,
               price: Prices | None) -> dict[str, Any]:
    """One answer as `pollux evaluate` reads it: the instruction's fields, then this model's answer."""
    data = {k: v for k, v in item.row.data.items() if k not in ANSWER_FIELDS}
    row: dict[str, Any] = {"id": record_id(item.row), **data, "model_id": generation.name,
                           "answer": stored["answer"], "reasoning": stored["reasoning"],
                           "prompt_tokens": stored["prompt_tokens"], "completion_tokens": stored["completion_tokens"],
                           "latency_s": stored["latency_s"]}
    if price is not None:
        row["cost"] = price.cost(stored["prompt_tokens"], stored["completion_tokens"])
    row["generation"] = {k: v for k, v in asdict(generation).items() if k != "name"}
    return row
