"""The pipeline config: one TOML file a user edits, read into frozen dataclasses and checked up front.

Every problem is a `SynthConfigError` that names the key (`answers.models[2]`, `models.teacher.base_url`)
and what is wrong, raised before any request is sent, so a typo never costs a half-run: the file's
own errors when it is read, and what depends on the stages a run asks for (their sections, the
environment variables holding their models' API keys: `check_stages`) before the first stage
starts. The LLM stages' sections ([instructions], [answers], [annotate]) are optional: a config for
the early stages alone need not describe the later ones. Paths in the file are relative to the
file's folder.

    [run]        dir, seed
    [taxonomy]   path (official metainfo folder, optional), tasks (leaves or task types), levels
    [models.X]   model ("openai:NAME" at base_url | "vllm:PATH" | a checkpoint folder: the spec grammar of
                 `--judge`, resolved by `pollux.engine.registry`), base_url, api_key_env, concurrency, …,
                 and an endpoint's own auth: headers, auth_scheme, api_key_command, api_key_ttl, ca_bundle
                 (the old spellings "local:PATH" and a bare "NAME" at base_url still work, with a
                 deprecation note)
    [instructions] generators, per_generator, prompt, temperature, max_tokens
    [filter]     max_foreign_share, near_dup_threshold, num_perm, shingle_size
    [answers]    models, mode ("all" | "equal"), prompt, temperature, max_tokens
    [annotate]   teacher, prompt, max_attempts, temperature, max_tokens
    [sample]     size, by, held_out
    [executor]   workers, batch_size, max_retries (the CLI's --ray/--workers/… override these)

See docs/synth.md for every key and examples/synth.toml for a complete file.
"""

from __future__ import annotations

import os
import sys
import tomllib
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pollux.engine.http_chat import EndpointAuth
from pollux.engine.registry import OptionsError, get_engine, resolve, validate_options
from pollux.metaeval.domains import DEFAULT_OOD_TASKS
from pollux.synth.filter import FilterSettings

LEVELS = ("easy", "medium", "hard")
SAMPLE_BY = ("task_type", "criterion_group", "score")
ANSWER_MODES = ("all", "equal")


class SynthConfigError(ValueError):
    """The config cannot be used; the message names the key and what is wrong."""


@dataclass(frozen=True)
class ModelConfig:
    """One LLM: an OpenAI-compatible endpoint, a local checkpoint or a vLLM model, named by the
    engine registry's spec grammar and loaded by it (`chat_spec`, `chat_options`)."""

    name: str
    model: str  # the registry spec: "openai:NAME", "vllm:/abs/path" or "/abs/path" (a local checkpoint)
    base_url: str | None = None
    api_key_env: str | None = None
    concurrency: int = 8
    timeout: float = 120.0
    max_retries: int = 6
    batch_size: int = 8  # local / vLLM: prompts per generate call
    device: str = "auto"
    dtype: str = "auto"
    # An endpoint's own auth (extra headers, Api-Key scheme, a key command with renewal, a CA bundle):
    # the same options and the same transport code as the `openai:` judge (docs/ecosystem.md).
    auth: EndpointAuth = field(default_factory=EndpointAuth)

    @property
    def kind(self) -> str:
        """The registry's engine: "openai", "local" or "vllm"."""
        return resolve(self.model)[0].name

    @property
    def path(self) -> str:
        """What follows the spec's prefix: the endpoint's model name or the checkpoint folder."""
        return resolve(self.model)[1]

    def chat_options(self, *, with_key: bool = True) -> dict[str, Any]:
        """This model's options for the registry's engine (`pollux.engine.registry.load_chat`).
        The API key is read here (`with_key`), where the model is loaded — in a Ray actor, from the
        actor's environment; a config check leaves it out."""
        kind = self.kind
        if kind == "local":
            return {"batch_size": self.batch_size, "device": self.device, "dtype": self.dtype}
        if kind == "vllm":
            return {"dtype": self.dtype}
        if kind != "openai":  # another engine's file (gguf:PATH, …): its own defaults
            return {}
        a = self.auth
        options: dict[str, Any] = {
            "base_url": self.base_url, "concurrency": self.concurrency, "timeout": self.timeout,
            "max_retries": self.max_retries, "headers": dict(a.headers) or None, "auth_scheme": a.auth_scheme,
            "api_key_command": list(a.api_key_command) if isinstance(a.api_key_command, tuple) else a.api_key_command,
            "api_key_ttl": a.api_key_ttl, "ca_bundle": a.ca_bundle}
        key = self.api_key() if with_key else None
        return {**options, "api_key": key} if key else options

    def api_key(self) -> str | None:
        """The API key from `api_key_env` (None when no variable is named); an unset or empty
        variable is an error naming the key, checked before a run starts (`check_stages`)."""
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise SynthConfigError(f"models.{self.name}.api_key_env: environment variable {self.api_key_env} "
                                   "is not set or empty")
        return key

    def identity(self) -> dict[str, Any]:
        """What changes the texts this model writes (part of every row key): not the URL, port, key,
        timeouts or concurrency — a restarted server on another port serves the same model. Spelt
        as before the registry grammar (an endpoint's bare name, "local:PATH", "vllm:PATH"), so a
        run started before it resumes with the same keys."""
        kind, target = self.kind, self.path
        return {"name": self.name, "model": target if kind == "openai" else f"{kind}:{target}"}


@dataclass(frozen=True)
class Generation:
    temperature: float = 0.0
    max_tokens: int = 512


@dataclass(frozen=True)
class InstructionsConfig:
    generators: tuple[str, ...]
    per_generator: int = 1  # instructions per (leaf, level, generator): equal shares by default
    prompt: str = "instruction"  # a prompt name in the package or a file path
    generation: Generation = Generation(temperature=0.9, max_tokens=512)


@dataclass(frozen=True)
class AnswersConfig:
    models: tuple[str, ...]
    mode: str = "all"  # "all": every model answers every instruction; "equal": one model each, equal shares
    prompt: str = "answer"
    generation: Generation = Generation(temperature=0.7, max_tokens=1024)


@dataclass(frozen=True)
class AnnotateConfig:
    teacher: str
    prompt: str = "annotate"
    max_attempts: int = 3  # an unparseable / out-of-scale reply is asked again, then dropped and counted
    generation: Generation = Generation(temperature=0.0, max_tokens=1024)


@dataclass(frozen=True)
class SampleConfig:
    size: int = 1_000_000
    by: tuple[str, ...] = ("task_type",)
    held_out: tuple[str, ...] = DEFAULT_OOD_TASKS


@dataclass(frozen=True)
class ExecutorConfig:
    workers: int = 4  # local: threads per endpoint model (sharing its client); Ray: actors
    batch_size: int = 128  # rows per batch, and per store transaction
    max_retries: int = 3


@dataclass(frozen=True)
class SynthConfig:
    path: Path
    run_dir: Path
    seed: int
    taxonomy: Path | None
    tasks: tuple[str, ...]  # task types or "type / subtype [/ subsubtype]" leaves; () = every leaf
    levels: tuple[str, ...]
    models: dict[str, ModelConfig]
    instructions: InstructionsConfig | None  # None: no [instructions] table (the stage cannot run)
    filter: FilterSettings
    answers: AnswersConfig | None
    annotate: AnnotateConfig | None
    sample: SampleConfig
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)

    @property
    def db_path(self) -> Path:
        return self.run_dir / "synth.db"

    def stage_models(self, stage: str) -> tuple[str, ...]:
        """The models an LLM stage calls (none for the others); its section missing is an error."""
        if stage == "instructions":
            return required(self.instructions, stage).generators
        if stage == "answers":
            return required(self.answers, stage).models
        if stage == "annotate":
            return (required(self.annotate, stage).teacher,)
        return ()


S = TypeVar("S")


def required(section: S | None, stage: str) -> S:
    """A stage's config section (named as the stage), or an error saying the stage needs it."""
    if section is None:
        raise SynthConfigError(f"[{stage}]: missing: the {stage!r} stage needs it (see examples/synth.toml)")
    return section


def check_stages(config: SynthConfig, stages: Iterable[str]) -> None:
    """Before a run: every asked-for stage's section is there and its models' API keys are set."""
    for stage in stages:
        for name in config.stage_models(stage):
            config.models[name].api_key()


def load_config(path: str | Path) -> SynthConfig:
    """Read and check a pipeline config (TOML). Raises `SynthConfigError` naming the key."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise SynthConfigError(f"{path}: cannot read the config: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise SynthConfigError(f"{path}: not valid TOML: {e}") from None
    return parse_config(raw, path)


def parse_config(raw: dict[str, Any], path: Path) -> SynthConfig:
    base = path.resolve().parent
    _known(raw, "", {"run", "taxonomy", "models", "instructions", "filter", "answers", "annotate", "sample",
                     "executor"})
    run = _table(raw, "run")
    _known(run, "run", {"dir", "seed"})
    tax = _table(raw, "taxonomy")
    _known(tax, "taxonomy", {"path", "tasks", "levels"})
    models = _models(_table(raw, "models"), base)
    if not models:
        raise SynthConfigError(f"{path}: [models] is empty: configure at least one model ([models.NAME] model = …)")
    levels = _strings(tax, "taxonomy", "levels", LEVELS)
    for i, level in enumerate(levels):
        if level not in LEVELS:
            raise SynthConfigError(f"taxonomy.levels[{i}]: unknown complexity level {level!r} (one of {LEVELS})")
    taxonomy_path = tax.get("path")
    return SynthConfig(
        path=path,
        run_dir=base / str(run.get("dir", "synth-run")),
        seed=_int(run, "run", "seed", 0),
        taxonomy=base / taxonomy_path if taxonomy_path else None,
        tasks=_strings(tax, "taxonomy", "tasks", ()),
        levels=levels,
        models=models,
        instructions=_instructions(_table(raw, "instructions"), models, base) if "instructions" in raw else None,
        filter=_filter(_table(raw, "filter")),
        answers=_answers(_table(raw, "answers"), models, base) if "answers" in raw else None,
        annotate=_annotate(_table(raw, "annotate"), models, base) if "annotate" in raw else None,
        sample=_sample(_table(raw, "sample")),
        executor=_executor(_table(raw, "executor")),
    )


# -- sections -----------------------------------------------------------------------------------

AUTH_KEYS = {"headers", "auth_scheme", "api_key_command", "api_key_ttl", "ca_bundle"}
MODEL_KEYS = {"model", "base_url", "api_key_env", "concurrency", "timeout", "max_retries", "batch_size",
              "device", "dtype", *AUTH_KEYS}


def _models(table: dict[str, Any], base: Path) -> dict[str, ModelConfig]:
    out = {}
    for name, spec in table.items():
        where = f"models.{name}"
        if not isinstance(spec, dict):
            raise SynthConfigError(f"{where}: expected a table ([{where}] model = …), got {type(spec).__name__}")
        _known(spec, where, MODEL_KEYS)
        out[name] = ModelConfig(
            name=name, model=_model_spec(spec, where, base), base_url=spec.get("base_url"),
            api_key_env=spec.get("api_key_env"),
            concurrency=_int(spec, where, "concurrency", 8, minimum=1),
            timeout=_float(spec, where, "timeout", 120.0, minimum=1e-3),
            max_retries=_int(spec, where, "max_retries", 6, minimum=0),
            batch_size=_int(spec, where, "batch_size", 8, minimum=1),
            device=str(spec.get("device", "auto")), dtype=str(spec.get("dtype", "auto")),
            auth=_auth(spec, where, base),
        )
        try:  # the registry's own check of the options (a dtype vLLM does not take, …), before any run
            validate_options(out[name].model, out[name].chat_options(with_key=False))
        except OptionsError as e:
            raise SynthConfigError(f"{where}: {e}") from None
    return out


SPEC_HELP = "'openai:NAME' (with base_url), 'vllm:PATH' or a checkpoint folder"


def _model_spec(spec: dict[str, Any], where: str, base: Path) -> str:
    """`model` as the registry's spec (see `ModelConfig.model`): a folder made absolute (relative
    to the config's folder), checked to exist. The old spellings — "local:PATH", and a bare endpoint
    model name beside base_url — are read as before, with a deprecation note naming the new one."""
    model = spec.get("model")
    if not isinstance(model, str) or not model.strip() or model.strip() in ("local:", "vllm:", "openai:"):
        raise SynthConfigError(f"{where}.model: missing: {SPEC_HELP}")
    model = model.strip()
    if model.startswith("local:"):
        model = model.removeprefix("local:")
        _deprecated(where, f"local:{model}", model)
        return f"{_folder(model, where, base, 'local')}"
    try:
        entry, target = resolve(model)
    except OptionsError as e:  # `gpt://…` beside a base_url: an endpoint's bare model name (old spelling)
        if not spec.get("base_url"):
            raise SynthConfigError(f"{where}.model: {e}") from None
        entry, target = get_engine("local"), model
    if entry.name not in ("openai", "local"):  # vllm:PATH, and any file-based engine registered later
        return f"{entry.prefix}{_folder(target, where, base, entry.name, folder=entry.name == 'vllm')}"
    if entry.name == "local":
        if (base / target).is_dir():
            return str((base / target).resolve())
        if not spec.get("base_url"):
            raise SynthConfigError(
                f"{where}.base_url: missing endpoint for model {model!r} (write model = 'openai:{model}' and an "
                f"OpenAI-compatible server's URL, e.g. http://127.0.0.1:8000/v1); nor is it a local checkpoint: "
                f"folder {str((base / target).resolve())!r} does not exist")
        _deprecated(where, model, f"openai:{model}")
        return f"openai:{model}"
    if not spec.get("base_url"):
        raise SynthConfigError(f"{where}.base_url: missing endpoint for model {model!r} (an OpenAI-compatible "
                               "server's URL, e.g. http://127.0.0.1:8000/v1)")
    return model


def _folder(path: str, where: str, base: Path, kind: str, *, folder: bool = True) -> Path:
    """A checkpoint's path made absolute (relative to the config's folder); it must exist."""
    found = (base / path).resolve()
    if not (found.is_dir() if folder else found.exists()):
        what = "checkpoint folder" if folder else "model file"
        raise SynthConfigError(f"{where}.model: {kind} {what} {str(found)!r} does not exist")
    return found


def _deprecated(where: str, old: str, new: str) -> None:
    """An old `model` spelling: still read, and said so (a DeprecationWarning for code, a note on
    stderr for the user of the command line, who does not see DeprecationWarnings)."""
    message = (f"{where}.model = {old!r} is deprecated: write {new!r} (the spec grammar of --judge: "
               f"{SPEC_HELP})")
    warnings.warn(message, DeprecationWarning, stacklevel=4)
    print(f"warning: {message}", file=sys.stderr)


def _auth(spec: dict[str, Any], where: str, base: Path) -> EndpointAuth:
    """An endpoint model's auth options, checked by `EndpointAuth.build` (the openai: judge's own
    check); a relative ca_bundle is relative to the config file's folder."""
    if spec.get("api_key_command") is not None and spec.get("api_key_env"):
        raise SynthConfigError(f"{where}: api_key_env and api_key_command both give the key: keep one")
    bundle = spec.get("ca_bundle")
    if bundle is not None and not isinstance(bundle, str):
        raise SynthConfigError(f"{where}.ca_bundle: expected a path, got {bundle!r}")
    try:
        return EndpointAuth.build(
            headers=spec.get("headers"), auth_scheme=spec.get("auth_scheme"),
            api_key_command=spec.get("api_key_command"), api_key_ttl=spec.get("api_key_ttl"),
            ca_bundle=base / Path(bundle).expanduser() if bundle and bundle.strip() else None)
    except ValueError as e:  # it names the option: say which model's
        raise SynthConfigError(f"{where}.{e}") from None


def _instructions(t: dict[str, Any], models: dict[str, ModelConfig], base: Path) -> InstructionsConfig:
    _known(t, "instructions", {"generators", "per_generator", "prompt", "temperature", "max_tokens"})
    return InstructionsConfig(
        generators=_model_list(t, "instructions", "generators", models),
        per_generator=_int(t, "instructions", "per_generator", 1, minimum=1),
        prompt=_prompt(t, "instructions", "instruction", base),
        generation=_generation(t, "instructions", Generation(0.9, 512)),
    )


def _filter(t: dict[str, Any]) -> FilterSettings:
    """The filter stage's settings; defaults and checks are `FilterSettings`' own (one place)."""
    _known(t, "filter", {"max_foreign_share", "near_dup_threshold", "num_perm", "shingle_size"})
    d = FilterSettings()
    try:
        return FilterSettings(
            max_foreign_share=_float(t, "filter", "max_foreign_share", d.max_foreign_share, minimum=0.0),
            near_dup_threshold=_float(t, "filter", "near_dup_threshold", d.near_dup_threshold, minimum=0.0),
            num_perm=_int(t, "filter", "num_perm", d.num_perm, minimum=16),
            shingle_size=_int(t, "filter", "shingle_size", d.shingle_size, minimum=1))
    except ValueError as e:  # FilterSettings names the setting; say where it lives in the config
        raise SynthConfigError(f"filter.{e}") from None


def _answers(t: dict[str, Any], models: dict[str, ModelConfig], base: Path) -> AnswersConfig:
    _known(t, "answers", {"models", "mode", "prompt", "temperature", "max_tokens"})
    mode = str(t.get("mode", "all"))
    if mode not in ANSWER_MODES:
        raise SynthConfigError(f"answers.mode: {mode!r} is not one of {ANSWER_MODES}")
    return AnswersConfig(models=_model_list(t, "answers", "models", models), mode=mode,
                         prompt=_prompt(t, "answers", "answer", base),
                         generation=_generation(t, "answers", Generation(0.7, 1024)))


def _annotate(t: dict[str, Any], models: dict[str, ModelConfig], base: Path) -> AnnotateConfig:
    _known(t, "annotate", {"teacher", "prompt", "max_attempts", "temperature", "max_tokens"})
    teacher = t.get("teacher")
    if not isinstance(teacher, str) or not teacher:
        raise SynthConfigError("annotate.teacher: missing: the name of a [models.NAME] entry")
    if teacher not in models:
        raise SynthConfigError(f"annotate.teacher: unknown model {teacher!r} (configured: {sorted(models)})")
    return AnnotateConfig(teacher=teacher, prompt=_prompt(t, "annotate", "annotate", base),
                          max_attempts=_int(t, "annotate", "max_attempts", 3, minimum=1),
                          generation=_generation(t, "annotate", Generation(0.0, 1024)))


def _sample(t: dict[str, Any]) -> SampleConfig:
    _known(t, "sample", {"size", "by", "held_out"})
    by = _strings(t, "sample", "by", ("task_type",))
    for i, b in enumerate(by):
        if b not in SAMPLE_BY:
            raise SynthConfigError(f"sample.by[{i}]: {b!r} is not one of {SAMPLE_BY}")
    if "task_type" not in by:
        raise SynthConfigError("sample.by: must include 'task_type' (the recipe samples by task)")
    return SampleConfig(size=_int(t, "sample", "size", 1_000_000, minimum=1), by=by,
                        held_out=_strings(t, "sample", "held_out", DEFAULT_OOD_TASKS))


def _executor(t: dict[str, Any]) -> ExecutorConfig:
    _known(t, "executor", {"workers", "batch_size", "max_retries"})
    return ExecutorConfig(workers=_int(t, "executor", "workers", 4, minimum=1),
                          batch_size=_int(t, "executor", "batch_size", 128, minimum=1),
                          max_retries=_int(t, "executor", "max_retries", 3, minimum=0))


# -- value helpers ------------------------------------------------------------------------------

def _table(raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise SynthConfigError(f"{key}: expected a table [{key}], got {type(value).__name__}")
    return value


def _known(table: dict[str, Any], where: str, keys: set[str]) -> None:
    for key in table:
        if key not in keys:
            name = f"{where}.{key}" if where else key
            raise SynthConfigError(f"{name}: unknown key (expected one of: {', '.join(sorted(keys))})")


def _int(t: dict[str, Any], where: str, key: str, default: int, *, minimum: int | None = None) -> int:
    value = t.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise SynthConfigError(f"{where}.{key}: expected an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise SynthConfigError(f"{where}.{key}: must be ≥ {minimum}, got {value}")
    return value


def _float(t: dict[str, Any], where: str, key: str, default: float, *, minimum: float | None = None) -> float:
    value = t.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise SynthConfigError(f"{where}.{key}: expected a number, got {value!r}")
    if minimum is not None and value < minimum:
        raise SynthConfigError(f"{where}.{key}: must be ≥ {minimum:g}, got {value}")
    return float(value)


def _strings(t: dict[str, Any], where: str, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    value = t.get(key)
    if value is None:
        return tuple(default)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise SynthConfigError(f"{where}.{key}: expected a list of non-empty strings, got {value!r}")
    return tuple(v.strip() for v in value)


def _model_list(t: dict[str, Any], where: str, key: str, models: dict[str, ModelConfig]) -> tuple[str, ...]:
    names = _strings(t, where, key, ())
    if not names:
        raise SynthConfigError(f"{where}.{key}: missing: a list of [models.NAME] names")
    for i, name in enumerate(names):
        if name not in models:
            raise SynthConfigError(f"{where}.{key}[{i}]: unknown model {name!r} (configured: {sorted(models)})")
    if len(set(names)) != len(names):
        raise SynthConfigError(f"{where}.{key}: a model is listed twice: {list(names)}")
    return names


def _generation(t: dict[str, Any], where: str, default: Generation) -> Generation:
    temperature = _float(t, where, "temperature", default.temperature, minimum=0.0)
    return Generation(temperature=temperature,
                      max_tokens=_int(t, where, "max_tokens", default.max_tokens, minimum=1))


def _prompt(t: dict[str, Any], where: str, default: str, base: Path) -> str:
    """A built-in prompt name, or a file (relative to the config); the file must be readable now."""
    from pollux.synth.prompts import BUILTIN, read_prompt

    value = t.get("prompt", default)
    if not isinstance(value, str) or not value.strip():
        raise SynthConfigError(f"{where}.prompt: expected a prompt name ({sorted(BUILTIN)}) or a file path")
    if value in BUILTIN:
        return value
    path = (base / value).resolve()
    try:
        read_prompt(str(path), default)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise SynthConfigError(f"{where}.prompt: unreadable prompt file {str(path)!r}: {e}") from None
    return str(path)
