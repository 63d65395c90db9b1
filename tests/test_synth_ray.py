"""`pollux synth` on a local Ray cluster with an LLM reply that is not valid text (a lone surrogate):
the run goes on and stores it repaired and marked, as the local mode does (docs/synth.md); and a
worker error on Ray reaches the user with its cause, as it does locally. Real processes: the fake
OpenAI-compatible server (tests/synth_fakes.py) and the session's Ray cluster (tests/test_executor_ray.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pollux.executor import ExecutorError, ExecutorOptions, Row, map_batches
from pollux.synth import executor_options, load_config, run, status
from pollux.synth.store import Store
from synth_fakes import FakeServer
from test_executor_ray import ray_cluster  # noqa: F401 — the session's one Ray cluster
from test_synth import write_config

pytestmark = pytest.mark.slow  # a Ray cluster start and actor pools

LONE_SURROGATE = json.dumps("Задание \ud800 без пары")  # as the server's JSON carries it


@pytest.mark.parametrize("where", ["local", "ray"])
def test_a_reply_with_a_lone_surrogate_is_stored_repaired_locally_and_on_ray(
        ray_cluster: None, tmp_path: Path, where: str) -> None:  # noqa: F811
    """Issue 23 item 16: on Ray the actor's result encoding raised UnicodeEncodeError and the run died."""
    with FakeServer("--reply", LONE_SURROGATE) as server:
        config = load_config(write_config(tmp_path, "", url=server.url))
        options = executor_options(config, ray="auto" if where == "ray" else None, workers=1)
        result = run(config, ["instructions"], options=options)
    assert result["instructions"]["new"] == 3 and status(config)["tables"]["instructions"] == 3
    with Store(config.db_path) as store:
        rows = store.rows("instructions")
    assert all(r["instruction"] == "Задание \ufffd без пары" for r in rows)
    assert all(r["invalid_text"].startswith("invalid text") for r in rows)


class SurrogateWorker:
    """A worker whose result rows cannot be encoded as UTF-8 (a factory that does not repair text)."""

    def __call__(self):
        return lambda batch: [{"key": r["key"], "text": "\ud800"} for r in batch]


def test_a_worker_error_on_ray_names_its_cause(ray_cluster: None) -> None:  # noqa: F811
    """Issue 23 item 16: the Ray failure named no cause; UnicodeEncodeError appeared nowhere."""
    options = ExecutorOptions(ray="auto", workers=1, batch_size=2, max_retries=0)
    with pytest.raises(ExecutorError) as err:
        list(map_batches([{"key": f"k{i}"} for i in range(3)], SurrogateWorker(), options))
    message = str(err.value)
    # the batch named is whichever failed first (Ray may run either first): a key of the failing rows
    assert re.search(r"batch starting at key 'k[02]'", message), message
    assert "UnicodeEncodeError" in message and "surrogate" in message, message


def test_locally_the_same_worker_error_names_its_cause() -> None:
    rows: list[Row] = [{"key": "k0"}]
    result = list(map_batches(rows, SurrogateWorker(), ExecutorOptions(workers=1, max_retries=0)))
    assert result == [[{"key": "k0", "text": "\ud800"}]]  # local threads pass Python objects: nothing to encode
