"""The Celery task: a thin shell around worker.jobs.run_job."""

from __future__ import annotations

import logging

from celery.signals import setup_logging, worker_ready, worker_shutdown, worker_shutting_down

from .celery_app import app
from . import logs, metrics
from .dispatch import TRAIN_TASK
from .jobs import patiently, run_job
from .recovery import Sweeper, advance_sweep, send_job
from .settings import get_settings
from .store import TERMINAL, JobStore

_store: JobStore | None = None
log = logging.getLogger("chainrule.worker")


@setup_logging.connect
def _logging(loglevel=None, **_: object) -> None:
    """Celery leaves logging to us: console or JSON lines (CHAINRULE_LOG_FORMAT, worker/logs.py)."""
    logs.configure(get_settings().log_format, loglevel or "INFO")


def store() -> JobStore:
    global _store
    if _store is None:
        _store = JobStore.connect(get_settings())
    return _store


@app.task(name=TRAIN_TASK, bind=True)
def train_job(self, job_id: str) -> str:
    s = store()
    node = self.request.hostname or "worker"
    recorder = metrics.configure(s, node)
    job = patiently(s, s.get_job, job_id)  # read once: run_job starts from it, its spec names its sweep
    outcome = run_job(s, job_id, worker=node, requeue=lambda job: send_job(app, s, job_id, job), job=job)
    log.info("job %s: %s", job_id, outcome)
    if recorder is not None:
        _record(recorder, outcome, s.get_job(job_id))  # as it ended: its timestamps
    sweep_id = (job.spec.get("sweep") or {}).get("id") if job is not None else None
    if sweep_id and outcome in TERMINAL:  # a trial's end: its sweep launches the next (worker/sweeps.py)
        advance_sweep(s, app, sweep_id)
    return outcome


def _record(recorder: metrics.WorkerMetrics, outcome: str, job) -> None:
    event = {"succeeded": "succeeded", "failed": "failed", "cancelled": "cancelled", "handed back": "handed_back",
             "lease lost": "lease_lost"}.get(outcome)
    if event is None:
        return  # a duplicate or finished delivery: nothing ran here
    recorder.event("started")
    recorder.event(event)
    if job is not None and job.started is not None:
        recorder.observe("queue_wait_seconds", job.started - (job.requeued or job.created or job.started))
        if job.finished is not None and event in ("succeeded", "failed", "cancelled"):
            recorder.observe("job_duration_seconds", job.finished - job.started)


_sweeper: Sweeper | None = None


@worker_ready.connect
def _start_sweeping(sender=None, **_: object) -> None:
    """Each worker sweeps for orphaned jobs at start and then periodically (worker/recovery.py)."""
    global _sweeper
    _sweeper = Sweeper(store(), app, node=sender.hostname)
    store().flag_worker_stopping(sender.hostname, False)  # a restarted node starts fresh
    _sweeper.start()
    if store().settings.worker_metrics_port is not None:
        metrics.serve(store(), sender.hostname)


@worker_shutting_down.connect
def _hand_back_running_jobs(sender=None, **_: object) -> None:
    """Warm shutdown (SIGTERM): tell this node's running jobs, in whatever pool process they
    run, to checkpoint and go back to the queue instead of running to the end."""
    store().flag_worker_stopping(sender)


@worker_shutdown.connect
def _stop_sweeping(sender=None, **_: object) -> None:
    if _sweeper is not None:
        _sweeper.stopping.set()
