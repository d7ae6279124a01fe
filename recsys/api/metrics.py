"""Prometheus metrics of one API process (`GET /metrics`), in a registry of its own so two
apps in one process (tests) do not collide."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


@dataclass(frozen=True)
class EndpointTraffic:
    """One endpoint since the process started, as the dashboard shows it."""

    endpoint: str
    requests: int
    errors: int  # 5xx answers
    fallbacks: int  # answers in the retrieval order (deadline or model error)
    p50_s: float | None  # upper bounds of the histogram buckets holding the quantiles
    p95_s: float | None

    @property
    def fallback_rate(self) -> float:
        return self.fallbacks / self.requests if self.requests else 0.0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


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

    def traffic(self) -> list[EndpointTraffic]:
        """Requests, error and fallback counts and latency quantiles per endpoint."""
        requests: dict[str, int] = {}
        errors: dict[str, int] = {}
        buckets: dict[str, dict[float, float]] = {}
        for sample in _samples(self.requests, "_total"):
            endpoint, n = sample.labels["endpoint"], int(sample.value)
            requests[endpoint] = requests.get(endpoint, 0) + n
            if sample.labels["status"].startswith("5"):
                errors[endpoint] = errors.get(endpoint, 0) + n
        for sample in _samples(self.latency, "_bucket"):
            per = buckets.setdefault(sample.labels["endpoint"], {})
            le = float(sample.labels["le"])
            per[le] = per.get(le, 0.0) + sample.value
        fallbacks: dict[str, int] = {}
        for sample in _samples(self.fallbacks, "_total"):
            endpoint = sample.labels["endpoint"]
            fallbacks[endpoint] = fallbacks.get(endpoint, 0) + int(sample.value)
        return [
            EndpointTraffic(endpoint, n, errors.get(endpoint, 0), fallbacks.get(endpoint, 0),
                            _quantile(buckets.get(endpoint, {}), 0.5),
                            _quantile(buckets.get(endpoint, {}), 0.95))
            for endpoint, n in sorted(requests.items())
        ]  # fmt: skip


def _samples(metric: Counter | Histogram, suffix: str) -> list:
    return [s for family in metric.collect() for s in family.samples if s.name.endswith(suffix)]


def _quantile(cumulative: dict[float, float], q: float) -> float | None:
    """The smallest bucket bound with at least a share q of the observations below it."""
    if not cumulative:
        return None
    total = cumulative[max(cumulative)]
    for le in sorted(cumulative):
        if total and cumulative[le] >= q * total:
            return le
    return None
