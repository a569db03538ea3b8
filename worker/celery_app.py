"""The Celery app: a Redis broker, JSON messages only, late acks, one task at a time per process.

    celery -A worker.celery_app worker --loglevel=INFO      # or: chainrule worker

Job state does not live in Celery: the task carries only a job id, and progress,
results and checkpoints are in the job's Redis keys (worker/store.py), so no result
backend is used and nothing is ever pickled.
"""

from __future__ import annotations

from celery import Celery
from celery.signals import worker_process_init

from . import memory
from .settings import Settings, get_settings


def make_celery(settings: Settings) -> Celery:
    app = Celery("chainrule", broker=settings.redis_url, include=["worker.tasks"])
    transport = {
        # At-least-once: an unacked task comes back after this long. Longer than any job,
        # because a redelivery while the first trainer still runs is possible otherwise.
        "visibility_timeout": settings.visibility_timeout_s,
        # Celery's own keys live under our namespace too: test runs and deployments never collide.
        "global_keyprefix": f"{settings.namespace}:celery:",
    }
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],          # a pickled message is refused, never loaded
        event_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,              # ack after the job, so a crash mid-job redelivers it
        task_reject_on_worker_lost=True,  # a killed pool child requeues its job
        worker_prefetch_multiplier=1,     # a worker holds only the job it runs
        task_default_queue=settings.queue,
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        # task events for Flower and any events receiver (docs/deploy.md); off with CHAINRULE_TASK_EVENTS=false
        worker_send_task_events=settings.task_events,
        task_send_sent_event=settings.task_events,
    )
    return app


app = make_celery(get_settings())

# Each prefork pool child caps its own address space (RLIMIT_AS), so a job over it fails with
# OutOfMemory instead of taking the machine or the worker down (worker/memory.py).
worker_process_init.connect(memory.cap_pool_child, weak=False)
