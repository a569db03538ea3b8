"""Fault tolerance: a SIGKILLed worker costs seconds, not the visibility timeout, and loses nothing.

Workers here consume a queue of their own with a short lease, so the orphan sweep of the
next worker finds the lost job within seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import graphspec
import runtime
from worker.recovery import sweep
from worker.store import encode_tensors

from .conftest import ROOT, run_worker
from .promise import assert_as_if_uninterrupted

pytestmark = pytest.mark.faults

SEED = ROOT / "examples" / "logistic_regression.json"
DATA = ROOT / "examples" / "data" / "seed_data.json"
SPEC = {"optimizer": {"name": "sgd", "lr": 0.5}, "steps": 8000, "batch_size": 16, "report_every": 1,
        "checkpoint_every": 500, "seed": 3}


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _stored_seed_job(store, spec):
    graph, data = graphspec.load(SEED), runtime.load_tensors(DATA)
    job_id, _ = store.create_job("tenant-a", store.put_graph("tenant-a", graph), spec, encode_tensors(data))
    return graph, data, job_id


def _send(celery_app, store, queue, job_id):
    """As the API does: send, then clear the outbox entry (else the sweep resends the job later)."""
    celery_app.send_task("chainrule.train", args=[job_id], queue=queue)
    store.mark_sent(job_id)


def test_a_killed_worker_costs_seconds_and_the_job_ends_as_if_uninterrupted(store, celery_app, fault_env, tmp_path):
    queue, env = fault_env
    graph, data, job_id = _stored_seed_job(store, SPEC)

    with run_worker(celery_app, env, queue=queue, hostname=f"faults-a-{job_id}@localhost",
                    log_path=tmp_path / "a.log") as first:
        _send(celery_app, store, queue, job_id)
        _wait(lambda: int(store.get_job(job_id).step) > 1500, 60, "the job to pass its first checkpoints")
        os.killpg(first.proc.pid, signal.SIGKILL)  # the whole worker, not just a pool child
        first.proc.wait(10)
    assert store.get_job(job_id).state == "running"  # nobody told Redis: the job is orphaned
    killed_at = time.monotonic()

    with run_worker(celery_app, env, queue=queue, hostname=f"faults-b-{job_id}@localhost",
                    log_path=tmp_path / "b.log"):
        job = _wait(lambda: (j := store.get_job(job_id)).state in ("succeeded", "failed") and j, 90,
                    "the job to finish on the second worker")
    recovered_in = time.monotonic() - killed_at
    assert job.state == "succeeded", job
    assert job.attempts == 2
    assert recovered_in < 60  # the visibility timeout is hours; the lease makes it seconds

    assert_as_if_uninterrupted(store, job_id, graph, data, SPEC)


def test_a_job_that_keeps_losing_its_worker_is_failed_as_poison(store, celery_app, settings):
    graph_id = store.put_graph("tenant-a", graphspec.load(SEED))
    job_id, _ = store.create_job("tenant-a", graph_id, SPEC, b"")
    store.transition(job_id, ["queued"], "running", worker="gone@nowhere")
    store._r.hset(store.job_key(job_id), "attempts", settings.max_attempts)  # its lease is gone too
    assert (job_id, "failed") in sweep(store, celery_app)
    job = store.get_job(job_id)
    assert job.state == "failed" and job.error.type == "PoisonJob"
    assert f"{settings.max_attempts} times" in job.error.message
    assert job_id not in [j.decode() for j in store._r.smembers(f"{settings.namespace}:active")]


def test_only_one_sweeper_requeues_an_orphan(store, celery_app, settings):
    graph_id = store.put_graph("tenant-a", graphspec.load(SEED))
    job_id, _ = store.create_job("tenant-a", graph_id, SPEC, b"")
    store.transition(job_id, ["queued"], "running", worker="gone@nowhere")
    store._r.hset(store.job_key(job_id), "attempts", 1)
    sent = []
    fake = type("Celery", (), {"send_task": lambda self, *a, **k: sent.append((a, k))})()
    first, second = sweep(store, fake), sweep(store, fake)
    assert (job_id, "requeued") in first and (job_id, "requeued") not in second
    assert len([s for s in sent if s[1]["args"] == [job_id]]) == 1
    assert store.get_job(job_id).state == "queued"
    store.transition(job_id, ["queued"], "cancelled")


def test_a_live_trainer_is_not_an_orphan(store, celery_app):
    graph_id = store.put_graph("tenant-a", graphspec.load(SEED))
    job_id, _ = store.create_job("tenant-a", graph_id, SPEC, b"")
    store.transition(job_id, ["queued"], "running", worker="alive@here")
    assert store.acquire_lease(job_id, "token")
    try:
        assert job_id not in store.orphans()
        assert all(j != job_id for j, _ in sweep(store, celery_app))
    finally:
        store.release_lease(job_id, "token")
        store.transition(job_id, ["running"], "cancelled")


def test_sigterm_hands_the_running_job_back_and_loses_no_work(store, celery_app, fault_env, tmp_path):
    queue, env = fault_env
    spec = {**SPEC, "steps": 16000, "report_every": 2}
    graph, data, job_id = _stored_seed_job(store, spec)

    with run_worker(celery_app, env, queue=queue, hostname=f"faults-c-{job_id}@localhost",
                    log_path=tmp_path / "c.log") as first:
        _send(celery_app, store, queue, job_id)
        _wait(lambda: int(store.get_job(job_id).step) > 1500, 60, "the job to be well under way")
        first.proc.send_signal(signal.SIGTERM)  # a rolling deploy: warm shutdown
        stopped = time.monotonic()
        first.proc.wait(20)
        assert time.monotonic() - stopped < 10, "the worker should hand the job back promptly, not finish it"
    job = store.get_job(job_id)
    assert job.state == "queued", job  # handed back, not running, not lost
    handed_back_at = job.step
    assert 1500 < handed_back_at < spec["steps"]

    with run_worker(celery_app, env, queue=queue, hostname=f"faults-d-{job_id}@localhost",
                    log_path=tmp_path / "d.log"):
        job = _wait(lambda: (j := store.get_job(job_id)).state in ("succeeded", "failed") and j, 90,
                    "the job to finish on the next worker")
    assert job.state == "succeeded", job
    assert job.attempts == 1  # a graceful hand-back is not a lost attempt
    assert_as_if_uninterrupted(store, job_id, graph, data, spec, every=2)


# A consumer that takes one message from the queue the way a Celery worker does (kombu, prefetch
# 1, late ack) and is SIGKILLed on delivery: a worker that died between taking a job and starting it.
_DIES_ON_DELIVERY = r'''
import os, signal, kombu
from worker.settings import Settings
from worker.celery_app import make_celery
settings = Settings()
connection = make_celery(settings).connection_for_read()
channel = connection.channel()
channel.basic_qos(0, 1, False)
queue = kombu.Queue(settings.queue, kombu.Exchange(settings.queue, "direct"), routing_key=settings.queue)
def die(body, message):
    os.kill(os.getpid(), signal.SIGKILL)
with kombu.Consumer(channel, queues=[queue], callbacks=[die], accept=["json"]):
    print("consuming", flush=True)
    connection.drain_events(timeout=30)
'''


def test_a_job_taken_by_a_worker_that_died_before_starting_it_is_sent_again(store, celery_app, fault_env, tmp_path):
    """Its message sits in kombu's unacked set for the visibility timeout (hours) while the
    job stays queued with no lease and in no index: the sweep finds it there and resends it."""
    queue, env = fault_env
    env = {**env, "CHAINRULE_UNSENT_GRACE_S": "1"}
    spec = {**SPEC, "steps": 300}
    graph, data, job_id = _stored_seed_job(store, spec)
    dying = subprocess.Popen([sys.executable, "-c", _DIES_ON_DELIVERY], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             start_new_session=True)
    try:
        assert dying.stdout.readline().strip() == b"consuming"
        _send(celery_app, store, queue, job_id)
        assert dying.wait(30) == -signal.SIGKILL
    finally:
        if dying.poll() is None:
            os.killpg(dying.pid, signal.SIGKILL)
            dying.wait(10)
        dying.stdout.close()
    assert store.get_job(job_id).state == "queued" and store._r.hlen(f"{store.ns}:celery:unacked") >= 1

    with run_worker(celery_app, env, queue=queue, hostname=f"faults-rescue-{job_id}@localhost",
                    log_path=tmp_path / "rescue.log") as worker:
        job = _wait(lambda: (j := store.get_job(job_id)).state in ("succeeded", "failed") and j, 30,
                    "the stranded job to be sent again and trained")
        assert f"job {job_id}: taken by a worker that died before starting it, sent again" in worker.log()
    assert job.attempts == 1
    assert_as_if_uninterrupted(store, job_id, graph, data, spec)
