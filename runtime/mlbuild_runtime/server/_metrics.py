"""Prometheus metrics of one app, in its own registry (two apps in one process do not clash).

mlbuild_requests_total{route,status}        counter   every HTTP request
mlbuild_request_duration_seconds{route}     histogram latency as the server saw it
mlbuild_requests_in_flight                  gauge     requests being handled now
mlbuild_worker_restarts_total{cause}        counter   crash | timeout | load_failure
mlbuild_workers_ready / mlbuild_workers     gauges    ready workers / configured workers
mlbuild_http_limit_rejections_total{limit}  counter   connections/requests refused by an HTTP limit
                                                      (max_header_size, max_header_count,
                                                      header_timeout, body_timeout, max_connections,
                                                      send_timeout, max_body_bytes_in_flight)
mlbuild_body_bytes_in_flight                gauge     request-body bytes taken from the budget now
mlbuild_body_bytes_in_flight_limit          gauge     the budget (MLBUILD_MAX_BODY_BYTES_IN_FLIGHT)
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

__all__ = ["Metrics"]

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _PoolCollector:
    """Read at scrape time from the pool, so the pool needs no reference to the metrics."""

    def __init__(self, pool) -> None:
        self._pool = pool

    def collect(self):
        restarts = CounterMetricFamily(
            "mlbuild_worker_restarts", "Worker restarts by cause", labels=["cause"]
        )
        for cause in ("crash", "timeout", "load_failure"):
            restarts.add_metric([cause], self._pool.restarts.get(cause, 0))
        yield restarts
        report = self._pool.health()
        yield GaugeMetricFamily("mlbuild_workers_ready", "Workers ready to serve", value=report.ready_workers)
        yield GaugeMetricFamily("mlbuild_workers", "Workers configured", value=report.total_workers)


class _BudgetCollector:
    """The body budget's use, read at scrape time: nothing on the request path."""

    def __init__(self, budget) -> None:
        self._budget = budget

    def collect(self):
        budget = self._budget
        yield GaugeMetricFamily(
            "mlbuild_body_bytes_in_flight", "Request-body bytes taken from the budget", value=budget.in_flight
        )
        yield GaugeMetricFamily("mlbuild_body_bytes_in_flight_limit", "The request-body budget", value=budget.capacity)


BODY_BUDGET_LIMIT = "max_body_bytes_in_flight"  # its {limit} label in the rejections counter


class Metrics:
    def __init__(self, pool) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "mlbuild_requests", "HTTP requests by route and status", ["route", "status"], registry=self.registry
        )
        self._latency = Histogram(
            "mlbuild_request_duration_seconds", "HTTP request latency", ["route"],
            buckets=_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.in_flight = Gauge("mlbuild_requests_in_flight", "Requests being handled", registry=self.registry)
        self.registry.register(_PoolCollector(pool))
        # Incremented by the HTTP protocol (_http_limits), outside any request; cli.py wires it.
        self.http_limit_rejections = Counter(
            "mlbuild_http_limit_rejections", "Connections or requests refused by an HTTP limit", ["limit"],
            registry=self.registry,
        )
        # labels() takes a lock and builds a key each call; cache the children (the label sets
        # are bounded: routes are a fixed set, statuses a few dozen).
        self._request_children: dict[tuple[str, int], object] = {}
        self._latency_children: dict[str, object] = {}

    def observe(self, route: str, status: int, seconds: float) -> None:
        child = self._request_children.get((route, status))
        if child is None:
            child = self._request_children[(route, status)] = self._requests.labels(route, str(status))
        child.inc()
        hist = self._latency_children.get(route)
        if hist is None:
            hist = self._latency_children[route] = self._latency.labels(route)
        hist.observe(seconds)

    def http_limit_hit(self, limit: str) -> None:
        """Count one refusal by the HTTP limit named ``limit`` (a setting name)."""
        self.http_limit_rejections.labels(limit).inc()

    def watch_body_budget(self, budget) -> None:
        """Export ``budget`` (a _budget.BodyBudget) as gauges and count its refusals under
        ``limit="max_body_bytes_in_flight"``."""
        self.registry.register(_BudgetCollector(budget))
        counter = self.http_limit_rejections.labels(BODY_BUDGET_LIMIT)
        budget.on_refused = counter.inc
