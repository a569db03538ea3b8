"""Redis restarting under a running stack loses no accepted job.

Each test starts a Redis of its own with AOF on (fsync on every write), a real worker and
the API on it, submits jobs, stops Redis mid-job (SIGTERM: a restart; SIGKILL: a crash),
checks the API answers 503 with Retry-After while it is down, starts it again from its
AOF and checks every job ends as if nothing had happened and the worker reconnected.
The shared Redis of the suite is never restarted.
"""

from __future__ import annotations

import json
import signal
import time
import uuid

import pytest

import graphspec
import runtime
from worker.celery_app import make_celery
from worker.store import JobStore

from .conftest import EXAMPLES, ROOT, run_worker, starlette_test_client, wait_for, wait_for_state
from .promise import assert_as_if_uninterrupted
from .redis_server import EmbeddedRedis

pytestmark = pytest.mark.faults

SEED_DOC = json.loads((EXAMPLES / "logistic_regression.json").read_text())
SEED_DATA = json.loads((EXAMPLES / "data" / "seed_data.json").read_text())
DOWN_S = 3.0  # longer than the lease TTL below: leases lapse while Redis is away


def job_body(steps: int, seed: int) -> dict:
    return {"graph": SEED_DOC, "data": SEED_DATA, "optimizer": {"name": "sgd", "lr": 0.5}, "steps": steps,
            "batch_size": 16, "report_every": 1, "checkpoint_every": 250, "seed": seed}


@pytest.fixture
def durable_stack(settings, env, tmp_path):
    """Redis (AOF) + a worker + the API, all on that Redis; yields (redis, store, api client, worker)."""
    with EmbeddedRedis(appendonly=True) as server:
        own = settings.model_copy(update={"redis_url": server.url, "lease_ttl_s": 2.0, "sweep_interval_s": 0.5,
                                          "unsent_grace_s": 2.0})
        worker_env = {**env, "REDIS_URL": server.url, "CHAINRULE_REDIS_URL": server.url,
                      "CHAINRULE_LEASE_TTL_S": "2", "CHAINRULE_SWEEP_INTERVAL_S": "0.5",
                      "CHAINRULE_UNSENT_GRACE_S": "2"}
        celery = make_celery(own)
        store = JobStore.connect(own)
        from service.app import create_app

        try:
            with run_worker(celery, worker_env, queue=own.queue, hostname=f"restart-{uuid.uuid4().hex[:8]}@localhost",
                            log_path=tmp_path / "worker.log") as worker, \
                    starlette_test_client()(create_app(own)) as client:
                client.headers["Authorization"] = "Bearer key-a"
                yield server, store, client, worker
        finally:
            store._r.close()
            celery.close()


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["restart", "crash"])
def test_redis_going_away_mid_job_loses_no_accepted_job(durable_stack, how):
    server, store, client, worker = durable_stack
    specs = [(4000, 11), (3000, 12), (2000, 13)]
    jobs = []
    for steps, seed in specs:
        resp = client.post("/v1/jobs", json=job_body(steps, seed))
        assert resp.status_code == 202, resp.text
        jobs.append((resp.json()["id"], {"optimizer": {"name": "sgd", "lr": 0.5}, "steps": steps, "batch_size": 16,
                                         "seed": seed}))
    first = jobs[0][0]
    wait_for(lambda: int(store.get_job(first).step) > 600, timeout=30, message="the first job under way")

    server.shutdown(how)
    down_at = time.monotonic()
    # While Redis is away the API says so, with a retry hint: never a 500.
    for method, url, body in [("GET", f"/v1/jobs/{first}", None), ("GET", "/v1/jobs", None),
                              ("POST", "/v1/jobs", job_body(10, 1)), ("GET", f"/v1/jobs/{first}/steps", None)]:
        resp = client.request(method, url, json=body)
        assert resp.status_code == 503, (method, url, resp.status_code, resp.text[:500])
        assert resp.headers["content-type"].startswith("application/problem+json")
        assert int(resp.headers["retry-after"]) > 0
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["redis"] != "ok"
    time.sleep(max(0.0, DOWN_S - (time.monotonic() - down_at)))
    server.restart_after_shutdown()

    graph, data = graphspec.load(ROOT / "examples" / "logistic_regression.json"), runtime.load_tensors(
        EXAMPLES / "data" / "seed_data.json")
    for job_id, spec in jobs:
        job, _ = wait_for_state(store, job_id, {"succeeded", "failed", "cancelled"}, timeout=90)
        assert job.state == "succeeded", (job, worker.log()[-3000:])
        assert_as_if_uninterrupted(store, job_id, graph, data, spec)
    assert store._r.zcard(store.outbox_key) == 0 and store._r.scard(store.active_key) == 0
    # Every lease lapsed during the outage; the trainer took its own back and carried on
    # (the sweep waits a lease TTL after an outage), so no job went back to its checkpoint.
    assert all(store.get_job(job_id).attempts == 1 for job_id, _ in jobs)
    assert "lease lost" not in worker.log()

    # The worker reconnected on its own: the API is ready again and a new job runs.
    assert worker.alive()
    wait_for(lambda: client.get("/readyz").status_code == 200, timeout=30, message="the API to be ready again")
    resp = client.post("/v1/jobs", json=job_body(50, 5))
    assert resp.status_code == 202, resp.text
    job, _ = wait_for_state(store, resp.json()["id"], {"succeeded", "failed", "cancelled"}, timeout=30)
    assert job.state == "succeeded", job
