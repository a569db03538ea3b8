"""Issue #18 (part): the API's Prometheus metrics scraped from a real API with a real worker and
Redis — request counters by route template, latency, jobs submitted/ended/queued/running and
workers alive move as a real job runs, fails and is cancelled; off, or on a port of their own."""

from __future__ import annotations

import re
import socket

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import API_KEYS, starlette_test_client, wait_for
import graphspec

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
