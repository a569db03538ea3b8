"""Recovering jobs whose worker died, in seconds rather than after Celery's visibility timeout,
and jobs whose task message was never sent.

A trainer holds its job's lease (SET NX PX, renewed while it trains). A job still marked
``running`` whose lease has expired was lost with its worker (SIGKILL, OOM, a lost host).
Every worker sweeps at start and every ``sweep_interval_s``: such a job is moved back to
``queued`` and sent again (it resumes from its checkpoint), or failed as a poison job after
``max_attempts``. The moves are compare-and-set transitions that only happen while no lease
exists, so when several workers sweep at once exactly one requeues a given job, and never
one whose trainer came back.

Every path that queues a job (the API, a warm-shutdown hand-back, this sweep) puts it in
the outbox in the same atomic step and takes it out once the message is in the broker. An
entry older than ``unsent_grace_s`` means its sender died in between (an API process killed
after storing the job): the sweep sends it. A message sent twice is harmless: the second
delivery finds the job leased or finished.
"""

from __future__ import annotations

import logging
import threading
import time

from celery import Celery

from . import dispatch, metrics, sweeps
from .jobs import REDIS_DOWN
from .records import JobRecord
from .store import JobStore, now

log = logging.getLogger(__name__)


def send_job(celery: Celery, store: JobStore, job_id: str, job: JobRecord) -> None:
    """(Re)send a stored job's task with its own time limit."""
    dispatch.send_job(celery, store.settings, job_id, job.time_limit_s or store.settings.default_time_limit_s)


def advance_sweep(store: JobStore, celery: Celery, sweep_id: str) -> str | None:
    """Advance a hyperparameter sweep (worker/sweeps.py), sending the trials it launches; errors
    are logged, never raised: the next trial's end or recovery round advances it again."""
    try:
        return sweeps.advance(store, sweep_id, celery)
    except REDIS_DOWN:
        raise
    except Exception:  # noqa: BLE001 - a bug here must not stop the job that called it
        log.exception("advancing sweep %s failed", sweep_id)
        return None


def sweep(store: JobStore, celery: Celery, *, orphans: bool = True) -> list[tuple[str, str]]:
    """Requeue or fail every orphaned job (unless ``orphans`` is False) and send every job
    stuck in the outbox; returns (job id, what was done)."""
    done = []
    for job_id in store.orphans() if orphans else ():
        job = store.get_job(job_id)
        if job is None:
            store.forget_active(job_id)
            continue
        if job.state == "cancelling":
            if store.transition(job_id, ["cancelling"], "cancelled", token="!", finished=repr(now()))[0]:
                done.append((job_id, "cancelled"))
            continue
        attempts = job.attempts
        if attempts >= store.settings.max_attempts:
            ok, _ = store.transition(
                job_id, ["running"], "failed", token="!", finished=repr(now()), error_type="PoisonJob",
                error_message=f"the job's worker was lost {attempts} times (max_attempts "
                              f"{store.settings.max_attempts}); last worker: {job.worker or '?'}")
            if ok:
                done.append((job_id, "failed"))
            continue
        # Queued and in the outbox first, then the message: a sweeper killed in between
        # leaves the outbox entry, and a later sweep sends it.
        if store.transition(job_id, ["running"], "queued", token="!", enqueue=True, requeued=repr(now()))[0]:
            send_job(celery, store, job_id, job)
            store.mark_sent(job_id)
            done.append((job_id, "requeued"))
    # Reading the whole queue is not for every sweep: one worker in the deployment does it
    # at most once per grace period.
    if store.claim_once(f"lost-message-audit:{store.settings.queue}", store.settings.unsent_grace_s):
        for job_id in store.lost_messages(store.settings.unsent_grace_s):
            job = store.get_job(job_id)
            if job is not None:
                send_job(celery, store, job_id, job)
                done.append((job_id, "resent"))
    for job_id in store.stranded_deliveries(store.settings.unsent_grace_s):
        job = store.get_job(job_id)
        if job is not None:
            send_job(celery, store, job_id, job)
            done.append((job_id, "rescued"))
    for job_id, claimed_at in store.claim_unsent(store.settings.unsent_grace_s):
        job = store.get_job(job_id)
        if job is not None and job.state == "queued":
            send_job(celery, store, job_id, job)
            done.append((job_id, "sent"))
        store.mark_sent(job_id, claimed_at)
    # Index and ledger entries of jobs and graphs that expired: one worker, every so often.
    if store.claim_once("prune-tenants", max(store.settings.sweep_interval_s, min(60.0, store.settings.retention_s / 4))):
        store.prune_tenants()
    for sweep_id in store.active_sweeps():  # hyperparameter sweeps a dead worker left between trials
        advance_sweep(store, celery, sweep_id)
    for job_id, what in done:
        log.warning("job %s: %s by the sweep", job_id, {
            "requeued": "worker lost, requeued", "sent": "never sent, sent",
            "rescued": "taken by a worker that died before starting it, sent again",
            "resent": "its message was lost by the broker, sent again"}.get(what, what))
    return done


class Sweeper(threading.Thread):
    """Runs :func:`sweep` every ``sweep_interval_s`` in a worker's main process.

    After Redis was unreachable, orphans are left alone for one lease TTL: every lease may
    have lapsed during the outage while its trainer is alive and waiting to write; given
    that time it takes its lease back and carries on, instead of being requeued and
    resuming from its last checkpoint."""

    def __init__(self, store: JobStore, celery: Celery, node: str | None = None):
        super().__init__(name="chainrule-orphan-sweep", daemon=True)
        self.store, self.celery = store, celery
        self.metrics = metrics.configure(store, node) if node else None
        self.stopping = threading.Event()
        self.redis_was_down = False
        self.orphans_after = 0.0

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                if self.redis_was_down:
                    self.store.ping()
                    self.redis_was_down = False
                    self.orphans_after = time.monotonic() + self.store.settings.lease_ttl_s
                done = sweep(self.store, self.celery, orphans=time.monotonic() >= self.orphans_after)
                requeued = sum(1 for _, what in done if what == "requeued")
                if requeued and self.metrics is not None:
                    self.metrics.event("requeued", requeued)
            except REDIS_DOWN as exc:  # the next round retries
                self.redis_was_down = True
                log.warning("orphan sweep skipped: redis unavailable (%s)", exc)
            except Exception:  # noqa: BLE001 - a bug here must not stop future sweeps
                log.exception("orphan sweep failed")
            self.stopping.wait(self.store.settings.sweep_interval_s)
