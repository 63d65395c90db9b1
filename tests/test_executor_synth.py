"""`pollux synth` on a local Ray cluster gives the same export as the local mode — and a run started
locally continues on Ray to the same export. Real processes throughout: engineer A's fake
OpenAI-compatible servers (tests/synth_fakes.py), a tiny pollux checkpoint as an answer model loaded
inside Ray actors, and the session's Ray cluster on 127.0.0.1 (tests/test_executor_ray.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pollux.synth import executor_options, load_config, run
from synth_fakes import FakeServer
from test_executor_ray import ray_cluster  # noqa: F401 — the session's one Ray cluster
from test_synth_e2e import write_config

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

LLM_STAGES = ["instructions", "answers", "annotate"]  # the stages whose model calls go through the executor


@pytest.fixture(scope="module")
def servers() -> Any:
    with FakeServer() as gen, FakeServer("--delay", "0.01") as ans:
        yield gen.url, ans.url


@pytest.fixture(scope="module")
def local_run(servers: tuple[str, str], tiny_judge_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The whole pipeline in the local mode (worker threads), the reference."""
    config = load_config(write_config(tmp_path_factory.mktemp("local"), *servers, tiny_judge_path))
    return {"result": run(config), "export": config.run_dir / "export" / "train.parquet"}


def _on_ray(config: Any) -> Any:
    return executor_options(config, ray="auto", workers=2)


def test_the_pipeline_on_ray_gives_the_same_export_as_local(
        ray_cluster: None, local_run: dict, servers: tuple[str, str], tiny_judge_path: Path, tmp_path: Path) -> None:  # noqa: F811
    config = load_config(write_config(tmp_path / "ray", *servers, tiny_judge_path))
    result = run(config, options=_on_ray(config))
    for stage in [*LLM_STAGES, "sample"]:
        assert result[stage] == local_run["result"][stage], stage
    assert result["sample"]["selected"] > 0
    export = config.run_dir / "export" / "train.parquet"
    assert export.read_bytes() == local_run["export"].read_bytes()


def test_a_run_started_locally_continues_on_ray(
        ray_cluster: None, local_run: dict, servers: tuple[str, str], tiny_judge_path: Path, tmp_path: Path) -> None:  # noqa: F811
    config = load_config(write_config(tmp_path / "mixed", *servers, tiny_judge_path))
    run(config, ["instructions", "filter", "criteria"])  # locally …
    result = run(config, options=_on_ray(config))  # … then every stage again on Ray: only what is missing runs
    assert result["answers"] == local_run["result"]["answers"]
    export = config.run_dir / "export" / "train.parquet"
    assert export.read_bytes() == local_run["export"].read_bytes()
