"""Issue #19: retention. A finished job's keys expire retention_s after it ends, and its graph
lives at least as long; a finished sweep's too (its data copies at once); an unused graph expires graph_retention_s after it was last stored; the
tenant's job index and byte counts let go of what expired (the recovery loop prunes them), so
Redis holds nothing of them afterwards."""

from __future__ import annotations

import time

import pytest

from .conftest import run_worker, starlette_test_client, wait_for
from .test_api import SEED_DOC, job_body

pytestmark = pytest.mark.integration

RETENTION_S = 2
GRAPH_RETENTION_S = 3


def test_finished_jobs_and_unused_graphs_expire_and_nothing_of_them_stays(settings, env, tmp_path):
    from service.app import create_app
    from worker.celery_app import make_celery
    from worker.store import JobStore

    # A namespace of its own: the session's worker (a 1 h retention, a 10 s recovery loop) must not
    # be the one that prunes this test's tenant, nor claim the pruning for a minute.
    ns = f"{settings.namespace}-retention"
    short = {"namespace": ns, "queue": f"{ns}.train", "retention_s": RETENTION_S,
             "graph_retention_s": GRAPH_RETENTION_S}
    api_settings = settings.model_copy(update=short)
    worker_env = {**env, **{f"CHAINRULE_{k.upper()}": str(v) for k, v in short.items()},
                  "CHAINRULE_LEASE_TTL_S": "2", "CHAINRULE_SWEEP_INTERVAL_S": "0.5"}
    store, celery_app = JobStore.connect(api_settings), make_celery(api_settings)
    tenant = "tenant-a"
    try:
        with run_worker(celery_app, worker_env, queue=short["queue"], hostname=f"retention-{ns}@localhost",
                        log_path=tmp_path / "worker.log"), \
                starlette_test_client()(create_app(api_settings)) as client:
            headers = {"Authorization": "Bearer key-a"}
            before = set(store._r.scan_iter(f"{store.ns}:tenant:{tenant}:*"))
            used = client.post("/v1/graphs", json={**SEED_DOC, "name": "kept-by-its-job"}, headers=headers).json()["id"]
            unused = client.post("/v1/graphs", json={**SEED_DOC, "name": "unused"}, headers=headers).json()["id"]
            job = client.post("/v1/jobs", json=job_body(graph=None, graph_id=used, steps=20), headers=headers).json()
            sweep = client.post("/v1/sweeps", headers=headers, json={
                "base": job_body(graph=None, graph_id=used, steps=20), "method": "grid", "max_trials": 2,
                "max_concurrent": 2, "space": {"optimizer.lr": {"values": [0.1, 0.2]}}}).json()
            wait_for(lambda: client.get(f"/v1/jobs/{job['id']}", headers=headers).json()["state"] == "succeeded",
                     timeout=30, message="the job to succeed")
            wait_for(lambda: client.get(f"/v1/sweeps/{sweep['id']}", headers=headers).json()["state"] == "succeeded",
                     timeout=30, message="the sweep to succeed")
            # its data copies go as it ends (only launching trials read them); its record stays a while
            assert not store._r.exists(store.sweep_key(sweep["id"], "data"))
            assert [s["id"] for s in client.get("/v1/sweeps", headers=headers).json()["sweeps"]] == [sweep["id"]]
            ended = time.time()
            trials = [t["job_id"] for t in client.get(f"/v1/sweeps/{sweep['id']}", headers=headers).json()["trials"]]
            assert sorted(store.graph_users(tenant, used)) == sorted([job["id"], *trials]) and len(trials) == 2
            # the unused graph goes graph_retention_s after it was stored
            wait_for(lambda: client.get(f"/v1/graphs/{unused}", headers=headers).status_code == 404,
                     timeout=GRAPH_RETENTION_S + 5, message="the unused graph to expire")
            # the job, and then its graph, retention_s after the job ended
            wait_for(lambda: client.get(f"/v1/jobs/{job['id']}", headers=headers).status_code == 404,
                     timeout=RETENTION_S + 5, message="the finished job to expire")
            assert time.time() - ended >= RETENTION_S - 1
            assert not list(store._r.scan_iter(f"{store.ns}:job:{job['id']}*"))
            # the sweep and its trials likewise (it ended after them): not found, not listed, no keys
            wait_for(lambda: client.get(f"/v1/sweeps/{sweep['id']}", headers=headers).status_code == 404,
                     timeout=RETENTION_S + 5, message="the finished sweep to expire")
            assert client.get("/v1/sweeps", headers=headers).json()["sweeps"] == []
            assert not list(store._r.scan_iter(f"{store.ns}:sweep:{sweep['id']}*"))
            wait_for(lambda: client.get(f"/v1/graphs/{used}", headers=headers).status_code == 404,
                     timeout=RETENTION_S + 5, message="its graph to expire after it")
            # the recovery loop prunes the index and the byte counts: nothing is left of either
            wait_for(lambda: store.usage(tenant, "jobs") == 0 and store.usage(tenant, "graphs") == 0
                     and not store._r.zscore(store.tenant_key(tenant, "jobs"), job["id"]),
                     timeout=10, message="the tenant's index and byte counts to let go")
            after = set(store._r.scan_iter(f"{store.ns}:tenant:{tenant}:*"))
            leftover = {k.decode() for k in after - before if not k.decode().endswith(("usage:jobs:bytes",
                                                                                         "usage:graphs:bytes", ":bucket"))}
            assert not leftover, leftover
    finally:
        store.delete_namespace()
        store.close()
        celery_app.close()


def test_storing_a_job_keeps_its_graph_in_the_same_step_or_stores_nothing(settings):
    """store_job(keep_graph_s=...) extends the graph's life with the job's creation, and refuses
    with GraphGone, storing nothing (an Idempotency-Key released), when the graph is not stored:
    the API then stores the graph and the job again (service/submit.py)."""
    import uuid

    import graphspec
    from worker.store import GraphGone, JobStore

    store = JobStore.connect(settings.model_copy(update={"namespace": f"{settings.namespace}-keep-{uuid.uuid4().hex[:6]}"}))
    try:
        graph = graphspec.from_data(SEED_DOC)
        graph_id = store.put_graph("tenant-a", graph, ttl_s=5)
        job, created = store.store_job("tenant-a", graph_id, {"steps": 1}, b"\x80", keep_graph_s=600)
        assert created and 590 < store._r.ttl(store.tenant_key("tenant-a", f"graph:{graph_id}")) <= 600
        store.delete_graph("tenant-a", graph_id)
        keys_before = set(store._r.scan_iter(f"{store.ns}:*"))
        with pytest.raises(GraphGone):
            store.store_job("tenant-a", graph_id, {"steps": 1}, b"\x80", idempotency_key="k1", keep_graph_s=600)
        assert set(store._r.scan_iter(f"{store.ns}:*")) == keys_before  # no job, no key left behind
    finally:
        store.delete_namespace()
        store.close()
