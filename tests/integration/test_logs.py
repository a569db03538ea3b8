"""Issue #18 (part): JSON logs. A request id a client sends is echoed, is on the API's JSON log lines
for that request, travels with the job it submits, and is on the worker's JSON log lines for that
job (with the job id); no API key reaches either log in this format either."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import httpx
import pytest

from .conftest import API_KEYS, ROOT, run_worker, stop_process, wait_for
from .redis_server import free_port
from .test_api import job_body

pytestmark = pytest.mark.integration


def json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_a_request_id_follows_its_job_into_the_worker_s_json_log(env, settings, celery_app, fault_env, tmp_path):
    queue, worker_env = fault_env
    marker = uuid.uuid4().hex
    key = f"sk-{marker}"
    api_env = {**env, "CHAINRULE_API_KEYS": f"{key}:tenant-a", "CHAINRULE_QUEUE": queue}
    port = free_port()
    log_path = tmp_path / "api.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", "api", "--port", str(port), "--log-format",
                                 "json", "--log-level", "debug"], cwd=ROOT, env=api_env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    request_id = f"req-{marker}"
    try:
        with run_worker(celery_app, {**worker_env, "CHAINRULE_LOG_FORMAT": "json"}, queue=queue,
                        hostname=f"logs-{queue}@localhost", log_path=tmp_path / "worker.log") as worker:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, trust_env=False) as client:
                wait_for(lambda: _up(client), timeout=30, message="the API to answer")
                resp = client.post("/v1/jobs", json=job_body(steps=20),
                                   headers={"Authorization": f"Bearer {key}", "X-Request-ID": request_id})
                assert resp.status_code == 202, resp.text
                assert resp.headers["x-request-id"] == request_id
                job_id = resp.json()["id"]
                # an id made up for a request without one (or with one that is not an id)
                made = client.get("/healthz", headers={"X-Request-ID": "not an id!"}).headers["x-request-id"]
                assert made != "not an id!" and len(made) == 32
                wait_for(lambda: client.get(f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"})
                         .json()["state"] == "succeeded", timeout=30, message="the job to succeed")
            worker_log = wait_for(lambda: _containing(worker.log(), f"job {job_id}: succeeded"), timeout=10,
                                  message="the worker's line for the job's end")
    finally:
        stop_process(proc)
    api_lines = json_lines(log_path.read_text(errors="replace"))
    assert api_lines and all({"time", "level", "logger", "event"} <= set(line) for line in api_lines)
    submitted = [line for line in api_lines if line["event"].startswith(f"job {job_id} submitted")]
    # the tenant too: set by the request's own (async) authentication, seen by the route's lines
    assert submitted and submitted[0]["request_id"] == request_id and submitted[0]["tenant"] == "tenant-a"
    mine = [line for line in json_lines(worker_log) if line.get("job_id") == job_id]
    assert any(line["event"].startswith(f"job {job_id}: training") for line in mine)
    assert mine and all(line["request_id"] == request_id and line["tenant"] == "tenant-a" for line in mine)
    for text in (log_path.read_text(errors="replace"), worker_log):
        assert key not in text and marker not in text.replace(request_id, "")
        for other in API_KEYS.values():
            assert other not in text


def _containing(text: str, fragment: str) -> str | None:
    return text if fragment in text else None


def _up(client) -> bool:
    try:
        return client.get("/healthz").status_code == 200
    except httpx.TransportError:
        return False
