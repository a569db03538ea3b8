"""Sending a training job to Celery: the task's name and the one function every sender calls
(the API on submit, a worker handing a job back at shutdown, the sweep re-sending one)."""

from __future__ import annotations

from celery import Celery

from .settings import TRAIN_TASK, Settings
# Celery's hard time limit is the job's own limit plus this: the soft limit fails the job
# cleanly first (TimeLimitExceeded, steps kept), the hard one only stops a stuck process.
HARD_LIMIT_GRACE_S = 30


def send_job(celery: Celery, settings: Settings, job_id: str, time_limit_s: int, queue: str | None = None) -> None:
    """Put job ``job_id``'s task on the training queue (``settings.queue`` unless ``queue`` says
    another: a sweep's trials go where the sweep was started) with its time limit."""
    celery.send_task(TRAIN_TASK, args=[job_id], queue=queue or settings.queue, soft_time_limit=time_limit_s,
                     time_limit=time_limit_s + HARD_LIMIT_GRACE_S)
