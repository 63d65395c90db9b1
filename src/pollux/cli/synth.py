"""`pollux synth`: build a judge's training data from one pipeline config (see docs/synth.md).

    pollux synth run CONFIG                 every stage, in order (resumes: only what is missing)
    pollux synth STAGE CONFIG               one stage: instructions, filter, criteria, answers,
                                            annotate, sample, export
    pollux synth status CONFIG              rows per table and each stage's last counts

`--ray auto|ADDRESS` runs the LLM stages on Ray Data (`--workers` actors, `--cpus-per-worker`,
`--gpus-per-worker`); the store and the keys are the same, so a run started locally continues on a
cluster and back. Progress (rate, ETA) goes to stderr, results as one JSON object to stdout; a bad
config, input or endpoint exits 1 with a message naming what is wrong (what was done stays stored).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from pollux.cli import _options as opt
from pollux.cli import help_when_alone


class _StageGroup(TyperGroup):
    """`pollux synth`, whose stage commands are made when first asked for: their names come from
    `pollux.synth.pipeline`, which imports pandas and scipy, and `pollux --help` must not."""

    def list_commands(self, ctx: Any) -> list[str]:  # ctx: a click context
        self._add_stages()
        return super().list_commands(ctx)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:  # a click command, or None
        self._add_stages()
        return super().get_command(ctx, cmd_name)

    def _add_stages(self) -> None:
        if "run" in self.commands:
            return
        from pollux.synth.pipeline import STAGES

        stages = typer.Typer(rich_markup_mode=None)
        stages.command("run")(_stage_command(None))
        for stage in STAGES:
            stages.command(stage)(_stage_command(stage))
        made = typer.main.get_group(stages)
        for name, command in made.commands.items():
            self.add_command(command, name)


synth_app = typer.Typer(cls=_StageGroup, help="Build a judge's training data: instructions → filter → criteria → "
                        "answers → annotate → sample → export (resumable; local or on Ray Data).",
                        invoke_without_command=True, rich_markup_mode=None)
synth_app.callback()(help_when_alone)

_CONFIG = typer.Argument(..., metavar="CONFIG", help="The pipeline config (TOML), e.g. examples/synth.toml.")


def _options() -> dict[str, Any]:
    return {
        "taxonomy": typer.Option(None, "--taxonomy", help="Folder with the official criteria.json + tasks.json "
                                 "(default: the built-in catalog, or the config's taxonomy.path)."),
        "batch_size": typer.Option(None, "--batch-size", help="Rows per worker batch."),
        "quiet": typer.Option(False, "--quiet", "-q", help="No progress bars."),
    }


def _run(stages: list[str] | None, config: Path, taxonomy: Path | None, ray: str | None, workers: int | None,
         cpus_per_worker: float | None, gpus_per_worker: float | None, batch_size: int | None, quiet: bool) -> None:
    from pollux.executor import ExecutorError
    from pollux.synth import SynthConfigError, SynthError, executor_options, load_config, run
    from pollux.taxonomy import TaxonomyError

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(config)
        options = executor_options(cfg, ray=ray, workers=workers, cpus_per_worker=cpus_per_worker,
                                   gpus_per_worker=gpus_per_worker, batch_size=batch_size)
        result = run(cfg, stages, options=options, taxonomy=taxonomy, progress=not quiet)
    except (SynthConfigError, SynthError, ExecutorError, TaxonomyError, ValueError, OSError) as e:
        typer.echo(f"pollux synth: error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(result, ensure_ascii=False, indent=2))


def _stage_command(stage: str | None) -> Any:
    o = _options()

    def command(
        config: Path = _CONFIG,
        taxonomy: Path | None = o["taxonomy"],
        ray: opt.Ray = None,
        workers: opt.Workers = None,
        cpus_per_worker: opt.CpusPerWorker = None,
        gpus_per_worker: opt.GpusPerWorker = None,
        batch_size: int | None = o["batch_size"],
        quiet: bool = o["quiet"],
    ) -> None:
        _run([stage] if stage else None, config, taxonomy, ray, workers, cpus_per_worker, gpus_per_worker,
             batch_size, quiet)

    command.__doc__ = f"Run the {stage!r} stage only." if stage else "Run every stage, in order."
    return command


def status_command(config: Path = _CONFIG) -> None:
    """Rows per table and each stage's last counts (runs nothing)."""
    from pollux.synth import SynthConfigError, load_config, status

    try:
        result = status(load_config(config))
    except SynthConfigError as e:
        typer.echo(f"pollux synth: error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(result, ensure_ascii=False, indent=2))


synth_app.command("status")(status_command)  # the stages: `_StageGroup`


def register(app: typer.Typer) -> None:
    app.add_typer(synth_app, name="synth")
