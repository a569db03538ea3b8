"""Issue #18 (part): the API's Prometheus metrics scraped from a real API with a real worker and
Redis — request counters by route template, latency, jobs submitted/ended/queued/running and
workers alive move as a real job runs, fails and is cancelled; off, or on a port of their own."""

from __future__ import annotations

import re
import socket
import time

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import API_KEYS, starlette_test_client, wait_for
import graphspec
import runtime

from .test_api import job_body, load_json

pytestmark = pytest.mark.integration


def scrape(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value}."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def api_with_metrics(settings, celery_worker):
    from service.app import create_app

    with starlette_test_client()(create_app(settings)) as client:
        client.headers["Authorization"] = f"Bearer {API_KEYS['tenant-a']}"
        yield client


def test_counters_move_as_real_jobs_run_fail_and_are_cancelled(api_with_metrics):
    client = api_with_metrics
    before = scrape(client.get("/metrics").text)
    assert client.get("/metrics").headers["content-type"].startswith("text/plain")
    job = client.post("/v1/jobs", json=job_body(steps=40)).json()
    rng = np.random.default_rng(0)  # labels out of range for the MLP's 3 classes: the job fails
    bad = client.post("/v1/jobs", json=job_body(
        graph=load_json("small_mlp.json"), batch_size=None, steps=5,
        data={"x": graphspec.encode_tensor_json(rng.normal(size=(8, 4)).astype(np.float32)),
              "labels": graphspec.encode_tensor_json(np.full(8, 7, dtype=np.int64))})).json()
    long = client.post("/v1/jobs", json=job_body(steps=400_000, report_every=1000)).json()
    wait_for(lambda: client.get(f"/v1/jobs/{job['id']}").json()["state"] == "succeeded", timeout=30,
             message="the job to succeed")
    wait_for(lambda: client.get(f"/v1/jobs/{bad['id']}").json()["state"] == "failed", timeout=30,
             message="the diverging job to fail")
    client.post(f"/v1/jobs/{long['id']}/cancel")
    wait_for(lambda: client.get(f"/v1/jobs/{long['id']}").json()["state"] == "cancelled", timeout=30,
             message="the long job to be cancelled")
    client.get("/v1/jobs/job_" + "0" * 32)  # a 404 on a route with a path parameter
    after = scrape(client.get("/metrics").text)

    assert value(after, "chainrule_jobs_submitted_total") - value(before, "chainrule_jobs_submitted_total") >= 3
    for state in ("succeeded", "failed", "cancelled"):
        assert value(after, "chainrule_jobs_ended_total", state=state) > value(
            before, "chainrule_jobs_ended_total", state=state), state
    assert value(after, "chainrule_workers_alive") >= 1
    assert ("chainrule_jobs", (("state", "queued"),)) in after and ("chainrule_jobs", (("state", "running"),)) in after
    # requests by route template: never an id as a label
    assert value(after, "chainrule_http_requests_total", route="/v1/jobs", method="POST", status="202") >= 3
    assert value(after, "chainrule_http_requests_total", route="/v1/jobs/{job_id}", method="GET", status="404") >= 1
    assert not any(re.search(r"job_[0-9a-f]{32}", dict(labels).get("route", "")) for _, labels in after)
    assert value(after, "chainrule_http_request_duration_seconds_count", route="/v1/jobs", method="POST") >= 3
    # /metrics needs no API key
    assert httpx_get_without_key(client).status_code == 200


def httpx_get_without_key(client):
    headers = {k: v for k, v in client.headers.items() if k.lower() != "authorization"}
    return client.get("/metrics", headers={**headers, "Authorization": ""})


def test_metrics_off_or_on_a_port_of_their_own(settings, celery_worker):
    from service.app import create_app

    with starlette_test_client()(create_app(settings.model_copy(update={"metrics": False}))) as client:
        assert client.get("/metrics").status_code == 404
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with starlette_test_client()(create_app(settings.model_copy(update={"metrics_port": port}))) as client:
        assert client.get("/metrics").status_code == 404  # not on the API's port
        client.get("/healthz")
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert 'chainrule_http_requests_total{method="GET",route="/healthz",status="200"}' in text


def test_a_prefork_workers_metrics_count_what_its_pool_processes_did(store, celery_app, fault_env, tmp_path):
    """A worker with two prefork pool processes serves one set of counters (Redis-backed): jobs
    that succeeded, failed and were cancelled, the steps they reported, durations."""
    from worker.store import encode_tensors

    from .conftest import ROOT, run_worker

    queue, env = fault_env
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    graph = graphspec.load(ROOT / "examples" / "logistic_regression.json")
    data = encode_tensors(runtime.load_tensors(ROOT / "examples" / "data" / "seed_data.json"))
    graph_id = store.put_graph("tenant-a", graph)

    def job(steps: int, lr: float = 0.5) -> str:
        spec = runtime.TrainingSpec.from_dict({"optimizer": {"name": "sgd", "lr": lr}, "steps": steps,
                                               "batch_size": 16, "report_every": 10}).to_dict()
        job_id, _ = store.create_job("tenant-a", graph_id, {**spec, "time_limit_s": 600}, data)
        celery_app.send_task("chainrule.train", args=[job_id], queue=queue)
        store.mark_sent(job_id)
        return job_id

    node = f"metrics-{queue}@localhost"
    with run_worker(celery_app, {**env, "CHAINRULE_WORKER_METRICS_PORT": str(port)}, queue=queue, hostname=node,
                    log_path=tmp_path / "w.log", pool="prefork", concurrency=2):
        done = [job(300), job(200)]
        missing = store.create_job("tenant-a", "sha256:" + "0" * 64, {"steps": 5, "time_limit_s": 60}, data)[0]
        celery_app.send_task("chainrule.train", args=[missing], queue=queue)  # its graph is gone: it fails
        store.mark_sent(missing)
        long = job(400_000)
        wait_for(lambda: store.get_job(long).state == "running", timeout=30, message="the long job to start")
        store.request_cancel(long)
        wait_for(lambda: all(store.get_job(j).state in ("succeeded", "failed", "cancelled")
                             for j in [*done, missing, long]), timeout=60, message="every job to end")

        def scraped():
            samples = scrape(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
            return samples if value(samples, "chainrule_worker_jobs_total", event="cancelled") >= 1 else None
        samples = wait_for(scraped, timeout=20, message="the worker's metrics to count the cancelled job")
    assert value(samples, "chainrule_worker_jobs_total", event="succeeded") == 2
    assert value(samples, "chainrule_worker_jobs_total", event="failed") == 1
    assert value(samples, "chainrule_worker_jobs_total", event="started") == 4
    assert value(samples, "chainrule_worker_steps_total") >= 500  # 300 + 200, and the cancelled job's
    assert value(samples, "chainrule_worker_job_duration_seconds_count") == 4
    assert value(samples, "chainrule_worker_queue_wait_seconds_count") == 4


def test_a_celery_events_receiver_sees_a_job_s_task(settings, celery_app, api_with_metrics):
    """Task events are on (what Flower reads): a receiver on the broker sees the job's task go from
    received to succeeded, named by the job id it carries."""
    import threading

    seen: dict[str, set] = {}
    job_id = {}
    ready = threading.Event()

    def on_event(event):
        args = str(event.get("args", ""))
        uuid_ = event.get("uuid")
        if event["type"] == "task-received" and job_id.get("id") and job_id["id"] in args:
            job_id["task"] = uuid_
        seen.setdefault(uuid_, set()).add(event["type"])

    stop = threading.Event()
    receivers = []

    def listen():
        with celery_app.connection() as connection:
            receiver = celery_app.events.Receiver(connection, handlers={"*": on_event})
            receivers.append(receiver)
            ready.set()
            while not stop.is_set():
                try:
                    receiver.capture(limit=None, timeout=0.5, wakeup=False)
                except (TimeoutError, OSError):  # a quiet half second: look at the stop flag again
                    continue

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    ready.wait(10)
    time.sleep(0.5)  # the receiver's queue is bound
    try:
        job = api_with_metrics.post("/v1/jobs", json=job_body(steps=20)).json()
        job_id["id"] = job["id"]
        wait_for(lambda: job_id.get("task") and {"task-received", "task-succeeded"} <= seen.get(job_id["task"], set()),
                 timeout=30, message=f"task events for {job['id']}")
    finally:
        stop.set()
        for receiver in receivers:
            receiver.should_stop = True  # ends capture's loop even while events keep coming
        thread.join(10)
