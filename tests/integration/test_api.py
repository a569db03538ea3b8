"""The HTTP API (service.app) end to end: a TestClient in front, the real worker and Redis behind.

Every error must be an ``application/problem+json`` document with type/title/status/detail,
and no request may end in a 500 (the TestClient re-raises server exceptions).
"""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid

import msgpack
import numpy as np
import pytest

import graphspec
import runtime
from graphspec.tensors import decode_tensor
from worker.store import decode_tensors

from .conftest import EXAMPLES, starlette_test_client, wait_for

pytestmark = pytest.mark.integration

TERMINAL = {"succeeded", "failed", "cancelled"}
JOB_FIELDS = {"id", "state", "step", "total_steps", "epoch", "loss", "created", "started", "finished", "error",
              "worker", "attempts", "graph_id", "links"}
OPTIMIZER = {"name": "sgd", "lr": 0.5}


# -- helpers -----------------------------------------------------------------------------
def load_json(name: str):
    return json.loads((EXAMPLES / name).read_text())


SEED_DOC = load_json("logistic_regression.json")
SEED_DATA = load_json("data/seed_data.json")


def assert_problem(resp, status: int | tuple[int, ...]) -> dict:
    """``resp`` is an RFC 9457 problem with the expected status; returns its body."""
    statuses = (status,) if isinstance(status, int) else status
    assert resp.status_code in statuses, (resp.status_code, resp.text[:2000])
    assert resp.status_code != 500
    assert resp.headers["content-type"].split(";")[0].strip() == "application/problem+json", resp.headers
    body = resp.json()
    for field in ("type", "title", "status", "detail"):
        assert field in body, body
    assert body["status"] == resp.status_code
    assert isinstance(body["type"], str) and body["type"]
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    return body


def locations(problem: dict) -> list[str]:
    return [e["location"] for e in problem.get("errors") or []]


def job_body(**overrides) -> dict:
    body = {"graph": SEED_DOC, "data": SEED_DATA, "optimizer": OPTIMIZER, "steps": 60, "batch_size": 16,
            "report_every": 5}
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def get_job(api, job_id: str, tenant: str = "tenant-a") -> dict:
    resp = api.get(f"/v1/jobs/{job_id}", tenant=tenant)
    assert resp.status_code == 200, resp.text
    return resp.json()


def wait_job(api, job_id: str, states=TERMINAL, timeout: float = 20.0, tenant: str = "tenant-a") -> dict:
    states = {states} if isinstance(states, str) else set(states)
    last: dict = {}

    def check():
        last.update(get_job(api, job_id, tenant))
        return dict(last) if last["state"] in states else None

    try:
        return wait_for(check, timeout=timeout, interval=0.02, message=f"job {job_id} to reach {sorted(states)}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; job now: {last}") from None


def submit(api, tenant: str = "tenant-a", headers=None, **overrides) -> dict:
    resp = api.post("/v1/jobs", json=job_body(**overrides), tenant=tenant, headers=headers)
    assert resp.status_code == 202, resp.text
    return resp.json()


def in_thread(fn, timeout: float):
    """Run ``fn`` in a daemon thread; fail (instead of hanging the suite) when it takes too long."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as exc:  # re-raised below
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise AssertionError(f"no answer within {timeout} s")
    if "error" in out:
        raise out["error"]
    return out["value"]


def parse_sse(text: str) -> list[dict]:
    """Server-sent events as dicts with id/event/data (comments and retry lines skipped)."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        event: dict = {}
        data = []
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            elif name in ("id", "event"):
                event[name] = value
        if data:
            event["data"] = "\n".join(data)
        if "event" in event or "data" in event:
            events.append(event)
    return events


def read_events(api, job_id: str, *, last_event_id: str | None = None, timeout: float = 30.0):
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    resp = in_thread(lambda: api.get(f"/v1/jobs/{job_id}/events", headers=headers), timeout)
    assert resp.status_code == 200, resp.text[:2000]
    assert resp.headers["content-type"].startswith("text/event-stream")
    return parse_sse(resp.text)


def stored_graph_id(api, doc=SEED_DOC, tenant: str = "tenant-a") -> str:
    resp = api.post("/v1/graphs", json=doc, tenant=tenant)
    assert resp.status_code in (200, 201), resp.text
    return resp.json()["id"]


def local_run(spec: dict):
    graph = graphspec.load(EXAMPLES / "logistic_regression.json")
    data = runtime.load_tensors(EXAMPLES / "data" / "seed_data.json")
    trainer = runtime.Trainer(graph, runtime.make_optimizer(**spec["optimizer"]), batch_size=spec.get("batch_size"),
                              seed=spec.get("seed", 0))
    reports = []
    result = trainer.fit(data, runtime.init_params(graph, seed=0), steps=spec["steps"], callback=reports.append)
    return result, reports


# -- health, schema, auth ----------------------------------------------------------------
def test_health_and_readiness(api, celery_worker):
    assert api.get("/healthz", tenant=None).status_code == 200
    resp = api.get("/readyz", tenant=None)
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "ok"


def test_readiness_without_a_worker_is_503(settings):
    from service.app import create_app

    # Same Redis, a namespace no worker listens on (under the session's, so it is cleaned up).
    lonely = settings.model_copy(update={"namespace": f"{settings.namespace}:noworker",
                                         "queue": f"{settings.namespace}.noworker"})
    with starlette_test_client()(create_app(lonely)) as client:
        resp = in_thread(lambda: client.get("/readyz"), timeout=30)
    assert_problem(resp, 503)
    assert "retry-after" in resp.headers


def test_schema(api):
    resp = api.get("/v1/schema")
    assert resp.status_code == 200
    from graphspec.jsonschema import dumps_schema

    assert resp.json() == json.loads(dumps_schema())  # the graph format's JSON Schema, as `chainrule schema`


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic a2V5LWE6"},
                                     {"Authorization": "Bearer "}])
def test_auth_required(api, headers):
    for method, url in [("GET", "/v1/jobs"), ("POST", "/v1/graphs"), ("GET", "/v1/jobs/job_x"),
                        ("GET", "/v1/graphs/sha256:00")]:
        resp = api.request(method, url, tenant=None, headers=headers, json=SEED_DOC if method == "POST" else None)
        assert_problem(resp, 401)


def test_unknown_route_and_method_are_problems(api):
    assert_problem(api.get("/v1/nothing-here"), 404)
    assert_problem(api.request("DELETE", "/v1/graphs"), 405)


# -- graphs ------------------------------------------------------------------------------
def test_graph_create_and_get(api):
    resp = api.post("/v1/graphs", json=SEED_DOC)
    assert resp.status_code == 201, resp.text
    body = resp.json()
    expected_id = graphspec.content_hash(graphspec.load(EXAMPLES / "logistic_regression.json"))
    assert body["id"] == expected_id and body["id"].startswith("sha256:")
    assert body["summary"]["nodes"] == 6 and set(body["summary"]["parameters"]) == {"w1", "w2", "b"}
    assert resp.headers["location"].endswith(f"/v1/graphs/{expected_id}")

    got = api.get(f"/v1/graphs/{expected_id}")
    assert got.status_code == 200, got.text
    tree = got.json()
    doc = tree.get("graph", tree) if isinstance(tree, dict) else tree
    assert graphspec.content_hash(graphspec.from_data(doc)) == expected_id

    # msgpack in, same content hash (one model, two encodings).
    packed = graphspec.dumps(graphspec.load(EXAMPLES / "logistic_regression.json"), "msgpack")
    resp = api.post("/v1/graphs", content=packed, headers={"Content-Type": "application/msgpack"})
    assert resp.status_code in (200, 201), resp.text
    assert resp.json()["id"] == expected_id

    assert_problem(api.get("/v1/graphs/sha256:" + "0" * 64), 404)


def test_invalid_graph_has_located_errors(api):
    doc = copy.deepcopy(SEED_DOC)
    doc["nodes"][0]["op"] = "mull"
    doc["nodes"][2]["inputs"] = ["x1w1", "nowhere"]
    problem = assert_problem(api.post("/v1/graphs", json=doc), 422)
    assert "/nodes/0/op" in locations(problem)
    assert any(loc.startswith("/nodes/2/inputs") for loc in locations(problem)), problem
    for error in problem["errors"]:
        assert error["location"].startswith("/") and error["message"] and error["code"]

    # Inline in a job, the pointers are into the job body.
    problem = assert_problem(api.post("/v1/jobs", json=job_body(graph=doc)), 422)
    assert "/graph/nodes/0/op" in locations(problem), problem


# -- jobs: lifecycle -----------------------------------------------------------------------
def test_full_lifecycle(api, celery_worker, store):
    graph_id = stored_graph_id(api)
    resp = api.post("/v1/jobs", json=job_body(graph=None, graph_id=graph_id))
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert JOB_FIELDS <= set(job), set(job) ^ JOB_FIELDS
    assert job["state"] in ("queued", "running", "succeeded") and job["graph_id"] == graph_id
    assert resp.headers["location"].endswith(f"/v1/jobs/{job['id']}")
    assert job["links"]["self"].endswith(f"/v1/jobs/{job['id']}")

    done = wait_job(api, job["id"])
    assert done["state"] == "succeeded", done
    assert done["step"] == 60 and done["total_steps"] == 60 and done["attempts"] == 1
    assert done["error"] is None and done["worker"] == celery_worker.hostname
    assert done["created"] and done["started"] and done["finished"]

    expected, reports = local_run({"optimizer": OPTIMIZER, "steps": 60, "batch_size": 16})
    assert done["loss"] == pytest.approx(expected.losses[-1], rel=1e-12)

    # Steps, paginated with after/limit.
    seen, after, pages = [], None, 0
    while True:
        params = {"limit": 5} if after is None else {"limit": 5, "after": after}
        page = api.get(f"/v1/jobs/{job['id']}/steps", params=params)
        assert page.status_code == 200, page.text
        body = page.json()
        assert len(body["steps"]) <= 5
        seen += body["steps"]
        pages += 1
        if body["next_after"] is None:
            break
        assert body["next_after"] == body["steps"][-1]["step"]
        after = body["next_after"]
        assert pages < 20
    assert [s["step"] for s in seen] == list(range(5, 61, 5))
    by_step = {r.step: r for r in reports}
    for s in seen:
        assert set(s) >= {"step", "loss", "grad_norms", "eval_loss", "time"}
        assert s["loss"] == pytest.approx(by_step[s["step"]].loss, rel=1e-12)
        assert set(s["grad_norms"]) == {"w1", "w2", "b"}
    tail = api.get(f"/v1/jobs/{job['id']}/steps", params={"after": 50}).json()
    assert [s["step"] for s in tail["steps"]] == [55, 60] and tail["next_after"] is None
    # The same history as the worker wrote to Redis.
    assert [(s.step, s.loss) for s in store.read_steps(job["id"], limit=1000)] == [(s["step"], s["loss"]) for s in seen]

    result = api.get(f"/v1/jobs/{job['id']}/result")
    assert result.status_code == 200, result.text
    body = result.json()
    assert body["steps"] == 60 and body["loss"] == pytest.approx(expected.losses[-1], rel=1e-12)
    assert set(body["params"]) == {"w1", "w2", "b"}
    for name, tensor in body["params"].items():
        np.testing.assert_allclose(decode_tensor(tensor, f"/params/{name}", max_elements=10), expected.params[name],
                                   rtol=1e-12)

    # The trained parameters go straight back in: explain the seed graph with them.
    explained = api.post(f"/v1/graphs/{graph_id}/explain",
                         json={"inputs": load_json("data/seed_one_example.json"), "params": body["params"]})
    assert explained.status_code == 200, explained.text
    nodes = {n["name"]: n for n in explained.json()["nodes"]}
    for name in ("w1", "w2", "b"):
        assert nodes[name]["value"] == pytest.approx(float(expected.params[name]), rel=1e-12)

    # Listing: newest first, filter by state, cursor pagination.
    listed = api.get("/v1/jobs", params={"state": "succeeded", "limit": 100}).json()
    assert job["id"] in [j["id"] for j in listed["jobs"]]
    assert all(j["state"] == "succeeded" for j in listed["jobs"])


def test_job_listing_pagination(api):
    ids = [submit(api, steps=5, report_every=5)["id"] for _ in range(3)]
    for job_id in ids:
        wait_job(api, job_id)
    collected, cursor = [], None
    for _ in range(50):
        params = {"limit": 2} if cursor is None else {"limit": 2, "cursor": cursor}
        resp = api.get("/v1/jobs", params=params)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        assert len(page["jobs"]) <= 2
        collected += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(collected) == len(set(collected))
    newest_first = [i for i in collected if i in ids]
    assert newest_first == ids[::-1]
    assert_problem(api.get("/v1/jobs", params={"state": "bogus"}), 422)
    assert_problem(api.get("/v1/jobs", params={"limit": 0}), 422)


def test_gradients_full_in_steps(api):
    job = submit(api, steps=10, gradients="full")
    assert wait_job(api, job["id"])["state"] == "succeeded"
    steps = api.get(f"/v1/jobs/{job['id']}/steps").json()["steps"]
    assert [s["step"] for s in steps] == [5, 10]
    for s in steps:
        assert set(s["grads"]) == {"w1", "w2", "b"}
        for name, tensor in s["grads"].items():
            g = decode_tensor(tensor, "/grads", max_elements=10)
            assert s["grad_norms"][name] == pytest.approx(float(np.linalg.norm(g)), rel=1e-12)


def test_failed_job_reports_error(api):
    doc = load_json("small_mlp.json")
    rng = np.random.default_rng(0)
    data = {"x": graphspec.encode_tensor_json(rng.normal(size=(8, 4)).astype(np.float32)),
            "labels": graphspec.encode_tensor_json(np.full(8, 7, dtype=np.int64))}
    job = submit(api, graph=doc, data=data, optimizer={"name": "sgd", "lr": 0.1}, steps=20, batch_size=None,
                 report_every=1)
    done = wait_job(api, job["id"])
    assert done["state"] == "failed"
    assert done["error"]["type"] == "ExecutionError" and done["error"]["node"] == "L"
    assert "out of range" in done["error"]["message"]
    assert_problem(api.get(f"/v1/jobs/{job['id']}/result"), 409)


def test_eval_data_and_checkpoints(api, store):
    eval_data = {name: {**tensor, "shape": [20], "data": tensor["data"][:20]} for name, tensor in SEED_DATA.items()}
    job = submit(api, eval_data=eval_data, eval_every=10, checkpoint_every=20)
    done = wait_job(api, job["id"])
    assert done["state"] == "succeeded", done

    graph = graphspec.load(EXAMPLES / "logistic_regression.json")
    data = runtime.load_tensors(EXAMPLES / "data" / "seed_data.json")
    expected = runtime.Trainer(graph, runtime.make_optimizer(**OPTIMIZER), batch_size=16, seed=0).fit(
        data, runtime.init_params(graph, seed=0), steps=60, eval_data={k: v[:20] for k, v in data.items()},
        eval_every=10)
    evals = dict(expected.eval_losses)

    steps = api.get(f"/v1/jobs/{job['id']}/steps").json()["steps"]
    assert [s["step"] for s in steps] == list(range(5, 61, 5))
    for s in steps:
        if s["step"] % 10 == 0:
            assert s["eval_loss"] == pytest.approx(evals[s["step"]], rel=1e-12)
        else:
            assert s["eval_loss"] is None
    result = api.get(f"/v1/jobs/{job['id']}/result").json()
    assert result["eval_loss"] == pytest.approx(evals[60], rel=1e-12)
    checkpoint = runtime.Checkpoint.from_bytes(store.get_blob(job["id"], "checkpoint"))
    assert checkpoint.step == 60 and checkpoint.graph_hash == done["graph_id"]


# -- SSE -----------------------------------------------------------------------------------
def test_events_stream_and_resume(api):
    job = submit(api, steps=60, report_every=5)
    events = read_events(api, job["id"])
    steps = [e for e in events if e.get("event") == "step"]
    assert events[-1]["event"] == "end", events[-3:]
    assert [int(e["id"]) for e in steps] == list(range(5, 61, 5))
    for e in steps:
        assert json.loads(e["data"])["step"] == int(e["id"])
    assert wait_job(api, job["id"], timeout=5)["state"] == "succeeded"

    resumed = read_events(api, job["id"], last_event_id="30")
    assert [int(e["id"]) for e in resumed if e.get("event") == "step"] == list(range(35, 61, 5))
    assert resumed[-1]["event"] == "end"


def test_events_follow_a_running_job(api):
    job = submit(api, steps=2000, report_every=100)
    events = read_events(api, job["id"])
    assert [int(e["id"]) for e in events if e.get("event") == "step"] == list(range(100, 2001, 100))
    assert events[-1]["event"] == "end"
    assert get_job(api, job["id"])["state"] == "succeeded"


@pytest.mark.parametrize("query,headers", [({"after": 10**30}, {}), ({}, {"Last-Event-ID": str(10**30)}),
                                           ({"after": 2**64}, {})])
def test_step_numbers_beyond_redis_stream_ids(api, query, headers):
    """Stream ids are 64-bit: a larger ``after``/Last-Event-ID is a client's mistake (or nothing
    to return), never a server error."""
    job = submit(api, steps=5, report_every=5)
    wait_job(api, job["id"])
    if "after" in query:
        resp = api.get(f"/v1/jobs/{job['id']}/steps", params=query)
        if resp.status_code == 200:
            assert resp.json()["steps"] == []
        else:
            assert_problem(resp, (400, 422))
    resp = in_thread(lambda: api.get(f"/v1/jobs/{job['id']}/events", params=query, headers=headers), timeout=15)
    if resp.status_code != 200:
        assert_problem(resp, (400, 422))
        return
    events = parse_sse(resp.text)
    assert [e for e in events if e.get("event") == "error"] == [], events
    assert events and events[-1]["event"] == "end"


# -- cancel --------------------------------------------------------------------------------
def test_cancel_mid_run(api):
    job = submit(api, steps=200_000, report_every=100)
    wait_for(lambda: get_job(api, job["id"])["step"] > 0, timeout=20, message="the job to make progress")
    assert_problem(api.get(f"/v1/jobs/{job['id']}/result"), 409)

    asked = time.monotonic()
    resp = api.post(f"/v1/jobs/{job['id']}/cancel")
    assert resp.status_code == 202, resp.text
    assert resp.json()["state"] in ("cancelling", "cancelled")
    done = wait_job(api, job["id"], timeout=10)
    assert done["state"] == "cancelled" and time.monotonic() - asked < 10
    assert 0 < done["step"] < 200_000

    steps = api.get(f"/v1/jobs/{job['id']}/steps", params={"limit": 1000}).json()["steps"]
    numbers = [s["step"] for s in steps]
    assert numbers and numbers == sorted(set(numbers)) and numbers[-1] < 200_000
    assert_problem(api.post(f"/v1/jobs/{job['id']}/cancel"), 409)
    assert_problem(api.get(f"/v1/jobs/{job['id']}/result"), 409)


# -- tenancy ---------------------------------------------------------------------------------
def test_tenant_isolation(api):
    # A graph only tenant-a has stored (graphs are content-addressed per tenant: B may hold the seed too).
    graph_id = stored_graph_id(api, {**SEED_DOC, "name": f"only-a-{uuid.uuid4().hex}"}, tenant="tenant-a")
    job = submit(api, tenant="tenant-a", graph=None, graph_id=graph_id, steps=5)
    wait_job(api, job["id"])
    job_id = job["id"]

    for method, url in [("GET", f"/v1/jobs/{job_id}"), ("GET", f"/v1/jobs/{job_id}/steps"),
                        ("GET", f"/v1/jobs/{job_id}/events"), ("GET", f"/v1/jobs/{job_id}/result"),
                        ("POST", f"/v1/jobs/{job_id}/cancel"), ("GET", f"/v1/graphs/{graph_id}")]:
        resp = in_thread(lambda: api.request(method, url, tenant="tenant-b"), timeout=10)
        assert_problem(resp, 404)
    resp = api.post(f"/v1/graphs/{graph_id}/explain", json={"inputs": load_json("data/seed_one_example.json")},
                    tenant="tenant-b")
    assert_problem(resp, 404)
    # tenant-b cannot train on tenant-a's stored graph either.
    before = api.get("/v1/jobs", params={"limit": 100}, tenant="tenant-b").json()["jobs"]
    resp = api.post("/v1/jobs", json=job_body(graph=None, graph_id=graph_id), tenant="tenant-b")
    assert_problem(resp, (404, 422))
    after = api.get("/v1/jobs", params={"limit": 100}, tenant="tenant-b").json()["jobs"]
    assert len(after) == len(before)
    assert job_id not in [j["id"] for j in after]
    # ... and tenant-a still sees its job unchanged.
    assert get_job(api, job_id)["state"] == "succeeded"


# -- idempotency -----------------------------------------------------------------------------
def test_idempotent_resubmission(api, store, settings):
    key = f"idem-{uuid.uuid4().hex}"
    zset = f"{settings.namespace}:tenant:tenant-a:jobs"
    count_before = store._r.zcard(zset)
    first = api.post("/v1/jobs", json=job_body(steps=10), headers={"Idempotency-Key": key})
    assert first.status_code == 202, first.text
    second = api.post("/v1/jobs", json=job_body(steps=10), headers={"Idempotency-Key": key})
    assert second.status_code == 200, second.text
    assert second.headers.get("idempotent-replayed") == "true"
    assert "idempotent-replayed" not in first.headers or first.headers["idempotent-replayed"] != "true"
    assert second.json()["id"] == first.json()["id"]
    assert store._r.zcard(zset) == count_before + 1  # one job stored

    done = wait_job(api, first.json()["id"])
    assert done["state"] == "succeeded" and done["attempts"] == 1
    steps = api.get(f"/v1/jobs/{done['id']}/steps").json()["steps"]
    assert [s["step"] for s in steps] == [5, 10]

    # The same key with a different request is refused, naming the first job; nothing is stored.
    reused = api.post("/v1/jobs", json=job_body(steps=11), headers={"Idempotency-Key": key})
    assert reused.status_code == 422, reused.text
    assert reused.json()["type"].endswith("idempotency-key-reused") and reused.json()["job_id"] == first.json()["id"]
    assert store._r.zcard(zset) == count_before + 1

    # Keys are per tenant: the same key for tenant-b is another job.
    other = api.post("/v1/jobs", json=job_body(steps=5), headers={"Idempotency-Key": key}, tenant="tenant-b")
    assert other.status_code == 202, other.text
    assert other.json()["id"] != first.json()["id"]
    wait_job(api, other.json()["id"], tenant="tenant-b")


# -- limits ----------------------------------------------------------------------------------
def test_body_over_limit_chunked_without_content_length(api, settings):
    chunk = b" " * 65536
    total = settings.max_body_bytes + 2 * len(chunk)

    def body():
        yield b'{"data": {}, "pad": "'
        for _ in range(total // len(chunk)):
            yield chunk
        yield b'"}'

    resp = api.post("/v1/jobs", content=body(), headers={"Content-Type": "application/json"})
    problem = assert_problem(resp, 413)
    assert str(settings.max_body_bytes) in problem["detail"] or problem.get("limit") == settings.max_body_bytes


def test_body_over_limit_with_content_length(api, settings):
    resp = api.post("/v1/graphs", content=b"{" + b" " * settings.max_body_bytes + b"}",
                    headers={"Content-Type": "application/json"})
    assert_problem(resp, 413)


def _chain_doc(extra_nodes: int) -> dict:
    """The seed graph with ``extra_nodes`` additions of b between z and the sigmoid."""
    doc = copy.deepcopy(SEED_DOC)
    nodes = doc["nodes"][:4]
    prev = "z"
    for i in range(extra_nodes):
        nodes.append({"id": f"z{i}", "op": "add", "inputs": [prev, "b"], "attrs": {}})
        prev = f"z{i}"
    nodes.append({"id": "a", "op": "sigmoid", "inputs": [prev], "attrs": {}})
    nodes.append(doc["nodes"][5])
    doc["nodes"] = nodes
    return doc


def test_too_many_nodes(api, settings):
    doc = _chain_doc(settings.max_nodes)  # valid, but over the node limit
    assert len(graphspec.from_data(doc).nodes) > settings.max_nodes
    problem = assert_problem(api.post("/v1/graphs", json=doc), (413, 422))
    assert "/nodes" in locations(problem) or "nodes" in problem["detail"]
    problem = assert_problem(api.post("/v1/jobs", json=job_body(graph=doc)), (413, 422))
    ok = _chain_doc(settings.max_nodes - 10)
    assert api.post("/v1/graphs", json=ok).status_code in (200, 201)


def test_too_large_tensors(api, settings):
    n = settings.max_tensor_elements + 1
    # A parameter declared over the element limit.
    doc = copy.deepcopy(SEED_DOC)
    doc["parameters"]["w1"]["shape"] = [n]
    problem = assert_problem(api.post("/v1/graphs", json=doc), (413, 422))
    assert any(loc.startswith("/parameters/w1") for loc in locations(problem)), problem
    # A data tensor over the element limit. With the session's limits the job-data cap (bytes)
    # would answer first, so this app's only exceeded limit is the element count.
    from service.app import create_app

    roomy = settings.model_copy(update={"max_job_data_bytes": 16 * 2**20})
    data = dict(SEED_DATA, x1={"dtype": "float64", "shape": [n], "data": [0.5] * n})
    with starlette_test_client()(create_app(roomy)) as client:
        resp = client.post("/v1/jobs", json=job_body(data=data), headers=api.headers("tenant-a"))
        problem = assert_problem(resp, (413, 422))
        assert any(loc.startswith("/data/x1") for loc in locations(problem)), problem
        # A declared shape far over every limit, with no data: refused from the declaration alone.
        huge = dict(SEED_DATA, x1={"dtype": "float64", "shape": [10**12], "data": []})
        resp = in_thread(lambda: client.post("/v1/jobs", json=job_body(data=huge), headers=api.headers("tenant-a")),
                         timeout=10)
        assert_problem(resp, (413, 422))


def test_job_data_over_limit(api, settings):
    # Three tensors, each under the element limit, together over max_job_data_bytes (float64).
    n = settings.max_job_data_bytes // (3 * 8) + 100
    assert n <= settings.max_tensor_elements
    column = {"dtype": "float64", "shape": [n], "data": [0.5] * n}
    resp = api.post("/v1/jobs", json=job_body(data={"x1": column, "x2": column, "y": column}))
    assert_problem(resp, 413)


def test_eval_data_counts_toward_the_job_data_limit(api, store, settings):
    """Data and eval data each under max_job_data_bytes, together over it: a 413 naming the
    limit, and nothing stored. Together just under it: accepted, and stored within it."""
    def columns(rows: int) -> dict:
        column = {"dtype": "float64", "shape": [rows], "data": [0.5] * rows}
        return {"x1": column, "x2": column, "y": {**column, "data": [1.0] * rows}}

    half = settings.max_job_data_bytes // (2 * 3 * 8)  # rows of three float64 columns in half the limit
    listing = store.tenant_key("tenant-a", "jobs")
    before = store._r.zcard(listing)
    resp = api.post("/v1/jobs", json=job_body(data=columns(half), eval_data=columns(half + 1), eval_every=10))
    problem = assert_problem(resp, 413)
    assert problem.get("limit") == settings.max_job_data_bytes, problem
    assert str(settings.max_job_data_bytes) in problem["detail"]
    assert store._r.zcard(listing) == before

    job = submit(api, data=columns(half), eval_data=columns(half), eval_every=10, steps=5)
    stored = [store.get_blob(job["id"], part) for part in ("data", "eval_data")]
    assert sum(a.nbytes for blob in stored for a in decode_tensors(blob).values()) <= settings.max_job_data_bytes
    assert wait_job(api, job["id"])["state"] == "succeeded"


@pytest.mark.parametrize("asked", [None, 5, "max", "max+1", 10**9])
def test_the_stored_time_limit_is_capped(api, store, settings, asked):
    """What the job is stored (and sent) with: the time limit asked for, else the default, never
    more than max_time_limit_s (a longer one is capped, not refused)."""
    wanted = {"max": settings.max_time_limit_s, "max+1": settings.max_time_limit_s + 1}.get(asked, asked)
    job = submit(api, time_limit_s=wanted, steps=5)
    stored = store.get_job(job["id"]).spec["time_limit_s"]
    assert stored == min(wanted or settings.default_time_limit_s, settings.max_time_limit_s)
    wait_job(api, job["id"])


def test_steps_over_limit(api, settings):
    problem = assert_problem(api.post("/v1/jobs", json=job_body(steps=settings.max_steps + 1)), 422)
    assert "/steps" in locations(problem), problem
    problem = assert_problem(api.post("/v1/jobs", json=job_body(steps=0)), 422)
    assert "/steps" in locations(problem), problem
    # Epochs count too: 60 examples in batches of 16 are 4 steps per epoch.
    epochs = settings.max_steps // 4 + 1
    problem = assert_problem(api.post("/v1/jobs", json=job_body(steps=None, epochs=epochs)), 422)
    assert "/epochs" in locations(problem), problem
    problem = assert_problem(api.post("/v1/jobs", json=job_body(steps=None)), 422)  # neither steps nor epochs
    assert problem.get("errors"), problem


def test_explain(api, settings):
    graph_id = stored_graph_id(api, load_json("sigmoid_primitives.json"))
    inputs = load_json("data/seed_one_example.json")
    resp = api.post(f"/v1/graphs/{graph_id}/explain", json={"inputs": inputs})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    graph = graphspec.load(EXAMPLES / "sigmoid_primitives.json")
    expected = runtime.explain(graph, runtime.load_tensors(EXAMPLES / "data" / "seed_one_example.json"),
                               runtime.init_params(graph)).to_dict()
    assert body["loss"] == pytest.approx(expected["loss"])
    got = {n["name"]: n for n in body["nodes"]}
    for node in expected["nodes"]:
        assert got[node["name"]]["value"] == pytest.approx(node["value"])
        if node["grad"] is not None:
            assert got[node["name"]]["grad"] == pytest.approx(node["grad"])

    n = settings.max_explain_elements + 1
    big = {k: {"dtype": "float64", "shape": [n], "data": [1.0] * n} for k in ("x1", "x2", "y")}
    assert_problem(api.post(f"/v1/graphs/{graph_id}/explain", json={"inputs": big}), (413, 422))
    problem = assert_problem(api.post(f"/v1/graphs/{graph_id}/explain", json={"inputs": {}}), 422)
    assert problem.get("errors"), problem



def test_explain_counts_the_values_it_would_compute_not_only_the_inputs(api, settings):
    """One input element broadcast against an [n] and an [n, 1] parameter is n*n values per
    node: refused before anything is computed, though every tensor sent is small."""
    n = 64
    assert n * n > settings.max_explain_elements and 2 * n < settings.max_explain_elements
    doc = {"format": "chainrule.graph", "version": "1.0", "name": "broadcast_bomb",
           "inputs": {"x": {"dtype": "float64", "shape": [1]}},
           "parameters": {"a": {"dtype": "float64", "shape": [n], "init": {"kind": "zeros"}},
                          "b": {"dtype": "float64", "shape": [n, 1], "init": {"kind": "zeros"}}},
           "nodes": [{"id": "xa", "op": "mul", "inputs": ["x", "a"]}, {"id": "outer", "op": "add", "inputs": ["xa", "b"]},
                     {"id": "loss", "op": "sum", "inputs": ["outer"]}],
           "outputs": {"loss": "loss"}, "loss": "loss"}
    graph_id = stored_graph_id(api, doc)
    problem = assert_problem(api.post(f"/v1/graphs/{graph_id}/explain",
                                      json={"inputs": {"x": {"dtype": "float64", "shape": [1], "data": [1.0]}}}), 413)
    assert "would show" in problem["detail"] and problem["errors"][0]["location"] == "/inputs"

# -- malformed bodies -------------------------------------------------------------------------
@pytest.mark.parametrize("url", ["/v1/jobs", "/v1/graphs"])
@pytest.mark.parametrize("content,content_type", [
    (b'{"graph": ', "application/json"),
    (b"\xc1\xc1\xc1 not msgpack", "application/msgpack"),
    (b"", "application/json"),
    (b"\xff\xfe{}", "application/json"),
    (b'{"a": 1, "a": 2}', "application/json"),
    (b'{"a": NaN}', "application/json"),
    (b"[1, 2, 3]", "application/json"),
    (b'"just a string"', "application/json"),
    (msgpack.packb([1, 2]), "application/msgpack"),
])
def test_malformed_bodies(api, url, content, content_type):
    resp = api.post(url, content=content, headers={"Content-Type": content_type})
    assert_problem(resp, (400, 422))


def test_unsupported_content_type(api):
    assert_problem(api.post("/v1/jobs", content=b"a=b", headers={"Content-Type": "text/plain"}), 415)


@pytest.mark.parametrize("overrides,location", [
    ({"steps": "ten"}, "/steps"),
    ({"steps": 1.5}, "/steps"),
    ({"batch_size": -1}, "/batch_size"),
    ({"shuffle": "yes"}, "/shuffle"),
    ({"gradients": "some"}, "/gradients"),
    ({"stepz": 5}, "/stepz"),
    ({"optimizer": "sgd"}, "/optimizer"),
    ({"optimizer": {"lr": 0.1}}, "/optimizer/name"),
    ({"data": [1, 2]}, "/data"),
    ({"report_every": 0}, "/report_every"),
])
def test_wrong_types_and_unknown_fields(api, overrides, location):
    problem = assert_problem(api.post("/v1/jobs", json=job_body(**overrides)), 422)
    assert location in locations(problem), problem


@pytest.mark.parametrize("mutate,location_prefix", [
    (lambda d: d.pop("y"), "/data"),
    (lambda d: d.update(x1={"dtype": "float32", "shape": [60], "data": [0.5] * 60}), "/data/x1"),
    (lambda d: d.update(x1={"dtype": "float64", "shape": [59], "data": [0.5] * 59}), "/data"),
    (lambda d: d.update(x1={"dtype": "float64", "shape": [60], "data": [0.5] * 59}), "/data/x1"),
    (lambda d: d.update(x1={"dtype": "float128", "shape": [1], "data": [0.5]}), "/data/x1"),
])
def test_data_that_does_not_fit_the_graph(api, mutate, location_prefix):
    data = copy.deepcopy(SEED_DATA)
    mutate(data)
    problem = assert_problem(api.post("/v1/jobs", json=job_body(data=data)), 422)
    assert any(loc.startswith(location_prefix) for loc in locations(problem)), problem


def test_job_validation_of_graph_source_and_optimizer(api):
    assert_problem(api.post("/v1/jobs", json=job_body(graph=None)), 422)  # neither graph nor graph_id
    assert_problem(api.post("/v1/jobs", json=job_body(graph_id="sha256:" + "1" * 64)), (404, 422))  # both
    assert_problem(api.post("/v1/jobs", json=job_body(graph=None, graph_id="sha256:" + "1" * 64)), (404, 422))
    problem = assert_problem(api.post("/v1/jobs", json=job_body(optimizer={"name": "sgdd", "lr": 0.1})), 422)
    assert any(loc.startswith("/optimizer") for loc in locations(problem)), problem
    problem = assert_problem(api.post("/v1/jobs", json=job_body(optimizer={"name": "sgd", "lr": -1})), 422)
    assert any(loc.startswith("/optimizer") for loc in locations(problem)), problem


def test_msgpack_job_submission(api):
    data = {name: graphspec.encode_tensor_raw(arr)
            for name, arr in runtime.load_tensors(EXAMPLES / "data" / "seed_data.json").items()}
    body = graphspec.codec.pack({"graph": SEED_DOC, "data": data, "optimizer": OPTIMIZER, "steps": 10,
                                 "batch_size": 16, "report_every": 5})
    resp = api.post("/v1/jobs", content=body, headers={"Content-Type": "application/msgpack"})
    assert resp.status_code == 202, resp.text
    done = wait_job(api, resp.json()["id"])
    assert done["state"] == "succeeded"
    expected, _ = local_run({"optimizer": OPTIMIZER, "steps": 10, "batch_size": 16})
    assert done["loss"] == pytest.approx(expected.losses[-1], rel=1e-12)

    # Every job route answers msgpack when asked, with the same content as its JSON.
    msgpack_only = {"Accept": "application/msgpack"}
    job_id = done["id"]
    resp = api.get(f"/v1/jobs/{job_id}", headers=msgpack_only)
    assert resp.headers["content-type"].startswith("application/msgpack") and "Accept" in resp.headers["vary"]
    assert msgpack.unpackb(resp.content) == api.get(f"/v1/jobs/{job_id}").json()  # finished: it cannot change
    listed = msgpack.unpackb(api.get("/v1/jobs?limit=3", headers=msgpack_only).content)
    assert job_id in [j["id"] for j in listed["jobs"]] and "next_cursor" in listed
    replay = api.post("/v1/jobs", content=body, headers={"Content-Type": "application/msgpack",
                                                         "Idempotency-Key": f"mp-{job_id}", **msgpack_only})
    assert replay.status_code == 202 and msgpack.unpackb(replay.content)["state"] == "queued"
    assert replay.headers["location"] == f"/v1/jobs/{msgpack.unpackb(replay.content)['id']}"
    replay_id = msgpack.unpackb(replay.content)["id"]
    cancelled = api.post(f"/v1/jobs/{replay_id}/cancel", headers=msgpack_only)
    if cancelled.status_code == 409:  # the worker finished the short job first: cancel refuses, as documented
        assert api.get(f"/v1/jobs/{replay_id}").json()["state"] == "succeeded"
    else:
        assert cancelled.status_code == 202
        assert msgpack.unpackb(cancelled.content)["state"] in ("cancelling", "cancelled")
        # Accepted: the job ends cancelled (a worker that ignored the request would finish it).
        assert wait_job(api, replay_id)["state"] == "cancelled"


def test_unknown_job_is_404(api):
    for method, url in [("GET", "/v1/jobs/job_nope"), ("GET", "/v1/jobs/job_nope/steps"),
                        ("GET", "/v1/jobs/job_nope/result"), ("POST", "/v1/jobs/job_nope/cancel"),
                        ("GET", "/v1/jobs/job_nope/events")]:
        assert_problem(in_thread(lambda: api.request(method, url), timeout=10), 404)
