"""The engine registry: which engine a judge spec names, which options it takes, how it loads.

A judge spec names a *transport*: `openai:MODEL` (any OpenAI-compatible server), `vllm:PATH`
(vLLM), or a local checkpoint folder (the in-process transformers engine). The *judge type* —
regression (`-r`: the score comes from the head) or generative (`[RESULT] n [END]`) — is not part
of the spec: the checkpoint decides it when it is loaded (`pollux.checkpoint.judge_kind`), on any
transport.

Each engine registers an `EngineEntry`: its prefix, its typed options class and its loader. The
options shared by every engine — the prompt template and the sampling settings — are declared once
in `CommonOptions`; each engine's class adds its own fields. `load_engine(spec, options)` resolves
the entry from the spec, validates ONE options object against its class, and loads. So an option
an engine does not take is a clear error naming the option and the engine (`option 'dtype' does
not apply to openai: judges (it takes: …)`), raised before anything loads — never a TypeError deep
in a constructor — and command-line verbs pass what the user set without knowing which engine
takes what. This is simonw/llm's pattern: each backend declares its own `Options`.

Sampling options are the fields of `pollux.engine.SamplingParams`, taken flat (`max_new_tokens=…`,
`temperature=…`) or as one `sampling=SamplingParams(…)` object (flat ones override its fields).
They are read from the dataclass itself, so a field added there is an option of every engine.

Command-line flags are declared here too, once: a field whose `json_schema_extra` is
`cli("--flag", "help")` (and the sampling fields, `SAMPLING_FLAGS`) becomes that flag of every
judging verb (`pollux.cli._options.with_engine_options`), with the same help everywhere. A field
without one is still reachable from the command line as `-o NAME=VALUE`.

Every model pollux talks to goes through this registry, with this one spec grammar: judges
(`load_engine`) and chat models — synth's instruction writers, answer models and teacher, and
`pollux answer`'s evaluated model (`load_chat`, `pollux.engine.chat`). An entry's `chat_loader`
builds its chat model from the same options class as its judges, so `openai:MODEL --base-url …`,
`vllm:PATH` and a checkpoint folder mean one thing everywhere. (Synth's old `local:PATH` spelling
is read by its config, with a deprecation note: `pollux.synth.config`.)

Adding an engine (e.g. `ray:`) is one `register_engine(EngineEntry(...))` call.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pollux.engine import Engine, SamplingParams, require_local_extra
from pollux.prompts import PromptTemplate, load_template

if typing.TYPE_CHECKING:
    from pollux.engine.chat import ChatModel

SAMPLING_FIELDS = tuple(f.name for f in dataclasses.fields(SamplingParams))

DType = Literal["auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16"]


class OptionsError(ValueError):
    """An option the engine does not take, or a value it cannot use."""


def cli(flag: str, help: str) -> dict[str, Any]:
    """An option's command-line flag and its help, for a field's `json_schema_extra`. The help is
    the CLI's, shared by every engine that takes the option, so it says which judges use it."""
    return {"flag": flag, "help": help}


# The flags of the sampling fields (`SamplingParams` is a plain dataclass, shared with the engines).
SAMPLING_FLAGS: dict[str, dict[str, Any]] = {
    "max_new_tokens": cli("--max-new-tokens", "Longest generated text (a judge's rationale, a model's answer), in tokens "
                          "(default: 1024)."),
    "min_new_tokens": cli("--min-new-tokens", "Suppress end-of-turn until this many tokens were generated "
                          "(default: 0)."),
    "temperature": cli("--temperature", "0 = greedy (the official offline setting) (default: 0)."),
    "top_p": cli("--top-p", "Nucleus sampling mass."),
    "top_k": cli("--top-k", "Sample among the k likeliest tokens (0: all)."),
    "repetition_penalty": cli("--repetition-penalty", "Repetition penalty (default: the checkpoint's "
                              "generation config)."),
    "seed": cli("--seed", "Sampling seed (default: 0)."),
}


class CommonOptions(BaseModel):
    """Options every engine takes: the prompt template and how the judge decodes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    template: PromptTemplate = Field(
        default_factory=PromptTemplate,
        description="Prompt template: a name (default, model-card, pollux-4b, pollux-4b-sbs), a UTF-8 file, or a "
        "PromptTemplate (its `reply` says how scores are read: [RESULT] n [END] or a bare integer).",
        json_schema_extra=cli("--template", "Prompt template: default, model-card, pollux-4b (Pollux-4B-Judge: "
                              "a bare integer after its reasoning), pollux-4b-sbs (its side-by-side prompt), or a "
                              "template file "
                              "(default: default)."))
    sampling: SamplingParams = Field(
        default_factory=SamplingParams,
        description="Decoding settings; also accepted flat (max_new_tokens=…, temperature=…, …).")
    expected_score: bool = Field(
        False, description="Generative judges: read each scale value's probability at the [RESULT] position and "
        "give their weighted mean (G-Eval style) beside the greedy score (verdict.expected_score, score_probs).")

    @field_validator("template", mode="before")
    @classmethod
    def _template(cls, value: Any) -> Any:
        return load_template(value) if value is None or isinstance(value, str) else value

    @model_validator(mode="before")
    @classmethod
    def _gather_sampling(cls, data: Any) -> Any:
        """Flat sampling options (`temperature=0.3`) go into `sampling`, over any object given."""
        if not isinstance(data, Mapping):
            return data
        flat = {k: data[k] for k in SAMPLING_FIELDS if k in data}
        if not flat:
            return data
        base = data.get("sampling")
        fields = dataclasses.asdict(base) if isinstance(base, SamplingParams) else dict(base or {})
        rest = {k: v for k, v in data.items() if k not in flat}
        return {**rest, "sampling": {**fields, **flat}}

    @classmethod
    def option_names(cls) -> list[str]:
        """Every option this class takes, as a user spells it: the engine's own first, then the
        common ones (sampling fields flat, and `sampling` as one object)."""
        own = [name for name in cls.model_fields if name not in CommonOptions.model_fields]
        return [*own, "template", "expected_score", *SAMPLING_FIELDS, "sampling"]


def _needs_tokens(sampling: SamplingParams) -> SamplingParams:
    """max_new_tokens=0 is score-only: the regression head on the prompt alone, which needs the head
    in this process (a checkpoint folder, gguf:); a judge whose score is in its text needs tokens."""
    if sampling.max_new_tokens < 1:
        raise ValueError("max_new_tokens must be ≥ 1 (0, score-only, needs a regression head in this process: a "
                         "checkpoint folder or gguf:PATH)")
    return sampling


class LocalOptions(CommonOptions):
    """The in-process transformers engine (a local checkpoint folder)."""

    dtype: DType = Field(
        "auto", description="Weights dtype; auto: bf16 on GPUs that run it well, fp32 on CPUs.",
        json_schema_extra=cli("--dtype", "Local models: auto (bf16 on GPUs, fp32 on CPUs), float32, bfloat16, "
                              "float16 (default: auto)."))
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, …",
                        json_schema_extra=cli("--device", "Local models: auto, cpu, cuda, cuda:1, … (default: auto)."))
    batch_size: int = Field(32, ge=1, description="Sequences decoded together.", json_schema_extra=cli(
        "--batch-size", "Local models: sequences decoded together (default: 32; vllm: 256)."))
    max_batch_tokens: int = Field(65_536, ge=1, description="KV positions per batch (bounds memory).",
                                  json_schema_extra=cli("--max-batch-tokens", "In-process judges: KV positions "
                                                        "per batch (memory bound) (default: 65536)."))
    share_prefix: bool = Field(True, description="Encode each answer's shared prompt prefix once.",
                               json_schema_extra=cli("--share-prefix", "Local judges: encode each answer's shared "
                                                     "prompt prefix once (default: share)."))
    threads: int | None = Field(
        None, ge=1, description="CPU threads for torch (torch.set_num_threads, process-wide); unset: left as "
        "they are (the CLI verbs pass `default_threads()`).",
        json_schema_extra=cli("--threads", "In-process models: torch CPU threads (default: $OMP_NUM_THREADS, "
                              "else all usable cores but one)."))


class VLLMOptions(CommonOptions):
    """The vLLM engine (`vllm:PATH`)."""

    dtype: DType | Literal["half"] = Field("auto", description="Weights dtype.")
    device: str = Field("auto", description="Must be the device vLLM runs on; auto accepts it.")
    batch_size: int | None = Field(None, ge=1, description="vLLM's max_num_seqs (default 256).")
    share_prefix: bool = Field(True, description="vLLM's automatic prefix caching.")
    tensor_parallel_size: int = Field(
        1, ge=1, description="GPUs one replica spans (vLLM's tensor parallelism); data parallelism = several "
        "replicas, e.g. Ray workers.",
        json_schema_extra=cli("--tensor-parallel-size", "vllm: GPUs one model replica spans (default: 1). On "
                              "Ray, each worker gets this many GPUs unless --gpus-per-worker says otherwise."))
    max_model_len: int | None = Field(None, ge=1, description="Context length (default: the checkpoint's).",
                                      json_schema_extra=cli("--max-model-len", "vllm: context length in tokens "
                                                            "(default: the checkpoint's)."))
    gpu_memory_utilization: float = Field(
        0.85, gt=0, le=1, description="Device memory share for both passes.",
        json_schema_extra=cli("--gpu-memory-utilization", "vllm: share of each GPU's memory vLLM may use "
                              "(default: 0.85)."))
    pooler_memory_share: float = Field(0.3, gt=0, lt=1, description="Share of it for the head (pooling) pass.")
    chunk_size: int = Field(1024, ge=1, description="Items per vLLM call.")
    top_logprobs: int = Field(20, ge=1, description="Expected scores: logprobs vLLM returns per token (its max_logprobs "
                              "must allow it).")
    llm_options: dict[str, Any] = Field(default_factory=dict, description="Passed on to vllm.LLM as is.")

    _sampling = field_validator("sampling")(_needs_tokens)


class OpenAIOptions(CommonOptions):
    """An OpenAI-compatible chat-completions server (`openai:MODEL`). Unset options come from the
    environment (`POLLUX_API_*`, `OPENAI_BASE_URL`, `OPENAI_API_KEY`), see `pollux.engine.openai_api`."""

    base_url: str | None = Field(
        None, description="The server's …/v1 URL (default: $OPENAI_BASE_URL, else OpenAI's).",
        json_schema_extra=cli("--base-url", "openai: the server's base URL (…/v1) (default: $OPENAI_BASE_URL)."))
    api_key: str | None = Field(None, repr=False, description="The key itself (prefer api_key_env).")
    api_key_env: str | None = Field(
        None, description="Environment variable holding the key (default OPENAI_API_KEY).",
        json_schema_extra=cli("--api-key-env", "openai: environment variable with the API key "
                              "(default: OPENAI_API_KEY)."))
    concurrency: int | None = Field(None, ge=1, description="Requests in flight (default 8).",
                                    json_schema_extra=cli("--concurrency", "openai: requests in flight (default: 8)."))
    timeout: float | None = Field(None, gt=0, description="Seconds per request, all retries aside (default 60).",
                                  json_schema_extra=cli("--api-timeout", "openai: seconds per request (default: 60)."))
    max_retries: int | None = Field(None, ge=0, description="Retries of a failed request (default 6).")
    max_reasks: int | None = Field(None, ge=0, description="Re-asks when a reply has no score (default 1).")
    prompt_style: Literal["pollux", "general", "prometheus"] | None = Field(
        None, description="pollux: a POLLUX judge; general: asks a general LLM for [FEEDBACK] … [RESULT] n [END] "
        "(GPT-4o, DeepSeek-R1); prometheus: M-Prometheus' own format, Feedback: … [RESULT] n.",
        json_schema_extra=cli("--prompt-style", "openai: 'pollux' (a POLLUX judge), 'general' (asks a general "
                              "LLM for [FEEDBACK] … [RESULT] n [END]) or 'prometheus' (an M-Prometheus-style "
                              "judge; see docs/meta-eval.md)."))
    backoff_base: float = Field(0.5, gt=0, description="First retry's backoff cap, seconds (doubles each retry).")
    backoff_max: float = Field(30.0, gt=0, description="Longest backoff, seconds.")
    retry_after_max: float = Field(120.0, ge=0, description="Longest Retry-After honoured, seconds.")
    top_logprobs: int = Field(20, ge=1, le=1000, description="Expected scores: top_logprobs asked of the server per "
                              "token (OpenAI allows up to 20).")
    # The endpoint's own auth (pollux.engine.http_chat.EndpointAuth; synth's [models.X] take the same).
    headers: dict[str, str] | None = Field(
        None, description="Extra request headers, e.g. {\"x-data-logging-enabled\": \"false\"} (a JSON object "
        "on the command line; default: $POLLUX_API_HEADERS).")
    auth_scheme: str | None = Field(
        None, description="The Authorization scheme before the key: Bearer (default), Api-Key (YandexGPT), …")
    api_key_command: str | list[str] | None = Field(
        None, description="A command (a shell line, or a list of arguments) that prints the key; rerun when "
        "api_key_ttl passes and on a 401 (expiring tokens, e.g. GigaChat's). Wins over api_key/api_key_env.")
    api_key_ttl: float | None = Field(
        None, gt=0, description="Seconds a key from api_key_command is used before the command is rerun "
        "(unset: only on a 401).")
    ca_bundle: str | None = Field(
        None, description="A PEM file (or folder) of CA certificates to verify the server's TLS certificate with "
        "instead of the default ones (corporate endpoints).")

    _sampling = field_validator("sampling")(_needs_tokens)

    @field_validator("headers", mode="before")
    @classmethod
    def _headers(cls, value: Any) -> Any:
        from pollux.engine.http_chat import parse_headers

        return None if value is None else dict(parse_headers(value))


Loader = Callable[[str, Any], Engine]
ChatLoader = Callable[[str, Any], "ChatModel"]


@dataclass(frozen=True)
class EngineEntry:
    """One engine: `prefix` selects it from a spec (None: the fallback for local folders)."""

    name: str
    prefix: str | None
    options: type[CommonOptions]
    loader: Loader
    summary: str
    chat_loader: ChatLoader | None = None  # messages → text (pollux.engine.chat); None: judges only

    @property
    def label(self) -> str:
        return f"{self.prefix} judges" if self.prefix else "local checkpoint judges"

    def validate(self, options: Mapping[str, Any] | CommonOptions | None = None, *,
                 defaults: Mapping[str, Any] | None = None) -> CommonOptions:
        """`options` (what the user set: each must apply) over `defaults` (what a caller prefers
        where this engine takes it, silently dropped where not) → this engine's options object."""
        if isinstance(options, CommonOptions):
            if type(options) is not self.options:
                raise OptionsError(f"{type(options).__name__} are not options of {self.label}")
            if not defaults:
                return options
            options = options.model_dump(exclude_unset=True)
        given = dict(options or {})
        takes = self.options.option_names()
        for name in given:
            if name not in takes:
                raise OptionsError(self._not_taken(name, takes))
        merged = {**{k: v for k, v in (defaults or {}).items() if k in takes}, **given}
        try:
            return self.options.model_validate(merged)
        except ValidationError as e:
            raise OptionsError(self._explain(e)) from None

    def load(self, target: str, options: CommonOptions) -> Engine:
        return self.loader(target, options)

    def load_chat(self, target: str, options: CommonOptions) -> ChatModel:
        if self.chat_loader is None:
            raise OptionsError(f"{self.label} cannot write chat replies (no chat loader)")
        return self.chat_loader(target, options)

    def _not_taken(self, name: str, takes: list[str]) -> str:
        elsewhere = any(name in e.options.option_names() for e in _ENGINES.values() if e is not self)
        what = f"option {name!r} does not apply to" if elsewhere else f"unknown option {name!r} for"
        close = difflib.get_close_matches(name, takes, n=1)
        hint = f"; did you mean {close[0]!r}?" if close and not elsewhere else ""
        return f"{what} {self.label} (it takes: {', '.join(takes)}){hint}"

    def _explain(self, error: ValidationError) -> str:
        problems = []
        for err in error.errors():
            loc = [str(part) for part in err["loc"]]
            message = str(err["msg"]).removeprefix("Value error, ")
            if loc == ["sampling"] and err["type"] == "value_error":  # SamplingParams' own check
                problems.append(f"sampling options of {self.label}: {message}")
                continue
            name = loc[1] if loc[:1] == ["sampling"] and len(loc) > 1 else (loc[0] if loc else "?")
            secret = name == "api_key"  # never echo a key, even a malformed one
            shown = "" if err["type"] == "value_error" or secret else f" (got {err['input']!r})"
            problems.append(f"option {name!r} of {self.label}: {message}{shown}")
        return "; ".join(problems)


_ENGINES: dict[str, EngineEntry] = {}


def register_engine(entry: EngineEntry) -> None:
    """Add (or replace) an engine; prefixed engines are tried before the local fallback."""
    _ENGINES[entry.name] = entry


def engines() -> list[EngineEntry]:
    return list(_ENGINES.values())


def get_engine(name: str) -> EngineEntry:
    return _ENGINES[name]


@dataclass(frozen=True)
class OptionFlag:
    """One option's command-line flag: `name` as the registry spells it (`timeout`), `flag` as the
    user types it (`--api-timeout`), and the value type the command line parses (int, float, bool
    or str; the engine's class validates the value)."""

    name: str
    flag: str
    help: str
    type: type


def _cli_type(annotation: Any) -> type:
    """The command line's type for a field: `int | None` → int; a Literal or any other type → str."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return _cli_type(args[0]) if len(args) == 1 else str
    return annotation if annotation in (int, float, bool, str) else str


def option_flags() -> list[OptionFlag]:
    """Every option with a flag, over every registered engine, once each in a stable order: the
    common ones (template, sampling), then each engine's own. Engines that share an option share
    its flag: it is declared on the first class that has the field (a second, different
    declaration is a programming error, raised here)."""
    hints = typing.get_type_hints(SamplingParams)
    found: list[tuple[str, dict[str, Any], Any]] = [
        (name, SAMPLING_FLAGS[name], hints[name]) for name in SAMPLING_FIELDS if name in SAMPLING_FLAGS]
    classes: list[type[BaseModel]] = [CommonOptions, *(e.options for e in _ENGINES.values())]
    for cls in classes:
        for name, info in cls.model_fields.items():
            if isinstance(info.json_schema_extra, dict) and "flag" in info.json_schema_extra:
                found.append((name, info.json_schema_extra, info.annotation))
    flags: dict[str, OptionFlag] = {}
    for name, extra, annotation in found:
        flag = OptionFlag(name, str(extra["flag"]), str(extra["help"]), _cli_type(annotation))
        if flags.setdefault(name, flag) != flag:
            raise ValueError(f"option {name!r} has two command-line flags: {flags[name]} and {flag}")
    order = ["template", *SAMPLING_FIELDS]  # the template first, then how the judge decodes
    return sorted(flags.values(), key=lambda f: order.index(f.name) if f.name in order else len(order))


_PREFIX = re.compile(r"^([A-Za-z][\w.-]+):")  # two letters at least: `C:\…` stays a path


def resolve(spec: str) -> tuple[EngineEntry, str]:
    """The engine a spec names, and what follows its prefix (a model name or a folder)."""
    for entry in _ENGINES.values():
        if entry.prefix and spec.startswith(entry.prefix):
            return entry, spec.removeprefix(entry.prefix)
    match = _PREFIX.match(spec)
    if match and not Path(spec).exists():
        known = ", ".join(e.prefix for e in _ENGINES.values() if e.prefix)
        raise OptionsError(f"unknown engine {match.group(1) + ':'!r} in {spec!r} (known: {known}, "
                           "or a local checkpoint folder)")
    return _ENGINES["local"], spec


def validate_options(spec: str, options: Mapping[str, Any] | CommonOptions | None = None, *,
                     defaults: Mapping[str, Any] | None = None) -> CommonOptions:
    """Check `options` against the engine `spec` names, without loading anything."""
    return resolve(spec)[0].validate(options, defaults=defaults)


def load_engine(spec: str, options: Mapping[str, Any] | CommonOptions | None = None, *,
                defaults: Mapping[str, Any] | None = None) -> Engine:
    """Resolve `spec`, validate `options` against its engine, and load it."""
    entry, target = resolve(spec)
    return entry.load(target, entry.validate(options, defaults=defaults))


def load_chat(spec: str, options: Mapping[str, Any] | CommonOptions | None = None, *,
              defaults: Mapping[str, Any] | None = None) -> ChatModel:
    """Resolve `spec`, validate `options` against its engine, and load its chat model (messages →
    text replies with token counts; `pollux.engine.chat`)."""
    entry, target = resolve(spec)
    return entry.load_chat(target, entry.validate(options, defaults=defaults))


# -- the built-in engines ----------------------------------------------------------------------


def default_threads() -> int:
    """Torch CPU threads for an in-process judge whose `threads` the user did not set:
    `$OMP_NUM_THREADS` when set, else every core this process may use but one (at least 1).

    Why not all cores (torch's own default): torch's OpenMP threads spin-wait for each other at
    every operation, so when another process holds one core, a judge using all of them waits on
    the descheduled thread over and over. On a shared 2-core machine `pollux evaluate` on the tiny
    test judge ran 3.7x slower with 2 threads than with 1 (docs/evaluate.md has the figures).
    Leaving one core free costs little on a large machine and keeps a busy small one usable; the
    spare core also runs tokenisation, the HTTP server or the SQLite writer beside the model.
    """
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores - 1)


def _load_local(path: str, o: LocalOptions) -> Engine:
    torch = require_local_extra()  # torch, or an error that names the `local` extra to install
    from pollux.engine.hf import TransformersEngine

    if o.threads is not None:  # process-wide; verbs pass `default_threads()` unless told otherwise
        torch.set_num_threads(o.threads)
    return TransformersEngine.from_pretrained(
        path, dtype=o.dtype, device=o.device, template=o.template, sampling=o.sampling,
        batch_size=o.batch_size, max_batch_tokens=o.max_batch_tokens, share_prefix=o.share_prefix,
        expected_score=o.expected_score)


def _load_vllm(path: str, o: VLLMOptions) -> Engine:
    from pollux.engine.vllm_engine import VLLMEngine

    return VLLMEngine.from_pretrained(
        path, device=o.device, batch_size=o.batch_size, share_prefix=o.share_prefix, template=o.template,
        sampling=o.sampling, dtype=o.dtype, max_model_len=o.max_model_len,
        gpu_memory_utilization=o.gpu_memory_utilization, pooler_memory_share=o.pooler_memory_share,
        chunk_size=o.chunk_size, expected_score=o.expected_score, top_logprobs=o.top_logprobs, **{**o.llm_options, "tensor_parallel_size": o.tensor_parallel_size})


def _load_openai(model: str, o: OpenAIOptions) -> Engine:
    from pollux.engine.openai_api import OpenAIEngine

    # Unset (None) options are left to the engine, which reads them from the environment.
    own = {k: v for k, v in o.model_dump(exclude={"template", "sampling"}).items() if v is not None}
    return OpenAIEngine(model, template=o.template, sampling=o.sampling, **own)


def _chat_local(path: str, o: LocalOptions) -> ChatModel:
    from pollux.engine.chat import LocalChat

    return LocalChat(path, o)


def _chat_vllm(path: str, o: VLLMOptions) -> ChatModel:
    from pollux.engine.chat import VllmChat

    return VllmChat(path, o)


def _chat_openai(model: str, o: OpenAIOptions) -> ChatModel:
    from pollux.engine.chat import HttpChat

    if not model:
        raise OptionsError("openai engine: the model name is empty (use openai:MODEL)")
    return HttpChat(model, o)


register_engine(EngineEntry("local", None, LocalOptions, _load_local,
                            "a local checkpoint folder, judged in-process (transformers)", _chat_local))
register_engine(EngineEntry("vllm", "vllm:", VLLMOptions, _load_vllm, "a local checkpoint folder on vLLM",
                            _chat_vllm))
register_engine(EngineEntry("openai", "openai:", OpenAIOptions, _load_openai,
                            "a model behind an OpenAI-compatible chat-completions server", _chat_openai))


# -- llama.cpp (gguf:PATH) ---------------------------------------------------------------------


class GGUFOptions(CommonOptions):
    """The llama.cpp engine (`gguf:PATH`, a GGUF made by `pollux convert`; `pollux.engine.gguf`)."""

    n_ctx: int | None = Field(
        None, ge=1, description="Context length in tokens (default: the model's training context).",
        json_schema_extra=cli("--n-ctx", "gguf: context length in tokens; smaller saves memory (default: the "
                              "model's)."))
    threads: int | None = Field(None, ge=1, description="llama.cpp CPU threads (the CLI passes default_threads()).")
    n_batch: int = Field(512, ge=1, description="Prompt tokens llama.cpp evaluates per call.")
    share_prefix: bool = Field(True, description="Reuse the KV cache of the previous prompt's common prefix.")
    extra_buffers: bool | None = Field(
        None, description="llama.cpp's extra weight buffers (AMX, repacking); false where AMX faults (some VMs) "
        "(default: $POLLUX_GGUF_EXTRA_BUFFERS, else on).")


def _load_gguf(path: str, o: GGUFOptions) -> Engine:
    from pollux.engine.gguf import GGUFEngine

    return GGUFEngine(path, template=o.template, sampling=o.sampling, n_ctx=o.n_ctx, threads=o.threads,
                      n_batch=o.n_batch, share_prefix=o.share_prefix, expected_score=o.expected_score,
                      extra_buffers=o.extra_buffers)


def _chat_gguf(path: str, o: GGUFOptions) -> ChatModel:
    from pollux.engine.gguf import GGUFChat

    return GGUFChat(path, n_ctx=o.n_ctx, threads=o.threads, n_batch=o.n_batch, extra_buffers=o.extra_buffers)


register_engine(EngineEntry("gguf", "gguf:", GGUFOptions, _load_gguf,
                            "a GGUF judge on llama.cpp (pollux convert makes one; laptop CPUs)", _chat_gguf))
