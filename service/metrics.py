"""Prometheus metrics of the API (``GET /metrics``, or a port of its own): requests by route
template, method and status, their latency, and — read from Redis when scraped, so every API
process reports the same numbers — jobs submitted and ended by state, jobs queued and running now,
and the Celery workers that answered a ping (cached, so a scrape never waits on a ping twice in
``WORKERS_CACHE_S``). Labels are bounded: route templates (``/v1/jobs/{job_id}``, never an id), HTTP
methods and status codes; no tenant or job id is ever a label.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
WORKERS_CACHE_S = 15.0
PING_TIMEOUT_S = 1.0
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _JobsCollector:
    """Read at scrape time: the job counters and gauges from Redis, workers from a cached ping."""

    def __init__(self, store: Callable[[], Any], celery: Callable[[], Any]):
        self.store, self.celery = store, celery
        self._workers: tuple[float, int] | None = None
        self._lock = threading.Lock()

    def workers(self) -> int:
        with self._lock:
            if self._workers is None or time.monotonic() - self._workers[0] > WORKERS_CACHE_S:
                try:
                    alive = len(self.celery().control.ping(timeout=PING_TIMEOUT_S) or [])
                except Exception:  # noqa: BLE001 - a scrape reports what it can: no answer is 0
                    alive = 0
                self._workers = (time.monotonic(), alive)
            return self._workers[1]

    def collect(self):
        try:
            counts = self.store().job_counts()
        except Exception:  # noqa: BLE001 - Redis down: the request metrics are still worth a scrape
            counts = None
        if counts is not None:
            submitted = CounterMetricFamily("chainrule_jobs_submitted", "Jobs accepted by POST /v1/jobs (and sweeps' "
                                                                        "trials)")
            submitted.add_metric([], counts["submitted"])
            yield submitted
            ended = CounterMetricFamily("chainrule_jobs_ended", "Jobs that ended, by final state", labels=["state"])
            for state in ("succeeded", "failed", "cancelled"):
                ended.add_metric([state], counts[state])
            yield ended
            now = GaugeMetricFamily("chainrule_jobs", "Jobs queued (waiting for a worker) and running now",
                                    labels=["state"])
            now.add_metric(["queued"], counts["queued"])
            now.add_metric(["running"], counts["running"])
            yield now
        workers = GaugeMetricFamily("chainrule_workers_alive", "Celery workers that answered a ping (cached "
                                                               f"{WORKERS_CACHE_S:g} s)")
        workers.add_metric([], self.workers())
        yield workers


class ApiMetrics:
    """One API process's registry (its own: tests build many apps in one process)."""

    def __init__(self, store: Callable[[], Any], celery: Callable[[], Any]):
        self.registry = CollectorRegistry()
        self.requests = Counter("chainrule_http_requests", "HTTP requests by route template, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("chainrule_http_request_duration_seconds", "Time to the end of the response "
                                 "(a stream: its whole life)", ["route", "method"], buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self.registry.register(_JobsCollector(store, celery))
        self._server = None

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def serve(self, host: str, port: int) -> None:
        """Serve /metrics on a port of its own (``CHAINRULE_METRICS_PORT``), in a daemon thread."""
        self._server = start_http_server(port, addr=host, registry=self.registry)

    def stop(self) -> None:
        if self._server is not None:
            server, thread = self._server
            server.shutdown()
            server.server_close()
            thread.join(5)
            self._server = None


class MetricsMiddleware:
    """Pure ASGI (a streamed response is never buffered): counts each HTTP request by the route
    template that matched it (``unmatched`` for a 404 outside any route) once it has finished."""

    def __init__(self, app, metrics: ApiMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = {"code": 500}

        async def sending(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)
        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "?")
            self.metrics.requests.labels(template, method, str(status["code"])).inc()
            self.metrics.latency.labels(template, method).observe(time.perf_counter() - started)
