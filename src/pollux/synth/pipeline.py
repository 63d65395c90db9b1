"""Running stages: one, several or all, in order, with one store and one executor setting.

    from pollux.synth import load_config, run
    result = run(load_config("synth.toml"))                       # every stage
    result = run(config, ["answers", "annotate"])                 # just these
    result = run(config, options=ExecutorOptions(ray="auto"))     # the same stages on Ray Data

Each stage's result (counts) is returned and also kept in the store's meta table, so `status`
and the export's summary can show it later.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from pollux.executor import ExecutorOptions
from pollux.progress import StageProgress
from pollux.synth import stages
from pollux.synth.config import SynthConfig, check_stages
from pollux.synth.export import run_export
from pollux.synth.store import TABLES, Store
from pollux.taxonomy import load_catalog

STAGES = ("instructions", "filter", "criteria", "answers", "annotate", "sample", "export")

_RUNNERS: dict[str, Callable[[stages.StageContext], dict[str, Any]]] = {
    "instructions": stages.run_instructions,
    "filter": stages.run_filter,
    "criteria": stages.run_criteria,
    "answers": stages.run_answers,
    "annotate": stages.run_annotate,
    "sample": stages.run_sample,
    "export": lambda ctx: run_export(ctx.store, ctx.config.run_dir / "export"),
}


def executor_options(config: SynthConfig, **overrides: Any) -> ExecutorOptions:
    """The config's [executor] settings with the given overrides (e.g. ray="auto", workers=4)."""
    base = ExecutorOptions(workers=config.executor.workers, batch_size=config.executor.batch_size,
                           max_retries=config.executor.max_retries)
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def run(config: SynthConfig, which: Sequence[str] | None = None, *, options: ExecutorOptions | None = None,
        taxonomy: str | Path | None = None, progress: bool = False) -> dict[str, Any]:
    """Run the given stages (default: all) in pipeline order; returns each stage's counts."""
    which = list(which or STAGES)
    unknown = [s for s in which if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}: expected one of {', '.join(STAGES)}")
    check_stages(config, which)  # sections and API keys: errors before any request, not mid-run
    catalog_path = taxonomy or config.taxonomy
    catalog = load_catalog(catalog_path) if catalog_path else load_catalog()
    stages.select_leaves(config, catalog)  # an unknown task leaf is an error before anything runs
    stages.check_held_out(config, catalog)
    results: dict[str, Any] = {}
    with Store(config.db_path) as store:
        ctx = stages.StageContext(config=config, store=store, catalog=catalog,
                                  options=options or executor_options(config),
                                  progress=StageProgress(enabled=progress))
        for name in STAGES:
            if name in which:
                results[name] = _RUNNERS[name](ctx)
                store.set_meta(f"result:{name}", results[name])
    return results


def status(config: SynthConfig) -> dict[str, Any]:
    """Rows per table and the last result of each stage, read from the store (nothing is run)."""
    if not config.db_path.is_file():
        return {"run_dir": str(config.run_dir), "store": None, "tables": {}, "stages": {}}
    with Store(config.db_path) as store:
        return {"run_dir": str(config.run_dir), "store": str(config.db_path),
                "tables": {t: store.count(t) for t in TABLES},
                "stages": {s: store.get_meta(f"result:{s}") for s in STAGES if store.get_meta(f"result:{s}")}}
