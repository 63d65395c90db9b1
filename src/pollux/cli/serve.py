"""`pollux serve`: a judge checkpoint behind HTTP (see docs/serving.md)."""

from __future__ import annotations

import logging
import sys

import typer


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


def serve(
    model: str = typer.Option(..., "--model", help="Judge checkpoint folder (or a Judge.from_spec spec)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind; loopback unless you mean it."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    model_name: str | None = typer.Option(None, "--model-name",
                                          help="Name clients use as 'model' (default: the folder name)."),
    api_key: str | None = typer.Option(None, "--api-key",
                                       help="Require 'Authorization: Bearer KEY' (default: $POLLUX_API_KEY)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Most items per engine call."),
    max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", help="How long a batch waits to fill up."),
    max_queue: int = typer.Option(1024, "--max-queue", help="Most queued items; beyond → 429 + Retry-After."),
    max_body_bytes: int = typer.Option(8 * 1024 * 1024, "--max-body-bytes", help="Request body limit (413)."),
    max_items: int = typer.Option(256, "--max-items", help="Most items in one /v1/judge request (413)."),
    max_new_tokens: int = typer.Option(1024, "--max-new-tokens", help="Judge's generation budget."),
    temperature: float = typer.Option(0.0, "--temperature", help="Sampling temperature (0 = greedy)."),
    dtype: str = typer.Option("auto", "--dtype", help="Weights dtype: auto, bfloat16, float16, float32."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, …"),
    graceful_timeout: float = typer.Option(30.0, "--graceful-timeout",
                                           help="Seconds SIGTERM waits for in-flight requests."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
) -> None:
    """Serve a judge: POST /v1/judge, OpenAI-compatible /v1/chat/completions and /v1/models,
    GET /healthz and Prometheus /metrics."""
    from pollux.checkpoint import CheckpointError
    from pollux.engine import SamplingParams
    from pollux.server.run import serve as run_server

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        sampling = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature)
    except ValueError as e:
        typer.echo(f"pollux serve: {e}", err=True)
        raise typer.Exit(2) from None
    try:
        run_server(
            model, host=host, port=port, model_name=model_name, api_key=api_key, batch_size=batch_size,
            max_wait_ms=max_wait_ms, max_queue=max_queue, max_body_bytes=max_body_bytes, max_items=max_items,
            graceful_timeout=graceful_timeout, log_level=log_level,
            judge_options={"sampling": sampling, "dtype": dtype, "device": device},
        )
    except (CheckpointError, OSError, ValueError, ImportError) as e:  # a bad checkpoint or option: say so, no traceback
        typer.echo(f"pollux serve: {type(e).__name__}: {e}", err=True)
        raise typer.Exit(2) from None
