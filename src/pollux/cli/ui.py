"""`pollux ui RUN.db [more.db…]`: the web UI over run databases (see docs/ui.md).

A thin shell over `pollux.ui.app.create_ui_app` and uvicorn. Read-only by default; `--writable`
lets signed-in reviewers store expert scores, `--judge` adds the judge-live page. Writes need the
key (`--key`, else $POLLUX_API_KEY, else one generated and printed to stderr).
"""

from __future__ import annotations

import logging
import secrets
import sys
import threading
import webbrowser
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from pollux.cli import _options as opt

if TYPE_CHECKING:
    from pollux.judge import Judge


def register(app: typer.Typer) -> None:
    app.command("ui")(opt.with_engine_options(ui))


def ui(
    dbs: list[Path] = typer.Argument(..., metavar="RUN.DB", help="Run databases written by `pollux evaluate`."),
    experts: list[Path] | None = typer.Option(None, "--experts", help="Expert score files (POLLUX format), shown "
                                              "as runs to compare against. Repeatable."),
    judge_spec: str | None = typer.Option(None, "--judge", "--model", "-m",
                                          help=opt.JUDGE_HELP + " Enables the judge-live page."),
    writable: bool = typer.Option(False, "--writable", help="Let signed-in reviewers store expert scores."),
    key: str | None = typer.Option(None, "--key", help="The sign-in key for writes (default: $POLLUX_API_KEY; "
                                   "generated and printed when needed and none is given)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind; loopback unless you mean it."),
    port: int = typer.Option(8765, "--port", help="TCP port."),
    no_browser: bool = typer.Option(False, "--no-browser", help="Do not open a browser."),
    log_level: str = typer.Option("warning", "--log-level", help="uvicorn log level."),
    engine_options: dict[str, Any] | None = None,
) -> None:
    """Explore runs, compare judges, review verdicts and judge live in a browser."""
    import uvicorn

    from pollux.server.run import resolve_api_key
    from pollux.store import StoreError
    from pollux.ui.app import create_ui_app
    from pollux.ui.queries import Explorer

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    missing = [str(p) for p in [*dbs, *(experts or [])] if not p.is_file()]
    if missing:
        typer.echo(f"pollux ui: no such file: {', '.join(missing)}", err=True)
        raise typer.Exit(2)
    try:  # the databases first: a bad one fails before a judge takes minutes to load
        explorer = Explorer(dbs, experts=experts or (), reviews_writable=writable)
    except (StoreError, OSError, ValueError) as e:  # StoreError: not a run database
        typer.echo(f"pollux ui: {e}", err=True)
        raise typer.Exit(2) from None
    judge = None
    if judge_spec is not None:
        judge = _load_judge(judge_spec, engine_options or {})
    key = resolve_api_key(key)
    if key is None and (writable or judge is not None):
        key = secrets.token_urlsafe(16)
        typer.echo(f"pollux ui: sign-in key for this session: {key}", err=True)
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/ui/"
    typer.echo(f"pollux ui: {url} ({'writable' if writable else 'read-only'}"
               f"{', judge live' if judge is not None else ''})", err=True)
    if not no_browser:
        threading.Timer(1.0, webbrowser.open, args=(url,)).start()  # once the socket is likely open
    loopback = host in ("127.0.0.1", "localhost")  # answer only these names there (DNS rebinding)
    app = create_ui_app(explorer, judge=judge, key=key, allowed_hosts=["127.0.0.1", "localhost"] if loopback else None)
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
    finally:
        explorer.close()


def _load_judge(spec: str, given: dict[str, Any]) -> Judge:
    """The judge for judge live, loaded before the server starts; option errors exit 2."""
    from pollux.checkpoint import CheckpointError
    from pollux.judge import Judge

    options = opt.check_options(spec, given)
    try:
        return Judge.from_spec(spec, options)
    except (CheckpointError, OSError, ValueError, ImportError, RuntimeError) as e:
        typer.echo(f"pollux ui: cannot load the judge: {type(e).__name__}: {e}", err=True)
        raise typer.Exit(2) from None
