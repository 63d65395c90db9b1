"""The Ray Data executor (work in progress: the local executor is the default)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from pollux.executor import ExecutorError, ExecutorOptions, Row, WorkerFactory


def map_batches_ray(rows: Iterable[Row], make_worker: WorkerFactory, options: ExecutorOptions) -> Iterator[list[Row]]:
    """`pollux.executor.map_batches` on a Ray cluster."""
    raise ExecutorError("the Ray executor is not available yet; run without --ray")
