"""`pollux criteria`: look at the criteria taxonomy from the shell (JSON lines on stdout).

    pollux criteria list [--group critical]          every criterion entry
    pollux criteria get repeats                      one criterion (by id or name)
    pollux criteria tasks                            every leaf of the task tree with its criteria ids
    pollux criteria show "Стайл-трансфер" "Перепиши в стиле (задаём писателя)"   one task's criteria set

`--metainfo PATH` reads the official criteria.json + tasks.json instead of the built-in catalog.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NoReturn

import typer

from pollux.cli import help_when_alone
from pollux.taxonomy import Catalog, TaxonomyError, load_catalog

criteria_app = typer.Typer(
    help="List criteria and tasks of the POLLUX taxonomy, or show one task's criteria set (JSON lines).",
    invoke_without_command=True,
    rich_markup_mode=None,
)
criteria_app.callback()(help_when_alone)

_METAINFO = typer.Option(None, "--metainfo", help="Folder with the official criteria.json + tasks.json "
                                                   "(default: the built-in catalog with pollux's own rubrics).")


def _emit(row: dict[str, Any]) -> None:
    typer.echo(json.dumps(row, ensure_ascii=False))


def _catalog(metainfo: Path | None) -> Catalog:
    try:
        return load_catalog(metainfo)
    except TaxonomyError as e:
        _fail(e)


def _fail(error: Exception) -> NoReturn:
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(code=2)


@criteria_app.command("list")
def list_criteria(
    group: str | None = typer.Option(None, "--group", help="Only this group: critical, general, subjective, "
                                                           "domain or task."),
    no_rubrics: bool = typer.Option(False, "--no-rubrics", help="Leave the rubric texts out."),
    metainfo: Path | None = _METAINFO,
) -> None:
    """Every criterion entry, one JSON object per line."""
    catalog = _catalog(metainfo)
    try:
        rows = catalog.in_group(group) if group else list(catalog.criteria.values())
    except TaxonomyError as e:
        _fail(e)
    for c in rows:
        row = c.to_dict()
        if no_rubrics:
            row.pop("rubrics")
        _emit(row)


@criteria_app.command("get")
def get_criterion(
    name_or_id: str = typer.Argument(..., metavar="NAME_OR_ID", help="Criterion id (repeats, correct_answer__5) or name."),
    metainfo: Path | None = _METAINFO,
) -> None:
    """One criterion with its rubric."""
    catalog = _catalog(metainfo)
    found = catalog.find(name_or_id)
    if found is None:
        try:
            catalog.criterion(name_or_id)  # raises with close matches
        except TaxonomyError as e:
            _fail(e)
    else:
        _emit(found.to_dict())


@criteria_app.command("tasks")
def list_tasks(metainfo: Path | None = _METAINFO) -> None:
    """Every leaf of the task tree (group, task_type, task_subtype, task_subsubtype, criteria ids)."""
    for leaf in _catalog(metainfo).leaves():
        _emit(leaf.to_dict())


@criteria_app.command("show")
def show_task(
    task_type: str = typer.Argument(..., metavar="TASK_TYPE", help="Task type, as in the dataset's task_type (Russian name)."),
    task_subtype: str | None = typer.Argument(None, metavar="TASK_SUBTYPE", help="task_subtype, when the task has subtypes."),
    task_subsubtype: str | None = typer.Argument(None, metavar="TASK_SUBSUBTYPE", help="task_subsubtype, when the subtype has them."),
    metainfo: Path | None = _METAINFO,
) -> None:
    """One task's ordered criteria set, one criterion per line."""
    catalog = _catalog(metainfo)
    try:
        criteria = catalog.criteria_for_task(task_type, task_subtype, task_subsubtype)
    except TaxonomyError as e:
        _fail(e)
    for c in criteria:
        _emit(c.to_dict())


def register(app: typer.Typer) -> None:
    app.add_typer(criteria_app, name="criteria")
