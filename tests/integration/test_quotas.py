"""Issue #19: per-tenant limits against the real stack — two API processes (`chainrule api
--workers 2`) sharing one Redis, many concurrent clients, a real Celery worker. Each limit is
enforced exactly across processes (counted in Redis, in the same Lua step as the write it
limits), refused with a 429 + Retry-After + a problem naming the limit, and per tenant: another
tenant keeps its own (default) limits."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest

import graphspec

from .conftest import ROOT, run_worker, stop_process, wait_for
from .redis_server import free_port
from .test_api import SEED_DATA, SEED_DOC, job_body

pytestmark = pytest.mark.integration

KEYS = {tenant: f"key-{tenant}" for tenant in ("rate", "queued", "graphs", "jobs", "running", "free", "client")}


def variant(i: int) -> dict:
    """The seed graph under another name: a distinct document of (almost) the same size."""
    return {**SEED_DOC, "name": f"quota-{i}"}


def stored_size(doc: dict) -> int:
    """Bytes a graph document takes stored (canonical msgpack), what max_graph_bytes counts."""
    return len(graphspec.dumps(graphspec.from_data(doc), "msgpack"))


def limits(**per_tenant) -> str:
    return json.dumps(per_tenant)


@contextmanager
def running_api(env: dict[str, str], log_path, workers: int = 2):
    """``chainrule api --workers N`` (N processes behind one port) until the block ends; its URL."""
    port = free_port()
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", "api", "--port", str(port), "--workers",
                                 str(workers)], cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, trust_env=False) as probe:
            wait_for(lambda: _answers(probe), timeout=30, message="the API to answer")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def stack(env, settings, celery_app, tmp_path_factory):
    """Two API processes and a prefork worker of 2 processes, on a queue of this module's own."""
    queue = f"{settings.queue}.quotas"
    tmp = tmp_path_factory.mktemp("quotas")
    common = {**env, "CHAINRULE_QUEUE": queue, "CHAINRULE_SWEEP_INTERVAL_S": "0.5",
              "CHAINRULE_API_KEYS": ",".join(f"{key}:{tenant}" for tenant, key in KEYS.items()),
              "CHAINRULE_TENANT_LIMITS": limits(
                  rate={"requests_per_second": 0.01, "request_burst": 10},
                  queued={"max_queued_jobs": 5},
                  graphs={"max_graph_bytes": 2 * stored_size(variant(0)) + stored_size(variant(0)) // 2},
                  running={"max_running_jobs": 1},
                  client={"requests_per_second": 0.01, "request_burst": 4})}
    with running_api(common, tmp / "api.log") as url:
        with run_worker(celery_app, common, queue=queue, hostname=f"quotas-{queue}@localhost", pool="prefork",
                        concurrency=2, log_path=tmp / "worker.log") as worker:
            yield {"url": url, "env": common, "worker": worker, "queue": queue, "tmp": tmp}


def _answers(client: httpx.Client) -> bool:
    try:
        return client.get("/healthz").status_code == 200
    except httpx.TransportError:
        return False


def client(url: str, tenant: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=60, trust_env=False, headers={"Authorization": f"Bearer {KEYS[tenant]}"})


def concurrently(url: str, tenant: str, count: int, request) -> list[httpx.Response]:
    """``count`` requests at once, each from a client of its own (its own connection, so the API
    processes all serve some)."""
    def one(i):
        with client(url, tenant) as c:
            return request(c, i)
    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(one, range(count)))


def assert_over_limit(resp: httpx.Response, limit: str) -> dict:
    assert resp.status_code == 429, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert int(resp.headers["retry-after"]) >= 1
    body = resp.json()
    assert body["limit"] == limit and body["status"] == 429 and limit in body["detail"], body
    return body


def test_the_request_rate_is_one_bucket_across_api_processes(stack):
    responses = concurrently(stack["url"], "rate", 30, lambda c, i: c.get("/v1/jobs"))
    accepted = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert len(accepted) == 10, [r.status_code for r in responses]  # the burst; the rate adds 1 per 100 s
    for resp in refused:
        body = assert_over_limit(resp, "requests_per_second")
        assert "slow down" in body["detail"]
    assert int(refused[0].headers["retry-after"]) > 10  # a token every 100 s
    with client(stack["url"], "free") as other:  # another tenant: its own bucket
        assert other.get("/v1/jobs").status_code == 200


def test_queued_jobs_are_capped_exactly_under_concurrent_submissions(stack):
    # API processes sending to a queue no worker reads: every accepted job stays queued
    idle = {**stack["env"], "CHAINRULE_QUEUE": f"{stack['queue']}.idle"}
    with running_api(idle, stack["tmp"] / "api-idle.log") as url:
        body = job_body(steps=20)
        responses = concurrently(url, "queued", 20, lambda c, i: c.post("/v1/jobs", json=body))
        accepted = [r.json()["id"] for r in responses if r.status_code == 202]
        refused = [r for r in responses if r.status_code != 202]
        assert len(accepted) == 5, [r.status_code for r in responses]
        for resp in refused:
            problem = assert_over_limit(resp, "max_queued_jobs")
            assert problem["limit_value"] == 5 and problem["used"] == 5
        with client(url, "queued") as c:
            assert c.post("/v1/jobs", json=body).status_code == 429
            unfinished = c.delete(f"/v1/jobs/{accepted[0]}")  # a queued job is not deleted: cancel it first
            assert unfinished.status_code == 409 and "cancel it first" in unfinished.json()["detail"]
            assert c.get(f"/v1/jobs/{accepted[0]}").json()["state"] == "queued"
            assert c.post(f"/v1/jobs/{accepted[0]}/cancel").status_code == 202  # a queued job leaves the count
            again = c.post("/v1/jobs", json=body)
            assert again.status_code == 202, again.text
            for job_id in [*accepted, again.json()["id"]]:
                assert c.get(f"/v1/jobs/{job_id}").json()["state"] in ("queued", "cancelled")
                c.post(f"/v1/jobs/{job_id}/cancel")


def test_graph_bytes_are_capped_and_freed_by_delete(stack):
    graphs = [variant(i) for i in range(4)]
    with client(stack["url"], "graphs") as c:
        responses = concurrently(stack["url"], "graphs", 4, lambda cc, i: cc.post("/v1/graphs", json=graphs[i]))
        stored = [r.json()["id"] for r in responses if r.status_code == 201]
        refused = [r for r in responses if r.status_code != 201]
        assert len(stored) == 2 and len(refused) == 2, [r.status_code for r in responses]
        for resp in refused:
            body = assert_over_limit(resp, "max_graph_bytes")
            assert "DELETE /v1/graphs/" in body["detail"]
        again = c.post("/v1/graphs", json=graphs[[r.status_code for r in responses].index(201)])
        assert again.status_code == 201  # storing a stored graph again takes no more room
        assert c.delete(f"/v1/graphs/{stored[0]}").status_code == 204
        assert c.get(f"/v1/graphs/{stored[0]}").status_code == 404
        assert c.delete(f"/v1/graphs/{stored[0]}").status_code == 404
        retry = c.post("/v1/graphs", json=graphs[[r.status_code for r in responses].index(429)])
        assert retry.status_code == 201, retry.text


def test_a_graph_in_use_cannot_be_deleted(stack):
    with client(stack["url"], "free") as c:
        graph_id = c.post("/v1/graphs", json=SEED_DOC).json()["id"]
        job = c.post("/v1/jobs", json=job_body(graph=None, graph_id=graph_id, steps=20)).json()
        refused = c.delete(f"/v1/graphs/{graph_id}")
        assert refused.status_code == 409 and job["id"] in refused.json()["jobs"], refused.text
        wait_for(lambda: c.get(f"/v1/jobs/{job['id']}").json()["state"] == "succeeded", timeout=30,
                 message="the job to succeed")
        assert c.delete(f"/v1/jobs/{job['id']}").status_code == 204
        assert c.get(f"/v1/jobs/{job['id']}").status_code == 404
        assert c.delete(f"/v1/graphs/{graph_id}").status_code == 204


def test_job_bytes_are_capped_and_freed_by_deleting_finished_jobs(stack, store):
    body = job_body(steps=20)
    with client(stack["url"], "free") as c:  # measure one job's bytes under the default limits
        probe = c.post("/v1/jobs", json=body).json()["id"]
    one_job = store.usage("free", "jobs")
    assert one_job > 0
    jobs_env = {**stack["env"], "CHAINRULE_TENANT_LIMITS": limits(jobs={"max_job_bytes": 2 * one_job + one_job // 2})}
    with running_api(jobs_env, stack["tmp"] / "api-jobs.log", workers=1) as url, client(url, "jobs") as c:
        first = c.post("/v1/jobs", json=body)
        second = c.post("/v1/jobs", json=body)
        assert first.status_code == second.status_code == 202
        third = c.post("/v1/jobs", json=body)
        problem = assert_over_limit(third, "max_job_bytes")
        assert "DELETE /v1/jobs/" in problem["detail"] and problem["used"] == 2 * one_job
        first_id = first.json()["id"]
        wait_for(lambda: c.get(f"/v1/jobs/{first_id}").json()["state"] == "succeeded", timeout=30,
                 message="the first job to succeed")
        assert c.delete(f"/v1/jobs/{first_id}").status_code == 204
        assert store.get_job(first_id) is None and store.step_count(first_id) == 0
        assert c.post("/v1/jobs", json=body).status_code == 202
    with client(stack["url"], "free") as c:
        wait_for(lambda: c.get(f"/v1/jobs/{probe}").json()["state"] == "succeeded", timeout=30,
                 message="the probe job")


def test_running_jobs_are_capped_and_the_rest_wait_queued(stack, store):
    # a worker of 2 processes could run 2 at once; the tenant may run 1: the other waits, queued
    body = job_body(steps=3000, report_every=100)
    with client(stack["url"], "running") as c:
        ids = [c.post("/v1/jobs", json=body).json()["id"] for _ in range(3)]
        most = 0
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            states = [c.get(f"/v1/jobs/{job_id}").json()["state"] for job_id in ids]
            most = max(most, store.running_jobs("running"))
            assert states.count("running") <= 1, states
            if all(s == "succeeded" for s in states):
                break
            time.sleep(0.02)
        assert all(c.get(f"/v1/jobs/{job_id}").json()["state"] == "succeeded" for job_id in ids)
    assert most == 1
    assert "deferred" in stack["worker"].log()


def test_a_sweeps_trials_wait_at_the_running_cap_too(stack, store):
    # two trials may be launched at once (max_concurrent 2) on a worker of 2 processes; the tenant may run 1
    body = {"base": job_body(steps=3000, report_every=100), "space": {"optimizer.lr": {"values": [0.1, 0.2, 0.3]}},
            "method": "grid", "max_trials": 3, "max_concurrent": 2}
    with client(stack["url"], "running") as c:
        started = c.post("/v1/sweeps", json=body)
        assert started.status_code == 202, started.text
        sweep_id = started.json()["id"]
        most, state = 0, None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            most = max(most, store.running_jobs("running"))
            state = c.get(f"/v1/sweeps/{sweep_id}").json()["state"]
            if state in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.02)
        assert state == "succeeded"
        trials = c.get(f"/v1/sweeps/{sweep_id}").json()["trials"]
        assert len(trials) == 3 and all(t["state"] == "succeeded" for t in trials), trials
    assert most == 1


def test_the_client_and_the_cli_delete_jobs_and_see_the_limit(stack, env):
    from service.client import Client, ClientError

    with Client(stack["url"], api_key=KEYS["client"]) as c:
        job = c.submit(SEED_DOC, SEED_DATA, optimizer="sgd", lr=0.5, steps=20)  # request 1
        c.wait(job["id"], poll=0.5)  # a request per poll: most likely 1 or 2 here
        with pytest.raises(ClientError) as refused:
            for _ in range(5):
                c.jobs()
        assert refused.value.status == 429 and refused.value.limit == "requests_per_second"
        assert refused.value.retry_after is not None and refused.value.retry_after > 10
        assert "requests_per_second" in str(refused.value)
    run = subprocess.run([sys.executable, "-m", "service.cli", "delete", job["id"], "--url", stack["url"],
                          "--api-key", KEYS["free"]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "404" in run.stderr  # another tenant's job: as if it did not exist
    with Client(stack["url"], api_key=KEYS["free"]) as c:
        mine = c.submit(SEED_DOC, SEED_DATA, optimizer="sgd", lr=0.5, steps=20)
        c.wait(mine["id"], poll=0.1)
    run = subprocess.run([sys.executable, "-m", "service.cli", "delete", mine["id"], "--url", stack["url"],
                          "--api-key", KEYS["free"]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and f"{mine['id']} deleted" in run.stdout, run.stderr
    with Client(stack["url"], api_key=KEYS["free"]) as c, pytest.raises(ClientError) as gone:
        c.status(mine["id"])
    assert gone.value.status == 404
