"""The Celery task: a thin shell around worker.jobs.run_job."""

from __future__ import annotations

from .celery_app import app
from .jobs import run_job
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
