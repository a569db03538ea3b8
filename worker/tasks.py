"""The Celery task: a thin shell around worker.jobs.run_job."""

from __future__ import annotations

from celery.signals import worker_ready, worker_shutdown, worker_shutting_down

from .celery_app import app
from .dispatch import TRAIN_TASK
from .jobs import run_job
from .recovery import Sweeper, advance_sweep, send_job
from .settings import get_settings
from .store import TERMINAL, JobStore

_store: JobStore | None = None


def store() -> JobStore:
    global _store
    if _store is None:
        _store = JobStore.connect(get_settings())
    return _store


@app.task(name=TRAIN_TASK, bind=True)
def train_job(self, job_id: str) -> str:
    s = store()
    outcome = run_job(s, job_id, worker=self.request.hostname or "worker",
                      requeue=lambda job: send_job(app, s, job_id, job))
    job = s.get_job(job_id)
    sweep_id = (job.spec.get("sweep") or {}).get("id") if job is not None else None
    if sweep_id and job.state in TERMINAL:  # a trial's end: its sweep launches the next (worker/sweeps.py)
        advance_sweep(s, app, sweep_id)
    return outcome


_sweeper: Sweeper | None = None


@worker_ready.connect
def _start_sweeping(sender=None, **_: object) -> None:
    """Each worker sweeps for orphaned jobs at start and then periodically (worker/recovery.py)."""
    global _sweeper
    _sweeper = Sweeper(store(), app)
    store().flag_worker_stopping(sender.hostname, False)  # a restarted node starts fresh
    _sweeper.start()


@worker_shutting_down.connect
def _hand_back_running_jobs(sender=None, **_: object) -> None:
    """Warm shutdown (SIGTERM): tell this node's running jobs, in whatever pool process they
    run, to checkpoint and go back to the queue instead of running to the end."""
    store().flag_worker_stopping(sender)


@worker_shutdown.connect
def _stop_sweeping(sender=None, **_: object) -> None:
    if _sweeper is not None:
        _sweeper.stopping.set()
