"""Prometheus metrics of one API process (`GET /metrics`), in a registry of its own so two
apps in one process (tests) do not collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ApiMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("recsys_http_requests", "HTTP requests", ["endpoint", "status"],
                                registry=r)  # fmt: skip
        self.latency = Histogram("recsys_http_request_seconds", "HTTP latency",
                                 ["endpoint", "status"], buckets=LATENCY_BUCKETS,
                                 registry=r)  # fmt: skip
        self.ranking = Histogram("recsys_ranking_seconds", "model time per ranked request",
                                 buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.batch_size = Histogram("recsys_microbatch_size", "requests per micro-batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)  # fmt: skip
        self.fallbacks = Counter("recsys_fallbacks", "answers in the retrieval order",
                                 ["endpoint", "reason"], registry=r)  # fmt: skip
        self.queue_depth = Gauge("recsys_queue_depth", "requests waiting for the model",
                                 registry=r)  # fmt: skip
        self.model = Gauge("recsys_served_model", "1 for the served model version",
                           ["model", "version"], registry=r)  # fmt: skip
        self.reloads = Counter("recsys_model_reloads", "hot reloads of the ranker", registry=r)
        self.impressions_dropped = Counter(
            "recsys_impressions_dropped", "impressions lost (buffer full)", registry=r
        )
        self.impressions_pending = Gauge(
            "recsys_impressions_pending", "impressions waiting for the database", registry=r
        )

    def serving(self, model: str, version: str | None) -> None:
        self.model.clear()
        self.model.labels(model=model, version=version or "").set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
