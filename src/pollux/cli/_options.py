"""Judge options shared by the judging verbs (`judge`, `evaluate`, `serve`, `ui`, `meta-eval`), and
the executor flags (`--ray`, `--workers`, …) of every verb that runs on `pollux.executor`.

The engine flags are not declared here nor in the verbs: `with_engine_options(verb)` generates them
from the engine registry's option classes (`pollux.engine.registry.option_flags`), so an option
added to an engine is a flag of every judging verb, with one help text. The verb declares one
parameter, `engine_options`, and receives the options the user SET as one dict (a flag left out is
not in it), which it hands to the registry (`check_options`), which knows which engine takes what.
So a local-only flag left at its default never reaches an `openai:` judge, while one given
explicitly (`--dtype bfloat16` with `openai:X`) is a clear error, exit 2. `-o KEY=VALUE` reaches
any option of the engine by its registry name (`-o max_retries=3`), as `llm -o` does.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Collection, Mapping
from typing import Annotated, Any

import typer

from pollux.engine.registry import (
    CommonOptions,
    OptionFlag,
    OptionsError,
    default_threads,
    option_flags,
    validate_options,
)

JUDGE_HELP = "The judge: a checkpoint folder, vllm:PATH or openai:MODEL (with --base-url)."
OPTION_HELP = "KEY=VALUE: any option of the judge's engine, by name (e.g. max_retries=3). Repeatable."
# The generated parameters' names: apart from the verb's own (meta-eval's --seed is the bootstrap's).
ENGINE_PARAM_PREFIX = "engine__"
ENGINE_OPTIONS = "engine_options"  # the one parameter a verb declares for all of them

JudgeSpec = Annotated[str, typer.Option("--judge", "--model", "-m", help=JUDGE_HELP)]


def with_engine_options(verb: Callable[..., Any], *, exclude: Collection[str] = (),
                        flags: Mapping[str, str] | None = None) -> Callable[..., Any]:
    """`verb` with every engine flag, for `app.command(...)`: its `engine_options` parameter is
    replaced by one typer option per registry option (and `-o/--option`), and the wrapper calls
    `verb(..., engine_options={what the user set})` (see `engine_options`).

    `exclude`: registry names the verb declares itself (serve's own --batch-size); `flags`: another
    flag for an option in this verb ({"seed": "--sampling-seed"} where --seed means something else).
    Built when the verb is registered, so an engine registered before that has its flags too."""
    signature = inspect.signature(verb, eval_str=True)
    names = list(signature.parameters)
    if ENGINE_OPTIONS not in names:
        raise TypeError(f"{verb.__name__} has no {ENGINE_OPTIONS!r} parameter to fill")
    at = names.index(ENGINE_OPTIONS)
    generated = [_parameter(f, (flags or {}).get(f.name, f.flag)) for f in option_flags() if f.name not in exclude]
    generated.append(inspect.Parameter(
        ENGINE_PARAM_PREFIX + "option", inspect.Parameter.KEYWORD_ONLY, annotation=list[str] | None,
        default=typer.Option(None, "--option", "-o", help=OPTION_HELP)))
    own = list(signature.parameters.values())
    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in [*own[:at], *generated, *own[at + 1:]]]

    @functools.wraps(verb)
    def wrapper(**kwargs: Any) -> Any:
        set_flags = {k.removeprefix(ENGINE_PARAM_PREFIX): kwargs.pop(k) for k in list(kwargs)
                     if k.startswith(ENGINE_PARAM_PREFIX)}
        return verb(**kwargs, **{ENGINE_OPTIONS: engine_options(**set_flags)})

    wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}  # what typer reads, resolved
    return wrapper


def _parameter(flag: OptionFlag, name: str) -> inspect.Parameter:
    """One registry option as a typer option that is None unless given."""
    return inspect.Parameter(ENGINE_PARAM_PREFIX + flag.name, inspect.Parameter.KEYWORD_ONLY,
                             annotation=flag.type | None,
                             default=typer.Option(None, _decls(flag, name), help=flag.help, show_default=False))


def _decls(flag: OptionFlag, name: str) -> str:
    """`--x`, or `--x/--no-x` for a bool: unset (None) stays distinguishable from either."""
    return f"{name}/--no-{name.removeprefix('--')}" if flag.type is bool else name


# Where and how wide to run: one declaration for every verb that runs on `pollux.executor`
# (evaluate, meta-eval, synth). None = not given: the verb's own default (or its config's).
Ray = Annotated[str | None, typer.Option(
    "--ray", help="Run on Ray Data: 'auto' (the running cluster this node belongs to) or a cluster "
    "address HOST:PORT / ray://HOST:PORT (default: local, no Ray needed).")]
Workers = Annotated[int | None, typer.Option(
    "--workers", min=1, help="Worker threads (local) or Ray actors; each worker holds its own model or client.")]
CpusPerWorker = Annotated[float | None, typer.Option("--cpus-per-worker", min=0.0, help="CPUs per Ray actor (default: 1).")]
GpusPerWorker = Annotated[float | None, typer.Option(
    "--gpus-per-worker", min=0.0, help="GPUs per Ray actor (default: 0; vllm: judges: --tensor-parallel-size).")]


def executor_options(*, ray: str | None, workers: int | None, cpus_per_worker: float | None,
                     gpus_per_worker: float | None, tensor_parallel_size: int | None = None) -> Any:
    """The executor flags as `pollux.executor.ExecutorOptions`, or None when none was given (the
    verb's in-process path, no Ray needed). A vLLM replica spanning `tensor_parallel_size` GPUs
    gets that many GPUs per Ray actor unless `--gpus-per-worker` is given. Bad values: exit 2."""
    from pollux.executor import ExecutorOptions

    if ray is None and workers is None and cpus_per_worker is None and gpus_per_worker is None:
        return None
    if gpus_per_worker is None and ray is not None and tensor_parallel_size is not None:
        gpus_per_worker = float(tensor_parallel_size)
    given: dict[str, Any] = {"ray": ray, "workers": workers, "cpus_per_worker": cpus_per_worker,
                             "gpus_per_worker": gpus_per_worker}
    try:
        return ExecutorOptions(**{k: v for k, v in given.items() if v is not None})
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


def worker_defaults(executor: Any) -> dict[str, Any]:
    """Engine defaults for a judge loaded in a Ray actor: an in-process judge uses the actor's CPUs
    (`--cpus-per-worker`), not the driver's core count, unless `--threads` says otherwise."""
    if executor is None or executor.ray is None:
        return {}
    return {"threads": max(1, int(executor.cpus_per_worker))}


def engine_options(*, option: list[str] | None = None, **flags: Any) -> dict[str, Any]:
    """The options the user set: `-o KEY=VALUE` pairs, then the flags that are not None (a flag
    wins over a `-o` of the same name). Names are the registry's (`timeout`, not `api_timeout`)."""
    given: dict[str, Any] = {}
    for pair in option or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            typer.echo(f"error: -o {pair!r}: expected KEY=VALUE", err=True)
            raise typer.Exit(2)
        given[key.strip().replace("-", "_")] = value
    given.update({k: v for k, v in flags.items() if v is not None})
    return given


def check_options(spec: str, given: dict[str, Any], *, defaults: dict[str, Any] | None = None) -> CommonOptions:
    """Validate before anything loads; a bad option is a usage error (exit 2), never a traceback.
    In-process judges get `--threads`' default (see `default_threads`) unless the user set it."""
    try:
        return validate_options(spec, given, defaults={"threads": default_threads(), **(defaults or {})})
    except OptionsError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
