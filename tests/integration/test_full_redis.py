"""Issue #19: a Redis at its maxmemory (noeviction), on a Redis this test starts. Writes are
refused with a 503 + Retry-After and nothing half stored, reads go on, the running job waits
instead of failing, and once memory is freed every accepted job finishes with its whole history."""

from __future__ import annotations

import uuid

import pytest
import redis

from service.settings import ApiSettings

from .conftest import run_worker, starlette_test_client, wait_for
from .redis_server import EmbeddedRedis
from .test_api import SEED_DOC, assert_problem, job_body

pytestmark = pytest.mark.integration

FILL_CHUNK = 64 * 1024


@pytest.fixture
def full_stack(env, tmp_path):
    from service.app import create_app
    from worker.celery_app import make_celery
    from worker.store import JobStore

    with EmbeddedRedis() as server:
        ns = f"crfull-{uuid.uuid4().hex[:8]}"
        settings = ApiSettings(redis_url=server.url, namespace=ns, queue=f"{ns}.train", auth_disabled=True,
                               redis_outage_s=120, checkpoint_every_s=0.5)
        worker_env = {**env, "REDIS_URL": server.url, "CHAINRULE_REDIS_URL": server.url, "CHAINRULE_NAMESPACE": ns,
                      "CHAINRULE_QUEUE": settings.queue, "CHAINRULE_REDIS_OUTAGE_S": "120",
                      "CHAINRULE_CHECKPOINT_EVERY_S": "0.5"}
        celery = make_celery(settings)
        store = JobStore.connect(settings)
        try:
            with run_worker(celery, worker_env, queue=settings.queue, hostname=f"{ns}@localhost",
                            log_path=tmp_path / "worker.log") as worker, \
                    starlette_test_client()(create_app(settings)) as client:
                yield client, store, redis.Redis.from_url(server.url), worker
        finally:
            store.close()
            celery.close()


def fill(client: redis.Redis, prefix: str, chunks: int = 48) -> None:
    """Write 3 MiB of filler keys, then cap Redis 1 MiB below what it holds: full, with a margin no
    client's buffers can cross (a cap set just above would let small writes through as buffers come and
    go). Deleting the filler makes room again."""
    for i in range(chunks):
        client.set(f"{prefix}:{i}", b"x" * FILL_CHUNK)
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", client.info("memory")["used_memory"] - 2**20)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        client.set(f"{prefix}:probe", b"x")


def test_a_full_redis_refuses_writes_with_503_and_loses_no_accepted_job(full_stack):
    client, store, raw, worker = full_stack
    steps = 4000
    running = client.post("/v1/jobs", json=job_body(steps=steps, report_every=1))
    assert running.status_code == 202, running.text
    job_id = running.json()["id"]
    wait_for(lambda: store.step_count(job_id) > 0, timeout=30, message="the job to start reporting")

    filler = f"{store.ns}:test-filler"
    fill(raw, filler)
    refused = client.post("/v1/jobs", json=job_body(steps=20), headers={"Idempotency-Key": "after-the-fill"})
    problem = assert_problem(refused, 503)
    assert problem["type"].endswith("/store-full") and int(refused.headers["retry-after"]) >= 1
    assert "nothing was stored" in problem["detail"]
    graph = assert_problem(client.post("/v1/graphs", json={**SEED_DOC, "name": "while-full"}), 503)
    assert graph["type"].endswith("/store-full")
    # reads go on
    assert client.get(f"/v1/jobs/{job_id}").status_code == 200
    listed = client.get("/v1/jobs").json()["jobs"]
    assert [j["id"] for j in listed] == [job_id]  # the refused job was not stored, not even in part
    # the trainer waits for room instead of failing its job
    wait_for(lambda: "redis unavailable" in worker.log() or "maxmemory" in worker.log(), timeout=30,
             message="the trainer to meet the full Redis")
    assert client.get(f"/v1/jobs/{job_id}").json()["state"] == "running"

    raw.delete(*[f"{filler}:{i}" for i in range(48)])  # room again
    retried = client.post("/v1/jobs", json=job_body(steps=20), headers={"Idempotency-Key": "after-the-fill"})
    assert retried.status_code == 202, retried.text  # a new job: the refused one left no trace
    for jid in (job_id, retried.json()["id"]):
        wait_for(lambda: client.get(f"/v1/jobs/{jid}").json()["state"] in ("succeeded", "failed"), timeout=120,
                 message=f"job {jid} to finish")
        assert client.get(f"/v1/jobs/{jid}").json()["state"] == "succeeded"
    entries = [int(e.step) for e in store.read_steps(job_id, limit=steps + 10)]
    assert entries == list(range(1, steps + 1))  # every step exactly once
