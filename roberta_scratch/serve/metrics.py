"""The server's Prometheus metrics, through prometheus_client.

With --workers N every worker process writes its values to PROMETHEUS_MULTIPROC_DIR (the
command makes one), and /metrics in any worker reports the sum over all of them.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
INPUT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768)


class Metrics:
    """Every series the server keeps; `render()` is the /metrics body."""

    def __init__(self):
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        # Multiprocess values live in files, not in a registry; a private registry otherwise,
        # so that two servers in one process (the tests) never share a series.
        self.registry = CollectorRegistry()
        reg = None if self.multiprocess else self.registry
        self.requests = Counter(
            "roberta_requests", "HTTP requests answered, by route and status", ["route", "status"], registry=reg
        )
        self.latency = Histogram(
            "roberta_request_duration_seconds",
            "Time from a request's arrival to its answer",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.queue_time = Histogram(
            "roberta_queue_duration_seconds",
            "Time an input waited for its batch",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.batch_time = Histogram(
            "roberta_batch_duration_seconds", "Model time of one batch", buckets=LATENCY_BUCKETS, registry=reg
        )
        self.batch_inputs = Histogram(
            "roberta_batch_inputs", "Inputs in one batch", buckets=INPUT_BUCKETS, registry=reg
        )
        self.batch_tokens = Histogram(
            "roberta_batch_tokens", "Tokens (padding excluded) in one batch", buckets=TOKEN_BUCKETS, registry=reg
        )
        self.queue_depth = Gauge(
            "roberta_queue_depth", "Inputs waiting for a batch", multiprocess_mode="livesum", registry=reg
        )
        self.in_flight = Gauge(
            "roberta_requests_in_flight", "Requests being answered", multiprocess_mode="livesum", registry=reg
        )
        self.inputs = Counter("roberta_inputs", "Inputs run through the model, by route", ["route"], registry=reg)
        self.tokens = Counter(
            "roberta_tokens", "Tokens (padding excluded) run through the model, by route", ["route"], registry=reg
        )
        if self.multiprocess:
            multiprocess.MultiProcessCollector(self.registry)

    def observe_batch(self, items: list, seconds: float) -> None:
        tokens = sum(i.tokens for i in items)
        route = items[0].route
        self.batch_time.observe(seconds)
        self.batch_inputs.observe(len(items))
        self.batch_tokens.observe(tokens)
        self.inputs.labels(route).inc(len(items))
        self.tokens.labels(route).inc(tokens)
        for i in items:
            self.queue_time.observe(i.queue_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
