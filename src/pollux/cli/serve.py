"""`pollux serve`: a judge checkpoint behind HTTP (see docs/serving.md)."""

from __future__ import annotations

import logging
import sys
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer

from pollux.cli import _options as opt


class Reply(StrEnum):
    """`--reply`: an Enum, not a Literal (typer 0.16, the declared minimum, cannot take Literal)."""

    full = "full"
    score = "score"


def register(app: typer.Typer) -> None:
    # --batch-size is serve's own: the most items per engine call, and a local judge's batch size
    app.command("serve")(opt.with_engine_options(serve, exclude={"batch_size"}))


def serve(
    model: opt.JudgeSpec,
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind; loopback unless you mean it."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    model_name: str | None = typer.Option(None, "--model-name",
                                          help="Name clients use as 'model' (default: the folder name)."),
    api_key: str | None = typer.Option(None, "--api-key",
                                       help="Require 'Authorization: Bearer KEY' (default: $POLLUX_API_KEY)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1,
                                   help="Most items per engine call (also a local judge's batch size)."),
    max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", help="How long a batch waits to fill up."),
    max_queue: int = typer.Option(1024, "--max-queue", help="Most queued items; beyond → 429 + Retry-After."),
    max_body_bytes: int = typer.Option(8 * 1024 * 1024, "--max-body-bytes", help="Request body limit (413)."),
    max_items: int = typer.Option(256, "--max-items", help="Most items in one /v1/judge request (413)."),
    graceful_timeout: float = typer.Option(30.0, "--graceful-timeout",
                                           help="Seconds SIGTERM waits for in-flight requests."),
    header_timeout: float = typer.Option(10.0, "--header-timeout", min=0.1,
                                         help="Seconds a request's headers may take to arrive (408)."),
    body_timeout: float = typer.Option(60.0, "--body-timeout", min=0.1,
                                       help="Seconds a request's body may take to arrive (408)."),
    max_header_bytes: int = typer.Option(64 * 1024, "--max-header-bytes", min=1024,
                                         help="Request header limit (431)."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
    engine_options: dict[str, Any] | None = None,
    ui: list[Path] | None = typer.Option(None, "--ui", help="Also serve the web UI on /ui over this run database "
                                         "(repeatable; see docs/ui.md). With a key, the UI needs sign-in."),
    ui_writable: bool = typer.Option(False, "--ui-writable", help="Let signed-in reviewers store expert scores."),
    reply: Reply = typer.Option(
        Reply.full, "--reply", help="Chat reply content: the judge's text (full) or only its score (score, for "
        "MERA-style clients that read a bare number); per request: the model NAME:score / NAME:full."),
) -> None:
    """Serve a judge: POST /v1/judge, OpenAI-compatible /v1/chat/completions and /v1/models,
    GET /healthz and Prometheus /metrics. `--judge openai:MODEL --base-url URL` serves a judge
    that is itself behind an OpenAI-compatible server (a proxy that speaks /v1/judge)."""
    from pollux.checkpoint import CheckpointError
    from pollux.server.run import serve as run_server

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    options = opt.check_options(model, engine_options or {}, defaults={"batch_size": batch_size})
    try:
        run_server(
            model, host=host, port=port, model_name=model_name, api_key=api_key, batch_size=batch_size,
            max_wait_ms=max_wait_ms, max_queue=max_queue, max_body_bytes=max_body_bytes, max_items=max_items,
            graceful_timeout=graceful_timeout, header_timeout_s=header_timeout, body_timeout_s=body_timeout,
            max_header_bytes=max_header_bytes, log_level=log_level, judge_options=options,
            ui_dbs=ui or (), ui_writable=ui_writable, reply=Reply(reply).value,
        )
    except (CheckpointError, OSError, ValueError, ImportError, RuntimeError) as e:  # a bad checkpoint or option: no traceback
        typer.echo(f"pollux serve: {type(e).__name__}: {e}", err=True)
        raise typer.Exit(2) from None
