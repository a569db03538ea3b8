"""The Python client (service.client) and the `chainrule` client commands, against a real API
server (uvicorn subprocess), the real Celery worker and Redis of the integration fixtures."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest

import graphspec
import runtime
from runtime.data import load_tensors
from service.client import APIUnreachable, Client, ClientError, parse_sse

from .conftest import API_KEYS, EXAMPLES, ROOT
from browser import live_server

from .redis_server import free_port

pytestmark = pytest.mark.integration

SEED_GRAPH = EXAMPLES / "logistic_regression.json"
SEED_DATA = EXAMPLES / "data" / "seed_data.json"
KEY_A, KEY_B = API_KEYS["tenant-a"], API_KEYS["tenant-b"]
SEED_RUN = dict(optimizer="sgd", lr=0.5, steps=300, batch_size=16)
LONG_RUN = dict(optimizer="sgd", lr=0.01, steps=400_000, report_every=1000)
CHAINRULE = shutil.which("chainrule")


# -- a real API server -----------------------------------------------------------------------
@dataclass(frozen=True)
class Server:
    url: str


@pytest.fixture(scope="module")
def server(env: dict[str, str], celery_worker) -> Iterator[Server]:
    """``uvicorn service.app:app`` on a free port, configured like the other fixtures (``env``)."""
    with live_server(env) as url:
        yield Server(url)


@pytest.fixture
def client(server: Server) -> Iterator[Client]:
    with Client(server.url, api_key=KEY_A, timeout=10) as c:
        yield c


def cli(*args, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    command = [CHAINRULE] if CHAINRULE else [sys.executable, "-m", "service.cli"]
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=timeout)


def assert_no_traceback(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr


def bad_graph_file(tmp_path: Path) -> Path:
    tree = json.loads(SEED_GRAPH.read_text())
    tree["nodes"][0]["op"] = "mull"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(tree))
    return path


def local_training(**run) -> dict[str, np.ndarray]:
    """The seed run trained here with the runtime: the worker's run must be the same (seeded)."""
    graph = graphspec.load(SEED_GRAPH)
    trainer = runtime.Trainer(graph, runtime.make_optimizer(run["optimizer"], lr=run["lr"]),
                              batch_size=run["batch_size"], shuffle=True, seed=0)
    return trainer.fit(load_tensors(SEED_DATA), runtime.init_params(graph, seed=0), steps=run["steps"]).params


def cancel_and_wait(client: Client, job_id: str) -> dict:
    try:
        client.cancel(job_id)
    except ClientError as exc:
        assert exc.status == 409, exc  # it had finished already
    return client.wait(job_id, timeout=20)


# -- the client ------------------------------------------------------------------------------
def test_submit_stream_and_result(client):
    job = client.submit(SEED_GRAPH, SEED_DATA, report_every=10, **SEED_RUN)
    assert job["state"] == "queued" and job["total_steps"] == 300
    assert job["graph_id"] == graphspec.content_hash(graphspec.load(SEED_GRAPH))

    stream = client.stream(job["id"])
    steps = list(stream)
    assert [s["step"] for s in steps] == list(range(10, 301, 10))
    assert set(steps[0]["grad_norms"]) == {"w1", "w2", "b"}
    first, last = np.mean([s["loss"] for s in steps[:3]]), np.mean([s["loss"] for s in steps[-3:]])
    assert last < first / 2, (first, last)
    assert stream.job is not None and stream.job["state"] == "succeeded" and stream.job["step"] == 300
    assert stream.reconnects == 0

    assert list(client.iter_steps(job["id"])) == steps
    page = client.steps(job["id"], after=100, limit=5)
    assert [s["step"] for s in page["steps"]] == [110, 120, 130, 140, 150] and page["next_after"] == 150
    assert [s["step"] for s in client.stream(job["id"], after=280)] == [290, 300]

    result = client.result(job["id"])
    assert result["steps"] == 300 and result["loss"] == pytest.approx(stream.job["loss"])
    assert set(result["params"]) == {"w1", "w2", "b"}
    expected = local_training(**SEED_RUN)
    for name, value in result["params"].items():
        assert isinstance(value, np.ndarray) and value.dtype == np.float64
        np.testing.assert_allclose(value, expected[name], rtol=1e-12)
    assert result["params"]["w1"] > 0 > result["params"]["w2"]  # the data's boundary: 2 x1 - x2 + 0.5


def test_graph_forms_arrays_and_wait(client):
    graph = graphspec.load(SEED_GRAPH)
    stored = client.post_graph(SEED_GRAPH)
    assert stored["id"] == graphspec.content_hash(graph) == client.post_graph(graph)["id"]
    assert stored["summary"]["parameter_count"] == 3
    assert graphspec.content_hash(client.graph(stored["id"])) == stored["id"]

    data = {k: v for k, v in load_tensors(SEED_DATA).items()}
    by_id = client.submit(stored["id"], data, **SEED_RUN)
    inline = client.submit(graph, {k: v.tolist() for k, v in data.items()}, **SEED_RUN)
    finished = [client.wait(j["id"], poll=0.05, timeout=20) for j in (by_id, inline)]
    assert [j["state"] for j in finished] == ["succeeded", "succeeded"]
    a, b = (client.result(j["id"])["params"] for j in finished)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_idempotency_key(client):
    key = f"client-{uuid.uuid4().hex}"
    first = client.submit(SEED_GRAPH, SEED_DATA, idempotency_key=key, **SEED_RUN)
    again = client.submit(SEED_GRAPH, SEED_DATA, idempotency_key=key, **SEED_RUN)
    other = client.submit(SEED_GRAPH, SEED_DATA, idempotency_key=key + "-2", **SEED_RUN)
    assert again["id"] == first["id"] != other["id"]
    for job_id in (first["id"], other["id"]):
        assert client.wait(job_id, timeout=20)["state"] == "succeeded"


def test_client_error_carries_the_problem_and_locations(client, tmp_path):
    bad = bad_graph_file(tmp_path)
    with pytest.raises(ClientError) as info:
        client.submit(bad, SEED_DATA, steps=10)
    err = info.value
    assert err.status == 422 and err.title == "Invalid graph document"
    assert [e["location"] for e in err.errors] == ["/graph/nodes/0/op"]
    text = str(err)
    assert text.startswith("422 Invalid graph document: the graph document has 1 problem")
    assert "/graph/nodes/0/op: unknown op 'mull'" in text and "hint: did you mean" in text

    with pytest.raises(ClientError) as info:
        client.post_graph(bad)
    assert [e["location"] for e in info.value.errors] == ["/nodes/0/op"]

    data = load_tensors(SEED_DATA)
    del data["y"]
    with pytest.raises(ClientError) as info:
        client.submit(SEED_GRAPH, data, steps=10)
    assert info.value.status == 422 and any(e["location"].startswith("/data") for e in info.value.errors), \
        info.value.problem

    with pytest.raises(ClientError) as info:
        client.submit(SEED_GRAPH, SEED_DATA, optimizer="sgd", lr=-1.0, steps=10)
    assert info.value.status == 422 and "/optimizer" in str(info.value)

    with pytest.raises(ClientError) as info:
        client.status("job_doesnotexist")
    assert info.value.status == 404 and "does not exist" in str(info.value)


def test_tenants_and_auth(client, server):
    job = client.submit(SEED_GRAPH, SEED_DATA, **SEED_RUN)
    with Client(server.url, api_key=KEY_B) as other:
        with pytest.raises(ClientError) as info:
            other.status(job["id"])
        assert info.value.status == 404
        assert job["id"] not in {j["id"] for j in other.jobs(limit=1000)}
    with Client(server.url, api_key="not-a-key") as stranger:
        with pytest.raises(ClientError) as info:
            stranger.jobs()
        assert info.value.status == 401 and "not valid" in str(info.value)
    client.wait(job["id"], timeout=20)


def test_api_key_from_the_environment(server, monkeypatch):
    monkeypatch.setenv("CHAINRULE_API_KEY", KEY_A)
    with Client(server.url) as c:
        assert isinstance(c.jobs(limit=1), list)


def test_cancel_and_jobs_listing(client):
    job = client.submit(SEED_GRAPH, SEED_DATA, **LONG_RUN)
    try:
        listed = client.jobs(limit=1000)
        assert job["id"] in {j["id"] for j in listed}
        created = [datetime.fromisoformat(j["created"]) for j in listed]
        assert created == sorted(created, reverse=True)  # newest first
        cancelled = client.cancel(job["id"])
        assert cancelled["state"] in ("cancelling", "cancelled")
    finally:
        final = cancel_and_wait(client, job["id"])
    assert final["state"] == "cancelled", final
    with pytest.raises(ClientError) as info:
        client.cancel(job["id"])
    assert info.value.status == 409
    with pytest.raises(ClientError) as info:
        client.result(job["id"])
    assert info.value.status == 409 and "cancelled" in str(info.value)
    assert job["id"] in {j["id"] for j in client.jobs(state="cancelled", limit=1000)}
    assert all(j["state"] == "cancelled" for j in client.jobs(state="cancelled"))
    assert job["id"] in {j["id"] for j in client.iter_jobs(page_size=7)}  # cursors followed


class DroppingTransport(httpx.BaseTransport):
    """Real HTTP, except that the first ``drops`` event streams break after ``after_events`` step events."""

    def __init__(self, drops: int = 2, after_events: int = 3):
        self.inner = httpx.HTTPTransport()
        self.drops, self.after_events = drops, after_events
        self.last_event_ids: list[str | None] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if not request.url.path.endswith("/events"):
            return response
        self.last_event_ids.append(request.headers.get("last-event-id"))
        if self.drops <= 0:
            return response
        self.drops -= 1
        return httpx.Response(response.status_code, headers=response.headers,
                              stream=_Cut(response.stream, self.after_events), extensions=response.extensions)

    def close(self) -> None:
        self.inner.close()


class _Cut(httpx.SyncByteStream):
    """Passes the stream through up to the end of its ``events``-th step event, then breaks it
    (however the bytes were chunked: events that arrived together are cut apart)."""

    def __init__(self, inner, events: int):
        self.inner, self.events = inner, events

    def __iter__(self):
        buffer, sent, seen = b"", 0, 0
        try:
            for chunk in self.inner:
                buffer += chunk
                base = sent
                for block in re.finditer(rb".*?(?:\r\n\r\n|\n\n|\r\r)", buffer[base:], re.DOTALL):
                    end = base + block.end()
                    if b"event: step" in block.group():
                        seen += 1
                    if seen >= self.events:
                        yield buffer[sent:end]
                        raise httpx.RemoteProtocolError("peer closed connection (simulated)")
                    yield buffer[sent:end]
                    sent = end
            if buffer[sent:]:
                yield buffer[sent:]
        finally:
            self.inner.close()


def test_stream_resumes_after_dropped_connections(server):
    transport = DroppingTransport(drops=2, after_events=3)
    with httpx.Client(base_url=server.url, transport=transport) as http:
        c = Client(api_key=KEY_A, http=http)
        job = c.submit(SEED_GRAPH, SEED_DATA, report_every=20, **SEED_RUN)
        stream = c.stream(job["id"])
        steps = [s["step"] for s in stream]
    assert steps == list(range(20, 301, 20)), steps  # nothing lost, nothing repeated
    assert stream.reconnects == 2 and stream.job["state"] == "succeeded"
    assert transport.last_event_ids == [None, "60", "120"]  # each reconnect resumes after the last step seen


def test_parse_sse_fields_and_comments():
    lines = [": ping", "id: 3", "event: step", 'data: {"a":', "data: 1}", "", "event: end", "data: {}", ""]
    assert list(parse_sse(iter(lines))) == [("step", '{"a":\n1}', "3"), ("end", "{}", None)]


def test_client_error_from_a_response_that_is_not_a_problem():
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Bearer k"
        return httpx.Response(502, text="<html>bad gateway</html>")

    with Client("http://proxy.invalid", api_key="k", transport=httpx.MockTransport(handler)) as c:
        with pytest.raises(ClientError) as info:
            c.status("job_x")
    assert info.value.status == 502 and str(info.value) == "502 Bad Gateway: <html>bad gateway</html>"


def test_client_over_a_testclient(api, celery_worker):
    c = Client(api_key=KEY_A, http=api.client)
    job = c.submit(SEED_GRAPH, SEED_DATA, **SEED_RUN)
    assert c.wait(job["id"], poll=0.05, timeout=20)["state"] == "succeeded"
    assert set(c.result(job["id"])["params"]) == {"w1", "w2", "b"}


def test_unreachable_server():
    with Client(f"http://127.0.0.1:{free_port()}", api_key=KEY_A, timeout=2) as c:
        with pytest.raises(APIUnreachable):
            c.jobs()
        with pytest.raises(APIUnreachable):
            list(c.stream("job_x"))


# -- the command line ------------------------------------------------------------------------
def test_cli_submit_watch_jobs_status_result(server, env, tmp_path, client):
    out = tmp_path / "p.msgpack"
    remote = ["--url", server.url, "--api-key", KEY_A]
    r = cli("submit", SEED_GRAPH, "--data", SEED_DATA, "--steps", 300, "--lr", 0.5, "--batch-size", 16,
            "--report-every", 5, "--watch", "--out", out, *remote, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert_no_traceback(r)
    job_id = r.stdout.splitlines()[0]
    assert job_id.startswith("job_")
    assert "step 300/300" in r.stderr and "loss" in r.stderr  # the progress bar
    assert f"{job_id} succeeded: step 300/300, loss " in r.stdout
    assert f"wrote trained parameters to {out}" in r.stdout
    params = load_tensors(out)
    expected = client.result(job_id)["params"]
    assert set(params) == {"w1", "w2", "b"}
    for name in params:
        np.testing.assert_array_equal(params[name], expected[name])

    r = cli("jobs", *remote, env=env)
    assert r.returncode == 0, r.stderr
    header, *rows = r.stdout.splitlines()
    assert header.split() == ["ID", "STATE", "STEP", "LOSS", "CREATED"]
    row = next(line for line in rows if line.startswith(job_id))
    assert row.split()[1:3] == ["succeeded", "300/300"]

    # URL and key from the environment
    r = cli("jobs", "--state", "succeeded", "--limit", 1000,
            env={**env, "CHAINRULE_URL": server.url, "CHAINRULE_API_KEY": KEY_A})
    assert r.returncode == 0 and job_id in r.stdout, r.stderr

    r = cli("status", job_id, *remote, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == job_id and "succeeded" in r.stdout and "300/300" in r.stdout

    r = cli("result", job_id, "--out", tmp_path / "r.json", *remote, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("loss ") and "after 300 steps" in r.stdout
    assert any(line.split()[:3] == ["w1", "float64", "scalar"] for line in r.stdout.splitlines()), r.stdout
    for name, value in load_tensors(tmp_path / "r.json").items():
        np.testing.assert_array_equal(value, expected[name])


def test_cli_bad_graph_prints_the_location(server, env, tmp_path):
    r = cli("submit", bad_graph_file(tmp_path), "--data", SEED_DATA, "--steps", 10,
            "--url", server.url, "--api-key", KEY_A, env=env)
    assert r.returncode == 1
    assert_no_traceback(r)
    assert "422 Invalid graph document" in r.stderr
    assert "/graph/nodes/0/op: unknown op 'mull'" in r.stderr
    assert r.stdout == ""

    r = cli("submit", tmp_path / "missing.json", "--data", SEED_DATA, "--steps", 10,
            "--url", server.url, "--api-key", KEY_A, env=env)
    assert r.returncode == 1 and "cannot read" in r.stderr
    assert_no_traceback(r)

    r = cli("status", "job_nope", "--url", server.url, "--api-key", KEY_A, env=env)
    assert r.returncode == 1 and "404 Not Found" in r.stderr
    assert_no_traceback(r)

    r = cli("jobs", "--url", server.url, "--api-key", "wrong", env=env)
    assert r.returncode == 1 and "401" in r.stderr
    assert_no_traceback(r)


def test_cli_unreachable_url_prints_the_hint(env):
    url = f"http://127.0.0.1:{free_port()}"
    for args in (("jobs",), ("submit", SEED_GRAPH, "--data", SEED_DATA, "--steps", 10)):
        r = cli(*args, "--url", url, "--api-key", KEY_A, env=env)
        assert r.returncode == 1
        assert_no_traceback(r)
        assert f"cannot reach the chainrule API at {url} — is `chainrule serve` running?" in r.stderr


def test_cli_watch_exits_1_when_the_job_fails(server, env, tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "bad_labels.npz"
    np.savez(data, x=rng.normal(size=(8, 4)).astype(np.float32), labels=np.full(8, 7, dtype=np.int64))
    r = cli("submit", EXAMPLES / "small_mlp.json", "--data", data, "--steps", 20, "--watch",
            "--url", server.url, "--api-key", KEY_A, env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert_no_traceback(r)
    assert " failed: step 0" in r.stdout
    assert "failed: ExecutionError:" in r.stderr and "at node 'L'" in r.stderr


def test_cli_cancel_stops_a_watched_job(server, env, client):
    remote = ["--url", server.url, "--api-key", KEY_A]
    command = [CHAINRULE] if CHAINRULE else [sys.executable, "-m", "service.cli"]
    args = ["submit", SEED_GRAPH, "--data", SEED_DATA, "--steps", LONG_RUN["steps"], "--lr", LONG_RUN["lr"],
            "--report-every", LONG_RUN["report_every"], "--watch", *remote]
    watcher = subprocess.Popen([*command, *map(str, args)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    job_id = None
    try:
        job_id = watcher.stdout.readline().strip()
        assert job_id.startswith("job_"), (job_id, watcher.stderr.read() if watcher.poll() is not None else "")
        r = cli("cancel", job_id, *remote, env=env)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() in (f"{job_id} cancelling", f"{job_id} cancelled")
        stdout, stderr = watcher.communicate(timeout=30)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.communicate()
        if job_id and job_id.startswith("job_"):
            cancel_and_wait(client, job_id)
    assert watcher.returncode == 1, stdout + stderr
    assert f"{job_id} cancelled" in stdout
    assert f"error: job {job_id} was cancelled" in stderr and "Traceback" not in stderr
    r = cli("cancel", job_id, *remote, env=env)
    assert r.returncode == 1 and "409" in r.stderr
    assert_no_traceback(r)


def test_cli_validate_does_not_import_the_client():
    r = subprocess.run([sys.executable, "-c", "import sys, service.cli; service.cli.build_parser(); "
                        "print('httpx' in sys.modules, 'service.client' in sys.modules)"],
                       capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.stdout.split() == ["False", "False"], r.stdout + r.stderr
