"""Run a judge server: load the checkpoint, then uvicorn until SIGTERM/SIGINT.

The judge is loaded before the socket opens, so `/healthz` answering means the server is ready.
On SIGTERM uvicorn stops accepting connections and waits (up to `graceful_timeout` seconds) for
in-flight requests; the app's shutdown then drains whatever is still queued.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pollux.engine.registry import CommonOptions, validate_options
from pollux.server.app import ServerConfig, create_app

API_KEY_ENV = "POLLUX_API_KEY"
HEADER_TIMEOUT_S = 10.0  # a request's headers must arrive within this (slow clients hold connections)
MAX_HEADER_BYTES = 64 * 1024  # a request's header block; more → 431
BODY_TIMEOUT_S = 60.0  # a request's body must arrive within this; else 408

log = logging.getLogger("pollux.server")


def resolve_api_key(api_key: str | None) -> str | None:
    """`--api-key` wins; otherwise the POLLUX_API_KEY environment variable; empty means none."""
    return api_key or os.environ.get(API_KEY_ENV) or None


def serve(
    model: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    model_name: str | None = None,
    api_key: str | None = None,
    batch_size: int = 32,
    max_wait_ms: float = 5.0,
    max_queue: int = 1024,
    max_body_bytes: int = 8 * 1024 * 1024,
    max_items: int = 256,
    graceful_timeout: float = 30.0,
    header_timeout_s: float = HEADER_TIMEOUT_S,
    body_timeout_s: float = BODY_TIMEOUT_S,
    max_header_bytes: int = MAX_HEADER_BYTES,
    log_level: str = "info",
    judge_options: Mapping[str, Any] | CommonOptions | None = None,
    ui_dbs: Sequence[str | Path] = (),
    ui_writable: bool = False,
    reply: str = "full",
) -> None:
    """Serve the judge `model` (any spec: a checkpoint folder, `vllm:PATH`, `openai:MODEL`) with
    `judge_options` (validated by the engine registry). Engines that batch get the server's
    `batch_size` as their batch size unless the options set one. `ui_dbs`: run databases the web
    UI shows under /ui (docs/ui.md), with this judge for judge live and the same key. The
    timeouts and `max_header_bytes` keep slow or hostile clients from holding connections. `reply`:
    the chat reply's format for the plain model name, `full` or `score` (`pollux.server.replies`)."""
    import uvicorn

    from pollux.judge import Judge

    options = validate_options(model, judge_options, defaults={"batch_size": batch_size})
    judge = Judge.from_spec(model, options)
    config = ServerConfig(
        model_name=model_name or Path(model.split(":", 1)[-1]).name or model,
        api_key=resolve_api_key(api_key),
        batch_size=batch_size,
        max_wait_ms=max_wait_ms,
        max_queue=max_queue,
        max_body_bytes=max_body_bytes,
        max_items=max_items,
        body_timeout_s=body_timeout_s,
        template=options.template,  # chat requests are parsed with the template the judge renders
        reply=reply,
    )
    app = create_app(judge, config)
    if ui_dbs:
        _mount_ui(app, judge, config.api_key, ui_dbs, ui_writable)
    server = uvicorn.Server(uvicorn_config(app, host=host, port=port, log_level=log_level,
                                           graceful_timeout=graceful_timeout, header_timeout_s=header_timeout_s,
                                           max_header_bytes=max_header_bytes))
    log.warning("serving %s as %r on http://%s:%d (key %s)", model, config.model_name, host, port,
                "required" if config.api_key else "not required")
    server.run()


def uvicorn_config(app: Any, *, host: str, port: int, log_level: str = "info", graceful_timeout: float = 30.0,
                   header_timeout_s: float = HEADER_TIMEOUT_S, max_header_bytes: int = MAX_HEADER_BYTES) -> Any:
    """The uvicorn settings of `pollux serve`, in one place so tests run the server as users do:
    the h11 protocol with a header read timeout and 431 for headers over `max_header_bytes`
    (`pollux.server.protocol`). `proxy_headers=False`: uvicorn would otherwise take the client's
    address from X-Forwarded-For whenever the peer is loopback, so any local client could pose as
    any address (the web UI's sign-in throttle keys on it); behind a real proxy, the proxy's
    address is the client's."""
    import uvicorn

    from pollux.server.protocol import protocol_class

    return uvicorn.Config(
        app, host=host, port=port, log_level=log_level, access_log=False, lifespan="on",
        timeout_graceful_shutdown=graceful_timeout,  # type: ignore[arg-type]  # seconds, a float is fine
        http=protocol_class(header_timeout_s), h11_max_incomplete_event_size=max_header_bytes,
        proxy_headers=False,
    )


def _mount_ui(app: Any, judge: Any, api_key: str | None, dbs: Sequence[str | Path], writable: bool) -> None:
    """The web UI beside the API: with a server key, every /ui page needs sign-in with that key."""
    from pollux.ui.app import create_ui_router
    from pollux.ui.queries import Explorer

    explorer = Explorer(dbs, reviews_writable=writable)
    app.include_router(create_ui_router(explorer, judge=judge, key=api_key, protect_reads=api_key is not None))
    log.warning("web UI on /ui over %d database(s)%s", len(dbs), " (reviews writable)" if writable else "")
