"""The `pollux` command line: each verb is a thin shell over the Python API.

Every module in this package that defines `register(app)` adds its verb(s); nothing else needs
editing to add one. Results go to stdout as JSON / JSON lines, progress and logs to stderr, and
failures exit non-zero.

Registering a verb imports its module only: each imports its heavy libraries (torch, pandas,
scipy, …) inside the function that runs, so `pollux --help` and every verb's help stay instant
(tests/test_cli.py checks `sys.modules`). Help is click's plain layout: it wraps to the terminal
and never cuts an option's name, as rich's tables do in 80 columns.
"""

from __future__ import annotations

import importlib
import pkgutil

import typer

app = typer.Typer(
    name="pollux",
    help="Criteria-based LLM-as-a-Judge evaluation in Russian (POLLUX judges).",
    invoke_without_command=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def help_when_alone(ctx: typer.Context) -> None:
    """A command group's callback part: the group alone (`pollux criteria`) prints its help and
    succeeds, instead of click's usage error (exit 2). Needs `invoke_without_command=True`."""
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit()


def _print_version(value: bool) -> None:
    """Eager: runs while the options are parsed, before click asks for a command."""
    if value:
        from pollux import __version__

        typer.echo(__version__)
        raise typer.Exit()


def _register_verbs() -> None:
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module.name.startswith("_"):  # __main__ and private helpers
            continue
        mod = importlib.import_module(f"{__name__}.{module.name}")
        register = getattr(mod, "register", None)
        if register is not None:
            register(app)


@app.callback()
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", help="Print the pollux version and exit.",
                                 is_eager=True, callback=_print_version),
) -> None:
    """Criteria-based LLM-as-a-Judge evaluation in Russian (POLLUX judges)."""
    help_when_alone(ctx)  # `pollux` alone: its help, exit 0


_register_verbs()


def main() -> None:
    app()
