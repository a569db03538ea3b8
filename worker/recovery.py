"""Recovering jobs whose worker died, in seconds rather than after Celery's visibility timeout.

A trainer holds its job's lease (SET NX PX, renewed while it trains). A job still marked
``running`` whose lease has expired was lost with its worker (SIGKILL, OOM, a lost host).
Every worker sweeps at start and every ``sweep_interval_s``: such a job is moved back to
``queued`` and sent again (it resumes from its checkpoint), or failed as a poison job after
``max_attempts``. The moves are compare-and-set transitions, so when several workers sweep
at once exactly one requeues a given job.
"""

from __future__ import annotations

import json
import logging
import threading

from celery import Celery

from .store import JobStore, now

log = logging.getLogger(__name__)
TASK_NAME = "chainrule.train"


def send_job(celery: Celery, store: JobStore, job_id: str, job: dict[str, str]) -> None:
    """(Re)send a stored job's task with its own time limit."""
    limit = int(json.loads(job.get("spec", "{}")).get("time_limit_s") or store.settings.default_time_limit_s)
    celery.send_task(TASK_NAME, args=[job_id], queue=store.settings.queue, soft_time_limit=limit,
                     time_limit=limit + 30)


def sweep(store: JobStore, celery: Celery) -> list[tuple[str, str]]:
    """Requeue or fail every orphaned job; returns (job id, what was done)."""
    done = []
    for job_id in store.orphans():
        job = store.get_job(job_id)
        if job is None:
            store.r.srem(f"{store.ns}:active", job_id)
            continue
        if job["state"] == "cancelling":
            if store.transition(job_id, ["cancelling"], "cancelled", finished=repr(now()))[0]:
                done.append((job_id, "cancelled"))
            continue
        attempts = int(job.get("attempts", 0))
        if attempts >= store.settings.max_attempts:
            ok, _ = store.transition(
                job_id, ["running"], "failed", finished=repr(now()), error_type="PoisonJob",
                error_message=f"the job's worker was lost {attempts} times (max_attempts "
                              f"{store.settings.max_attempts}); last worker: {job.get('worker', '?')}")
            if ok:
                done.append((job_id, "failed"))
            continue
        # Queued first, then the message: a sweeper killed in between leaves the job in the
        # index, and the next sweep sends it; a duplicate message finds the job leased or done.
        if store.transition(job_id, ["running", "queued"], "queued", requeued=repr(now()))[0]:
            send_job(celery, store, job_id, job)
            done.append((job_id, "requeued"))
    for job_id, what in done:
        log.warning("orphaned job %s (its worker was lost): %s", job_id, what)
    return done


class Sweeper(threading.Thread):
    """Runs :func:`sweep` every ``sweep_interval_s`` in a worker's main process."""

    def __init__(self, store: JobStore, celery: Celery):
        super().__init__(name="chainrule-orphan-sweep", daemon=True)
        self.store, self.celery = store, celery
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                sweep(self.store, self.celery)
            except Exception:  # noqa: BLE001 - Redis down now: the next round retries
                log.exception("orphan sweep failed")
            self.stopping.wait(self.store.settings.sweep_interval_s)
