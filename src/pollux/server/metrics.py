"""Prometheus metrics of a `pollux serve` process.

Each app gets its own registry (not the global one), so several apps in one process — tests,
embedding — never collide on metric names.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from pollux.verdicts import Verdict

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self, depth: Callable[[], float], in_flight: Callable[[], float]):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "pollux_requests", "HTTP requests by endpoint and status code", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "pollux_request_latency_seconds", "HTTP request latency", ["endpoint"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.queue_depth = Gauge("pollux_queue_depth", "Items waiting for the engine", registry=r)
        self.queue_depth.set_function(depth)
        self.in_flight = Gauge("pollux_engine_items_in_flight", "Items inside the engine now", registry=r)
        self.in_flight.set_function(in_flight)
        self.batch_size = Histogram(
            "pollux_batch_size", "Items per engine call", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "pollux_batch_seconds", "Seconds per engine call", buckets=LATENCY_BUCKETS, registry=r
        )
        self.judgements = Counter(
            "pollux_judgements", "Judgements made, by outcome (valid, invalid, error)", ["outcome"], registry=r
        )
        self.tokens = Counter("pollux_tokens", "Tokens processed, by kind (prompt, completion)", ["kind"],
                              registry=r)
        self.rejected = Counter("pollux_rejected", "Requests refused, by reason", ["reason"], registry=r)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def observe_verdicts(self, verdicts: list[Verdict]) -> None:
        for v in verdicts:
            outcome = "error" if v.error else ("valid" if v.valid else "invalid")
            self.judgements.labels(outcome).inc()
            self.tokens.labels("prompt").inc(v.prompt_tokens)
            self.tokens.labels("completion").inc(v.completion_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)
