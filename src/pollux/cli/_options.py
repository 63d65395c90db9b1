"""Judge options shared by the judging verbs (`judge`, `evaluate`, `serve`, `meta-eval`), and the
executor flags (`--ray`, `--workers`, …) of every verb that runs on `pollux.executor`.

Each verb declares these flags with the same names and help, collects the ones the user SET into
one dict (`engine_options`: a flag left out is None and is not passed), and hands that dict to the
engine registry (`pollux.engine.registry`), which knows which engine takes what. So a local-only
flag left at its default never reaches an `openai:` judge, while one given explicitly
(`--dtype bfloat16` with `openai:X`) is a clear error, exit 2. `-o KEY=VALUE` reaches any option
of the engine by its registry name (`-o max_retries=3`), as `llm -o` does.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from pollux.engine.registry import CommonOptions, OptionsError, default_threads, validate_options

JUDGE_HELP = "The judge: a checkpoint folder, vllm:PATH or openai:MODEL (with --base-url)."

JudgeSpec = Annotated[str, typer.Option("--judge", "--model", "-m", help=JUDGE_HELP)]
Template = Annotated[str | None, typer.Option(
    "--template", help="Prompt template: default, model-card, or a template file (default: default).")]
Option = Annotated[list[str] | None, typer.Option(
    "--option", "-o", help="KEY=VALUE: any option of the judge's engine, by name (e.g. max_retries=3). Repeatable.")]
# sampling (every engine)
MaxNewTokens = Annotated[int | None, typer.Option("--max-new-tokens", min=1, help="Longest rationale, in tokens (default: 1024).")]
MinNewTokens = Annotated[int | None, typer.Option("--min-new-tokens", min=0, help="Suppress end-of-turn until this many tokens were generated (default: 0).")]
Temperature = Annotated[float | None, typer.Option("--temperature", min=0.0, help="0 = greedy (the official offline setting) (default: 0).")]
TopP = Annotated[float | None, typer.Option("--top-p", help="Nucleus sampling mass.")]
TopK = Annotated[int | None, typer.Option("--top-k", min=0, help="Sample among the k likeliest tokens (0: all).")]
RepetitionPenalty = Annotated[float | None, typer.Option("--repetition-penalty", help="Repetition penalty (default: the checkpoint's generation config).")]
Seed = Annotated[int | None, typer.Option("--seed", help="Sampling seed (default: 0).")]
# in-process (and vLLM) judges
DType = Annotated[str | None, typer.Option("--dtype", help="Local judges: auto (bf16 on GPUs, fp32 on CPUs), float32, bfloat16, float16 (default: auto).")]
Device = Annotated[str | None, typer.Option("--device", help="Local judges: auto, cpu, cuda, cuda:1, … (default: auto).")]
BatchSize = Annotated[int | None, typer.Option("--batch-size", min=1, help="Local judges: sequences decoded together (default: 32).")]
MaxBatchTokens = Annotated[int | None, typer.Option("--max-batch-tokens", min=1, help="In-process judges: KV positions per batch (memory bound) (default: 65536).")]
SharePrefix = Annotated[bool | None, typer.Option("--share-prefix/--no-share-prefix", help="Local judges: encode each answer's shared prompt prefix once (default: share).", show_default=False)]
Threads = Annotated[int | None, typer.Option(
    "--threads", min=1,
    help="In-process judges: torch CPU threads (default: $OMP_NUM_THREADS, else all usable cores but one).")]
# openai: judges
BaseUrl = Annotated[str | None, typer.Option("--base-url", help="openai: the server's base URL (…/v1) (default: $OPENAI_BASE_URL).")]
ApiKeyEnv = Annotated[str | None, typer.Option("--api-key-env", help="openai: environment variable with the API key (default: OPENAI_API_KEY).")]
Concurrency = Annotated[int | None, typer.Option("--concurrency", min=1, help="openai: requests in flight (default: 8).")]
PromptStyle = Annotated[str | None, typer.Option(
    "--prompt-style", help="openai: 'pollux' (a POLLUX judge), 'general' (asks a general LLM for [FEEDBACK] … [RESULT] n [END]) "
         "or 'prometheus' (an M-Prometheus-style judge; see docs/meta-eval.md).")]
ApiTimeout = Annotated[float | None, typer.Option("--api-timeout", min=0.1, help="openai: seconds per request (default: 60).")]
# vLLM judges (vllm:PATH)
TensorParallelSize = Annotated[int | None, typer.Option(
    "--tensor-parallel-size", min=1, help="vllm: GPUs one judge replica spans (default: 1). On Ray, each worker "
    "gets this many GPUs unless --gpus-per-worker says otherwise.")]
GpuMemoryUtilization = Annotated[float | None, typer.Option(
    "--gpu-memory-utilization", min=0.01, max=1.0, help="vllm: share of each GPU's memory vLLM may use (default: 0.85).")]
MaxModelLen = Annotated[int | None, typer.Option(
    "--max-model-len", min=1, help="vllm: context length in tokens (default: the checkpoint's).")]

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
