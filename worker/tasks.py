"""The Celery task: a thin shell around worker.jobs.run_job."""

from __future__ import annotations

from celery.signals import worker_ready, worker_shutdown

from .celery_app import app
from .jobs import run_job
from .recovery import Sweeper
from .settings import get_settings
from .store import JobStore

_store: JobStore | None = None


def store() -> JobStore:
    global _store
    if _store is None:
        _store = JobStore.connect(get_settings())
    return _store


@app.task(name="chainrule.train", bind=True)
def train_job(self, job_id: str) -> str:
    return run_job(store(), job_id, worker=self.request.hostname or "worker")


_sweeper: Sweeper | None = None


@worker_ready.connect
def _start_sweeping(sender=None, **_: object) -> None:
    """Each worker sweeps for orphaned jobs at start and then periodically (worker/recovery.py)."""
    global _sweeper
    _sweeper = Sweeper(JobStore.connect(get_settings()), app)
    _sweeper.start()


@worker_shutdown.connect
def _stop_sweeping(sender=None, **_: object) -> None:
    if _sweeper is not None:
        _sweeper.stopping.set()
