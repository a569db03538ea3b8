"""Fencing and the outbox: a trainer writes only while it holds its job's lease, and a job
stored but never sent (its sender died in between) is sent by the sweep.

These drive JobStore and the sweep directly against the real Redis; the end-to-end tests
run real worker processes.
"""

from __future__ import annotations

import re
import time
import uuid

import pytest

import graphspec
import runtime
from worker.recovery import sweep
from worker.store import JobStore, LeaseLost, StepRecord, encode_tensors

from .conftest import ROOT, run_worker, wait_for, wait_for_state

pytestmark = pytest.mark.faults

SEED = ROOT / "examples" / "logistic_regression.json"
DATA = ROOT / "examples" / "data" / "seed_data.json"
SPEC = {"optimizer": {"name": "sgd", "lr": 0.5}, "steps": 300, "batch_size": 16, "seed": 1}


class RecordingCelery:
    """Stands in for the Celery app in direct sweep() calls: records what would be sent."""

    def __init__(self):
        self.sent: list[str] = []

    def send_task(self, name, args, **options):
        self.sent.append(args[0])


def _running_job(store, token: str) -> str:
    """A stored job as its trainer left it after starting: running, its lease held by ``token``."""
    graph_id = store.put_graph("tenant-a", graphspec.load(SEED))
    job_id, _ = store.create_job("tenant-a", graph_id, SPEC, encode_tensors(runtime.load_tensors(DATA)))
    store.mark_sent(job_id)
    assert store.acquire_lease(job_id, token)
    assert store.transition(job_id, ["queued"], "running", token=token, worker="w@test", lease=token)[0]
    return job_id


def _record(step: int) -> StepRecord:
    return StepRecord(step=step, loss=0.5, grad_norms={}, time=time.time())


@pytest.fixture
def cleanup(store):
    jobs: list[str] = []
    yield jobs
    for job_id in jobs:
        store._r.delete(store.job_key(job_id, "lease"))
        store.request_cancel(job_id)
        store.transition(job_id, ["cancelling", "running", "queued"], "cancelled")


def test_a_trainer_that_lost_its_lease_cannot_write(store, cleanup):
    job_id = _running_job(store, "first")
    cleanup.append(job_id)
    store._r.set(store.job_key(job_id, "lease"), "second")  # another trainer holds the job now

    with pytest.raises(LeaseLost):
        store.report_steps(job_id, "first", [_record(1)], {"step": 1})
    with pytest.raises(LeaseLost):
        store.put_blob(job_id, "checkpoint", b"stale", token="first")
    with pytest.raises(LeaseLost):
        store.transition(job_id, ["running"], "succeeded", token="first")
    assert not store.renew_lease(job_id, "first")

    assert store.read_steps(job_id) == []
    assert store.get_blob(job_id, "checkpoint") is None
    assert store.get_job(job_id).state == "running"
    # ... while the holder writes as usual.
    assert store.report_steps(job_id, "second", [_record(1)], {"step": 1}) == ([], "running")


def test_a_lapsed_lease_is_taken_back_by_its_own_trainer_only(store, cleanup):
    """Redis restarted or the trainer paused past the TTL, and nobody took over: the trainer
    carries on (no rollback to its checkpoint); any other token is still refused."""
    job_id = _running_job(store, "mine")
    cleanup.append(job_id)
    store._r.delete(store.job_key(job_id, "lease"))

    with pytest.raises(LeaseLost):
        store.report_steps(job_id, "someone-else", [_record(1)], {"step": 1})
    assert store.report_steps(job_id, "mine", [_record(1)], {"step": 1}) == ([], "running")
    assert store._r.get(store.job_key(job_id, "lease")) == b"mine"
    assert 0 < store._r.pttl(store.job_key(job_id, "lease")) <= store.settings.lease_ttl_s * 1000


def test_the_sweep_leaves_a_job_whose_trainer_came_back(store, cleanup):
    job_id = _running_job(store, "back")
    cleanup.append(job_id)
    store._r.delete(store.job_key(job_id, "lease"))
    assert job_id in store.orphans()
    # The trainer renews between the sweep's scan and its move: the move must not happen.
    assert store.renew_lease(job_id, "back")
    assert not store.transition(job_id, ["running"], "queued", token="!", enqueue=True)[0]
    celery = RecordingCelery()
    assert all(j != job_id for j, _ in sweep(store, celery))
    assert job_id not in celery.sent
    assert store.get_job(job_id).state == "running"


@pytest.mark.parametrize("state,attempts", [("running", 1), ("running", None), ("cancelling", 1)],
                         ids=["requeue", "poison", "cancel"])
def test_the_sweep_does_not_move_a_job_whose_lease_came_back_after_it_listed_orphans(
        store, settings, cleanup, state, attempts):
    """The race the "!" token exists for, through sweep() itself: the job is listed as an
    orphan (no lease), then its trainer takes its lapsed lease back before the sweep's move.
    Whichever move the sweep would make (requeue, fail as poison, finish a cancel), it must
    not happen: the trainer carries on with its job."""
    job_id = _running_job(store, "back")
    cleanup.append(job_id)
    if state == "cancelling":
        assert store.request_cancel(job_id) == "cancelling"
    store._r.hset(store.job_key(job_id), "attempts", settings.max_attempts if attempts is None else attempts)
    store._r.delete(store.job_key(job_id, "lease"))  # lapsed: the trainer paused past its TTL

    class TrainerBackRightAfterTheListing(JobStore):
        def orphans(self):
            listed = super().orphans()
            assert job_id in listed
            assert self.renew_lease(job_id, "back")  # the trainer takes its lease back, now
            return [job_id]  # only this job: other tests' jobs are none of this sweep's business

    celery = RecordingCelery()
    done = sweep(TrainerBackRightAfterTheListing(store._r, settings), celery)

    assert [what for j, what in done if j == job_id] == []
    assert job_id not in celery.sent
    job = store.get_job(job_id)
    assert job.state == state and job.error is None and job.finished is None, job
    assert store._r.get(store.job_key(job_id, "lease")) == b"back"
    assert store.outbox_entry(job_id) is None  # not queued to be sent again ...
    assert store._r.zscore(store.queued_key, job_id) is None  # ... nor listed as queued
    assert store._r.sismember(store.active_key, job_id)
    # ... and the trainer's writes are still accepted.
    assert store.report_steps(job_id, "back", [_record(1)], {"step": 1}) == ([], state)


def test_once_the_sweep_requeued_a_job_its_old_trainer_is_fenced_off(store, cleanup):
    job_id = _running_job(store, "old")
    cleanup.append(job_id)
    store._r.delete(store.job_key(job_id, "lease"))
    celery = RecordingCelery()
    assert (job_id, "requeued") in sweep(store, celery)
    assert celery.sent.count(job_id) == 1
    assert store.outbox_entry(job_id) is None  # sent, so out of the outbox
    assert store.get_job(job_id).state == "queued"

    assert not store.renew_lease(job_id, "old")
    with pytest.raises(LeaseLost):
        store.report_steps(job_id, "old", [_record(7)], {"step": 7})
    assert store.read_steps(job_id) == []


def test_outbox_claims_are_exclusive_and_mark_sent_is_conditional(store, cleanup):
    graph_id = store.put_graph("tenant-a", graphspec.load(SEED))
    job_id, _ = store.create_job("tenant-a", graph_id, SPEC, b"")
    cleanup.append(job_id)
    created = store.outbox_entry(job_id)
    assert created is not None  # a new job waits in the outbox until its message is sent

    claimed = dict(store.claim_unsent(0.0))
    assert job_id in claimed
    assert job_id not in dict(store.claim_unsent(5.0))  # claimed just now: not due again for a grace period
    store.mark_sent(job_id, created)  # a stale score (the API's) must not drop the sweeper's claim
    assert store.outbox_entry(job_id) == pytest.approx(claimed[job_id])
    store.mark_sent(job_id, claimed[job_id])
    assert store.outbox_entry(job_id) is None


def test_a_cancelled_queued_job_leaves_the_outbox(store, cleanup):
    graph_id = store.put_graph("tenant-a", graphspec.load(SEED))
    job_id, _ = store.create_job("tenant-a", graph_id, SPEC, b"")
    assert store.request_cancel(job_id) == "cancelled"
    assert store.outbox_entry(job_id) is None


def test_a_job_stored_but_never_sent_is_sent_by_the_sweep(store, celery_app, env, settings, tmp_path):
    """The API stored the job and died before sending its message: a worker's sweep sends it."""
    queue = f"{settings.queue}.outbox-{uuid.uuid4().hex[:6]}"
    worker_env = {**env, "CHAINRULE_QUEUE": queue, "CHAINRULE_UNSENT_GRACE_S": "1",
                  "CHAINRULE_SWEEP_INTERVAL_S": "0.5"}
    graph_id = store.put_graph("tenant-a", graphspec.load(SEED))
    job_id, _ = store.create_job("tenant-a", graph_id, SPEC, encode_tensors(runtime.load_tensors(DATA)))
    with run_worker(celery_app, worker_env, queue=queue, hostname=f"outbox-{job_id}@localhost",
                    log_path=tmp_path / "outbox.log") as worker:
        job, _ = wait_for_state(store, job_id, {"succeeded", "failed", "cancelled"}, timeout=30)
        assert f"job {job_id}: never sent, sent by the sweep" in worker.log()
    assert job.state == "succeeded", job
    assert job.attempts == 1
    assert [r.step for r in store.read_steps(job_id, limit=1000)] == list(range(1, SPEC["steps"] + 1))
    assert store.outbox_entry(job_id) is None


def test_a_worker_whose_lease_is_stolen_stops_writing(store, celery_app, env, settings, tmp_path):
    """End to end: a running trainer finds its lease held by another and stops at once,
    without failing the job or writing another step."""
    queue = f"{settings.queue}.fence-{uuid.uuid4().hex[:6]}"
    worker_env = {**env, "CHAINRULE_QUEUE": queue}
    graph_id = store.put_graph("tenant-a", graphspec.load(SEED))
    spec = {**SPEC, "steps": 200_000}
    job_id, _ = store.create_job("tenant-a", graph_id, spec, encode_tensors(runtime.load_tensors(DATA)))
    try:
        with run_worker(celery_app, worker_env, queue=queue, hostname=f"fence-{job_id}@localhost",
                        log_path=tmp_path / "fence.log") as worker:
            task = celery_app.send_task("chainrule.train", args=[job_id], queue=queue)
            store.mark_sent(job_id)
            wait_for(lambda: int(store.get_job(job_id).step) > 100, timeout=30,
                     message="the job to be running")
            store._r.set(store.job_key(job_id, "lease"), "thief", px=60_000)
            wait_for(lambda: f"job {job_id}: lease lost" in worker.log(), timeout=10,
                     message="the trainer to notice")
            written = len(store.read_steps(job_id, limit=300_000))
            progress = store.get_job(job_id).step
            # Not a fixed pause: the task itself has returned, so whatever the trainer was
            # going to write after the loss, it has written by now.
            wait_for(lambda: f"Task chainrule.train[{task.id}] succeeded" in worker.log(), timeout=10,
                     message="the task to return")
            assert re.search(rf"Task chainrule\.train\[{task.id}\] succeeded in \S+: 'lease lost'", worker.log())
            assert len(store.read_steps(job_id, limit=300_000)) == written  # nothing after the loss
            job = store.get_job(job_id)
            assert job.step == progress
            assert job.state == "running" and job.error is None  # the job is not the trainer's to fail
            assert store._r.get(store.job_key(job_id, "lease")) == b"thief"  # and it did not release another's lease
    finally:
        store._r.delete(store.job_key(job_id, "lease"))
        store.transition(job_id, ["running", "queued", "cancelling"], "cancelled")


def test_a_cancel_landing_just_before_success_leaves_no_result(settings):
    """The result and the move to succeeded are one step: a cancel that wins the race by a
    hair ends the job cancelled with no result stored (found by test_fault_matrix.py)."""
    from worker.jobs import run_job
    from worker.store import JobStore

    class CancelAtTheLastMoment(JobStore):
        def transition(self, job_id, allowed, to, **kwargs):
            if to == "succeeded":
                assert self.request_cancel(job_id) == "cancelling"  # the user's POST /cancel lands here
            return super().transition(job_id, allowed, to, **kwargs)

    store = CancelAtTheLastMoment.connect(settings)
    try:
        graph_id = store.put_graph("tenant-a", graphspec.load(SEED))
        job_id, _ = store.create_job("tenant-a", graph_id, SPEC, encode_tensors(runtime.load_tensors(DATA)))
        store.mark_sent(job_id)
        assert run_job(store, job_id, worker="inline@test") == "cancelled"
        job = store.get_job(job_id)
        assert job.state == "cancelled" and job.step == SPEC["steps"]
        assert store.get_blob(job_id, "result") is None
    finally:
        store._r.close()


def test_a_job_whose_message_the_broker_lost_is_sent_again(store, celery_app, env, settings, tmp_path):
    """Sent and out of the outbox, but the message is gone (kombu pops with BRPOP and records
    the delivery only afterwards: a worker killed in between loses it). The audit finds a
    queued job whose message is neither in the queue nor unacked, and sends it again."""
    queue = f"{settings.queue}.lost-{uuid.uuid4().hex[:6]}"
    worker_env = {**env, "CHAINRULE_QUEUE": queue, "CHAINRULE_UNSENT_GRACE_S": "1",
                  "CHAINRULE_SWEEP_INTERVAL_S": "0.5"}
    graph_id = store.put_graph("tenant-a", graphspec.load(SEED))
    job_id, _ = store.create_job("tenant-a", graph_id, SPEC, encode_tensors(runtime.load_tensors(DATA)))
    store.mark_sent(job_id)  # as if sent: the message is then lost
    with run_worker(celery_app, worker_env, queue=queue, hostname=f"lost-{job_id}@localhost",
                    log_path=tmp_path / "lost.log") as worker:
        job, _ = wait_for_state(store, job_id, {"succeeded", "failed", "cancelled"}, timeout=30)
        assert f"job {job_id}: its message was lost by the broker, sent again" in worker.log()
    assert job.state == "succeeded" and job.attempts == 1
    assert [r.step for r in store.read_steps(job_id, limit=1000)] == list(range(1, SPEC["steps"] + 1))
    assert store._r.zscore(store.queued_key, job_id) is None


def test_the_audit_sorts_a_backlog_by_where_each_message_is(store, settings):
    """lost_messages over a backlog (read in pipelined batches): only the queued jobs whose
    message is nowhere are lost, each once; a job whose hash is gone leaves the queued index."""
    from worker.celery_app import make_celery
    from worker.dispatch import send_job

    own = JobStore(store._r, settings.model_copy(update={"namespace": f"{settings.namespace}-audit-{uuid.uuid4().hex[:6]}"}))
    celery = make_celery(own.settings)  # its keys in that namespace too: no worker reads them
    try:
        graph_id = own.put_graph("tenant-a", graphspec.load(SEED))
        data = encode_tensors(runtime.load_tensors(DATA))
        jobs = {kind: [own.create_job("tenant-a", graph_id, SPEC, data)[0] for _ in range(count)]
                for kind, count in [("lost", 7), ("outbox", 2), ("leased", 2), ("in queue", 2), ("gone", 2)]}
        for kind, ids in jobs.items():
            for job_id in ids:
                if kind != "outbox":
                    own.mark_sent(job_id)
                if kind == "leased":
                    assert own.acquire_lease(job_id, "t")
                elif kind == "in queue":  # a real message in the queue's list, no worker reads it
                    send_job(celery, own.settings, job_id, 60)
                elif kind == "gone":
                    own._r.delete(own.job_key(job_id))
        assert own._r.llen(f"{own.ns}:celery:{own.settings.queue}") == 2  # the messages are where the audit looks
        time.sleep(0.3)
        assert sorted(own.lost_messages(0.2)) == sorted(jobs["lost"])
        assert own.lost_messages(0.2) == []  # re-dated: not again within the grace period
        indexed = {raw.decode() for raw in own._r.zrange(own.queued_key, 0, -1)}
        assert not indexed & set(jobs["gone"]) and set(jobs["lost"]) <= indexed
        # the batching itself: replies stay with their items across batch boundaries
        assert own._pipelined(["a", "b", "c", "d", "e"], lambda pipe, k: (pipe.echo(k), pipe.echo(k * 2)),
                              batch=2) == [(k.encode(), k.encode() * 2) for k in "abcde"]
    finally:
        celery.close()
        own.delete_namespace()


def test_a_start_counts_its_attempt_in_the_same_move(store, cleanup):
    """The attempt is counted by the move to running itself: a trainer killed right after it is
    still one attempt (the fault matrix once caught a kill between a separate move and count)."""
    graph_id = store.put_graph("tenant-a", graphspec.load(SEED))
    job_id, _ = store.create_job("tenant-a", graph_id, SPEC, encode_tensors(runtime.load_tensors(DATA)))
    cleanup.append(job_id)
    store.mark_sent(job_id)
    assert store.acquire_lease(job_id, "t1")
    assert store.transition(job_id, ["queued"], "running", token="t1", attempt=True, lease="t1")[0]
    assert store.get_job(job_id).attempts == 1
    # a refused move counts nothing
    assert not store.transition(job_id, ["queued"], "running", token="t1", attempt=True)[0]
    assert store.get_job(job_id).attempts == 1
