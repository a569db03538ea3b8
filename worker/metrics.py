"""A worker's Prometheus metrics, correct under Celery's prefork pool: every pool process adds to
one Redis hash per worker node (``{ns}:stats:worker:<node>``), and the node's main process serves
them on its own port (``chainrule worker --metrics-port``, ``CHAINRULE_WORKER_METRICS_PORT``).

* ``chainrule_worker_jobs_total{event}`` — started, succeeded, failed, cancelled, handed_back
  (a warm shutdown), lease_lost (another trainer or the recovery loop took the job: its writes
  were fenced off) and requeued (orphans this node's recovery loop put back);
* ``chainrule_worker_steps_total`` — training steps reported (added once per report batch, never
  per step: ``rate()`` of it is steps per second);
* ``chainrule_worker_job_duration_seconds``, ``chainrule_worker_queue_wait_seconds``,
  ``chainrule_worker_checkpoint_write_seconds`` — histograms.

Nothing is recorded unless the node serves metrics; labels are fixed names only.
"""

from __future__ import annotations

import math
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

EVENTS = ("started", "succeeded", "failed", "cancelled", "handed_back", "lease_lost", "requeued")
HISTOGRAMS = {
    "job_duration_seconds": ("time from a job's (last) start to its end", (0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800, 3600)),
    "queue_wait_seconds": ("time from a job's submission (or requeue) to its start",
                           (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300)),
    "checkpoint_write_seconds": ("time to write one checkpoint to Redis", (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5)),
}

_recorder: "WorkerMetrics | None" = None


class WorkerMetrics:
    def __init__(self, store: Any, node: str):
        self.store, self.node = store, node
        self.key = f"{store.settings.namespace}:stats:worker:{node}"

    def event(self, name: str, n: int = 1) -> None:
        self.store.add_stats(self.key, {name: n})

    def steps(self, n: int) -> None:
        if n > 0:
            self.store.add_stats(self.key, {"steps": n})

    def observe(self, histogram: str, seconds: float) -> None:
        if not math.isfinite(seconds) or seconds < 0:
            return
        bounds = HISTOGRAMS[histogram][1]
        bucket = next((f"{b:g}" for b in bounds if seconds <= b), "+Inf")
        self.store.add_stats(self.key, {f"{histogram}:count": 1, f"{histogram}:le:{bucket}": 1},
                             floats={f"{histogram}:sum": seconds})


def configure(store: Any, node: str) -> WorkerMetrics | None:
    """This process's recorder for ``node`` (None when the node serves no metrics)."""
    global _recorder
    if store.settings.worker_metrics_port is None:
        return None
    if _recorder is None or _recorder.node != node:
        _recorder = WorkerMetrics(store, node)
    return _recorder


def recorder() -> WorkerMetrics | None:
    return _recorder


def use(metrics: WorkerMetrics | None) -> None:
    """Set (or clear) this process's recorder directly (bench/reporting_overhead.py)."""
    global _recorder
    _recorder = metrics


class _Collector:
    def __init__(self, store: Any, node: str):
        self.store, self.key = store, WorkerMetrics(store, node).key

    def collect(self):
        raw = self.store.read_stats(self.key)
        jobs = CounterMetricFamily("chainrule_worker_jobs", "Jobs by what happened to them on this worker",
                                   labels=["event"])
        for event in EVENTS:
            jobs.add_metric([event], raw.get(event, 0))
        yield jobs
        steps = CounterMetricFamily("chainrule_worker_steps", "Training steps reported by this worker")
        steps.add_metric([], raw.get("steps", 0))
        yield steps
        for name, (doc, bounds) in HISTOGRAMS.items():
            cumulative, buckets = 0.0, []
            for b in [f"{b:g}" for b in bounds] + ["+Inf"]:
                cumulative += raw.get(f"{name}:le:{b}", 0)
                buckets.append((b, cumulative))
            family = HistogramMetricFamily(f"chainrule_worker_{name}", doc)
            family.add_metric([], buckets, raw.get(f"{name}:sum", 0.0))
            yield family


def serve(store: Any, node: str) -> None:
    """Serve this node's metrics on ``worker_metrics_host:worker_metrics_port`` (a daemon thread)."""
    registry = CollectorRegistry()
    registry.register(_Collector(store, node))
    start_http_server(store.settings.worker_metrics_port, addr=store.settings.worker_metrics_host, registry=registry)
