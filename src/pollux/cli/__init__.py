"""The `pollux` command line: each verb is a thin shell over the Python API.

Every module in this package that defines `register(app)` adds its verb(s); nothing else needs
editing to add one. Results go to stdout as JSON / JSON lines, progress and logs to stderr, and
failures exit non-zero.
"""

from __future__ import annotations

import importlib
import pkgutil

import typer

app = typer.Typer(
    name="pollux",
    help="Criteria-based LLM-as-a-Judge evaluation in Russian (POLLUX judges).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


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
    version: bool = typer.Option(False, "--version", help="Print the pollux version and exit."),
) -> None:
    if version:
        from pollux import __version__

        typer.echo(__version__)
        raise typer.Exit()


_register_verbs()


def main() -> None:
    app()
