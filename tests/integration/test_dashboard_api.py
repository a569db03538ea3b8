"""Issue #13's API additions (what the dashboard, and any client, reads), against a real Redis and worker:

* the job's series key (worker/store.py): the stream's accepted entries as float64 rows, best_loss,
  the fallback to the stream, expiry with the job's other keys;
* ``GET /v1/jobs/{id}/steps?max_points=N``: downsampled pages of real entries that keep every spike,
  the same from the series and from the stream;
* ``Accept: text/csv``: the whole history, streamed page by page, with a download filename;
* the job resource's ``best_loss``, ``settings``, ``data`` and ``eval_data`` (null for older hashes);
* ``GET /v1/jobs/{id}/data``: rows of the training data;
* ``POST /v1/jobs?dry_run=true``: every check, nothing stored or queued;
* ``GET /v1/graphs/{id}/analysis``: execution order and inferred types;
* every new route: located 422s for bad parameters and 404 for another tenant.
"""

from __future__ import annotations

import csv
import io
import json
import math
import uuid

import msgpack
import numpy as np
import pytest

from service.app import create_app
from worker.store import StepRecord, encode_tensors, now

from .conftest import API_KEYS, starlette_test_client
from .test_api import (SEED_DATA, SEED_DOC, assert_problem, job_body, load_json, locations, stored_graph_id, submit,
                       wait_job)

pytestmark = pytest.mark.integration

SEED_ARRAYS = {name: np.array(t["data"], dtype=t["dtype"]) for name, t in SEED_DATA.items()}
PARAMS = ("w1", "w2", "b")


# -- helpers -----------------------------------------------------------------------------------
def all_steps(api, job_id: str, tenant: str = "tenant-a") -> list[dict]:
    """The whole history through the paged JSON route."""
    out, after = [], 0
    while True:
        body = api.get(f"/v1/jobs/{job_id}/steps", params={"after": after, "limit": 1000}, tenant=tenant).json()
        out += body["steps"]
        if body["next_after"] is None:
            return out
        after = body["next_after"]


def record(step: int, loss: float, *, norms: dict | None = None, eval_loss: float | None = None) -> StepRecord:
    return StepRecord(step, loss, norms if norms is not None else {"w1": 0.1 * step, "w2": 1.0, "b": 0.5},
                      1_800_000_000.0 + step / 1000, eval_loss)


def synthetic_job(store, api, records: list[StepRecord], *, finish: bool = True, tenant: str = "tenant-a") -> str:
    """A job of ``tenant`` whose history is ``records``, written through the worker's fenced
    report path (JobStore.report_steps) under a lease this test holds; no worker runs it."""
    graph_id = stored_graph_id(api, tenant=tenant)
    spec = {"optimizer": {"name": "sgd", "lr": 0.5}, "steps": records[-1].step if records else 1}
    job_id, _ = store.create_job(tenant, graph_id, spec, encode_tensors(SEED_ARRAYS))
    store.mark_sent(job_id)
    token = f"test:{uuid.uuid4().hex}"
    store._r.set(store.job_key(job_id, "lease"), token)
    moved, _ = store.transition(job_id, ["queued"], "running", token=token, started=repr(now()), lease=token)
    assert moved
    for i in range(0, len(records), 500):
        batch = records[i:i + 500]
        assert store.report_steps(job_id, token, batch, {"step": batch[-1].step,
                                                         "loss": repr(batch[-1].loss)})[0] == []
    if finish:
        assert store.transition(job_id, ["running"], "succeeded", token=token, finished=repr(now()))[0]
    store.release_lease(job_id, token)
    return job_id


def spiky_history(n: int, seed: int = 0) -> tuple[list[StepRecord], dict[str, int]]:
    """``n`` entries of a smooth decreasing loss with noise, and a planted spike in each column
    (loss up, loss down, eval up, each norm up): their steps by name."""
    rng = np.random.default_rng(seed)
    loss = 1.0 / np.sqrt(np.arange(1, n + 1)) + rng.normal(0, 1e-4, n)
    norms = np.abs(rng.normal(1.0, 0.01, (n, 3)))
    spikes = {"loss_up": n // 7, "loss_down": n // 3, "eval_up": n // 2 + 1, "w1": 2 * n // 3, "w2": 5 * n // 6,
              "b": n - 3}
    loss[spikes["loss_up"]] = 50.0
    loss[spikes["loss_down"]] = -1.0
    norms[spikes["w1"], 0] = 1e3
    norms[spikes["w2"], 1] = 1e3
    norms[spikes["b"], 2] = 1e3
    out = []
    for i in range(n):
        evaluated = i % 10 == 9 or i == spikes["eval_up"]
        eval_loss = (99.0 if i == spikes["eval_up"] else float(loss[i]) * 1.1) if evaluated else None
        out.append(record(i + 1, float(loss[i]), norms=dict(zip(PARAMS, map(float, norms[i]))), eval_loss=eval_loss))
    return out, {name: i + 1 for name, i in spikes.items()}


def without_grads(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k != "grads"}


# -- the series key (worker/store.py) -------------------------------------------------------------
def test_series_holds_exactly_the_accepted_entries_and_best_loss(store, api):
    job_id = synthetic_job(store, api, [record(1, 0.9), record(2, 0.7, eval_loss=0.8)], finish=False)
    token = "again"
    store._r.set(store.job_key(job_id, "lease"), token)
    # A replay (steps 2, then a lower loss at an already written step) is refused: no series row, no best_loss.
    refused, _ = store.report_steps(job_id, token, [record(2, 0.01), record(3, float("nan")), record(4, 0.5)],
                                    {"step": 4})
    assert refused == [2]
    series = store.read_series(job_id)
    assert series is not None and series.source == "series"
    assert series.columns == ["step", "time", "loss", "eval_loss", "grad_norm:w1", "grad_norm:w2", "grad_norm:b"]
    stream = store.read_steps(job_id, limit=100)
    assert [r.step for r in stream] == [1, 2, 3, 4]
    for row, rec in zip(series.values, stream):
        assert row[0] == rec.step and row[1] == rec.time and row[4:].tolist() == [rec.grad_norms[p] for p in PARAMS]
        assert (math.isnan(row[2]) and math.isnan(rec.loss)) or row[2] == rec.loss
        assert (math.isnan(row[3]) and rec.eval_loss is None) or row[3] == rec.eval_loss
    job = store.get_job(job_id)
    assert (job.best_loss, job.best_loss_step) == (0.5, 4)  # not the refused 0.01, not NaN


def test_the_stream_is_read_when_the_series_does_not_hold_every_entry(store, api):
    records = [record(i, 1.0 / i) for i in range(1, 41)]
    job_id = synthetic_job(store, api, records)
    full = store.read_step_series(job_id)
    assert full.source == "series" and len(full) == 40
    # A job written before the series existed (or partly by an older worker): rows missing.
    store._r.set(store.job_key(job_id, "series"), full.values[:30].tobytes())
    assert store.read_series(job_id) is None
    fallback = store.read_step_series(job_id, page=7)  # several pages
    assert fallback.source == "stream" and fallback.columns == full.columns
    np.testing.assert_array_equal(fallback.values, full.values)
    store._r.delete(store.job_key(job_id, "series"))
    assert store.read_step_series(job_id).source == "stream"


def test_a_batch_naming_other_parameters_writes_no_rows(store, api):
    job_id = synthetic_job(store, api, [record(1, 0.9)], finish=False)
    store._r.set(store.job_key(job_id, "lease"), "t")
    store.report_steps(job_id, "t", [record(2, 0.8, norms={"other": 1.0})], {"step": 2})
    assert store.read_series(job_id) is None  # one row for two entries: not used
    assert store.read_step_series(job_id).source == "stream"


def test_series_keys_expire_with_the_job(store, api, settings):
    job_id = synthetic_job(store, api, [record(1, 0.9), record(2, 0.8)])
    for part in ("series", "series:columns", "steps", None):
        ttl = store._r.ttl(store.job_key(job_id, part))
        assert 0 < ttl <= settings.retention_s, (part, ttl)


def test_a_trained_job_has_its_series_and_best_loss(api, store):
    job = submit(api, steps=60, report_every=5)
    done = wait_job(api, job["id"])
    assert done["state"] == "succeeded", done
    steps = all_steps(api, job["id"])
    series = store.read_series(job["id"])
    assert series is not None and len(series) == len(steps) == 12
    assert series.values[:, 0].tolist() == [s["step"] for s in steps]
    assert series.values[:, 2].tolist() == [s["loss"] for s in steps]
    best = min(steps, key=lambda s: s["loss"])
    assert (done["best_loss"], done["best_loss_step"]) == (best["loss"], best["step"])


# -- downsampled pages --------------------------------------------------------------------------
def test_downsampled_steps_are_real_entries_that_keep_every_spike(api, store):
    records, spikes = spiky_history(3000)
    job_id = synthetic_job(store, api, records)
    full = {s["step"]: s for s in all_steps(api, job_id)}
    assert len(full) == 3000

    resp = api.get(f"/v1/jobs/{job_id}/steps", params={"max_points": 200})
    assert resp.status_code == 200, resp.text
    page = resp.json()
    assert page["downsampled"] is True and page["next_after"] is None
    steps = [s["step"] for s in page["steps"]]
    assert 100 < len(steps) <= 200, len(steps)  # close to the budget, never over it
    assert steps == sorted(set(steps)) and steps[0] == 1 and steps[-1] == 3000
    for entry in page["steps"]:
        assert entry == without_grads(full[entry["step"]])  # real entries, unchanged
    assert set(spikes.values()) <= set(steps), {k: v for k, v in spikes.items() if v not in steps}

    # The same page from the stream, for a job whose series is missing.
    store._r.delete(store.job_key(job_id, "series"))
    assert store.read_series(job_id) is None
    assert api.get(f"/v1/jobs/{job_id}/steps", params={"max_points": 200}).json() == page
    # msgpack carries the same page.
    packed = api.get(f"/v1/jobs/{job_id}/steps", params={"max_points": 200},
                     headers={"Accept": "application/msgpack"})
    assert packed.headers["content-type"] == "application/msgpack"
    assert msgpack.unpackb(packed.content) == page


def test_downsampling_from_a_step_on(api, store):
    records, _ = spiky_history(500, seed=1)
    job_id = synthetic_job(store, api, records)
    page = api.get(f"/v1/jobs/{job_id}/steps", params={"max_points": 50, "after": 400}).json()
    steps = [s["step"] for s in page["steps"]]
    assert page["downsampled"] and steps[0] == 401 and steps[-1] == 500 and len(steps) <= 50


@pytest.mark.parametrize("finish", [True, False])
def test_max_points_above_the_entries_returns_them_all(api, store, finish):
    records = [record(i, 1.0 / i, eval_loss=0.5 if i == 3 else None) for i in range(1, 21)]
    job_id = synthetic_job(store, api, records, finish=finish)
    page = api.get(f"/v1/jobs/{job_id}/steps", params={"max_points": 20}).json()
    assert page["downsampled"] is False
    assert page["steps"] == api.get(f"/v1/jobs/{job_id}/steps", params={"limit": 1000}).json()["steps"]
    assert [s["step"] for s in page["steps"]] == list(range(1, 21))
    # like any page: null once a finished job has nothing left, else where to continue
    assert page["next_after"] == (None if finish else 20)


def test_downsampled_pages_never_carry_gradients(api):
    job = submit(api, steps=40, report_every=1, gradients="full")
    wait_job(api, job["id"])
    page = api.get(f"/v1/jobs/{job['id']}/steps", params={"max_points": 16}).json()
    assert page["downsampled"] and all("grads" not in s for s in page["steps"])
    assert "grads" in api.get(f"/v1/jobs/{job['id']}/steps", params={"limit": 1}).json()["steps"][0]


def test_a_page_without_max_points_says_it_is_not_downsampled(api):
    job = submit(api, steps=10, report_every=5)
    wait_job(api, job["id"])
    page = api.get(f"/v1/jobs/{job['id']}/steps").json()
    assert page["downsampled"] is False and [s["step"] for s in page["steps"]] == [5, 10]


@pytest.mark.parametrize("value", ["15", "20001", "0", "-5", "many", "1.5"])
def test_max_points_out_of_bounds_is_a_located_422(api, value):
    job = submit(api, steps=5, report_every=5)
    problem = assert_problem(api.get(f"/v1/jobs/{job['id']}/steps", params={"max_points": value}), 422)
    assert locations(problem) == ["/query/max_points"], problem


# -- CSV --------------------------------------------------------------------------------------
def read_csv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def test_csv_export_streams_the_whole_history(api, store):
    records, _ = spiky_history(2500, seed=2)  # more than two CSV pages
    records[10] = record(11, float("inf"))
    job_id = synthetic_job(store, api, records)
    resp = api.get(f"/v1/jobs/{job_id}/steps", headers={"Accept": "text/csv"})
    assert resp.status_code == 200, resp.text[:500]
    assert resp.headers["content-type"].startswith("text/csv")
    assert resp.headers["content-disposition"] == f'attachment; filename="{job_id}-steps.csv"'
    header = resp.text.splitlines()[0]
    assert header == "step,time,loss,eval_loss,grad_norm:w1,grad_norm:w2,grad_norm:b"
    rows = read_csv(resp.text)
    assert len(rows) == 2500
    for row, rec in zip(rows, records):
        assert int(row["step"]) == rec.step and float(row["time"]) == rec.time
        assert float(row["loss"]) == rec.loss  # exact: numbers are written with repr
        assert row["eval_loss"] == ("" if rec.eval_loss is None else repr(rec.eval_loss))
        assert [float(row[f"grad_norm:{p}"]) for p in PARAMS] == [rec.grad_norms[p] for p in PARAMS]
    assert rows[10]["loss"] == "inf"

    # after= applies; limit and max_points do not
    tail = read_csv(api.get(f"/v1/jobs/{job_id}/steps", params={"after": 2400, "limit": 5, "max_points": 16},
                            headers={"Accept": "text/csv"}).text)
    assert [int(r["step"]) for r in tail] == list(range(2401, 2501))


def test_csv_of_a_job_without_norms_or_entries(api):
    job = submit(api, steps=10, report_every=5, gradients="none")
    wait_job(api, job["id"])
    resp = api.get(f"/v1/jobs/{job['id']}/steps", headers={"Accept": "text/csv"})
    # no gradient norms; the metrics every entry has (the seed graph's bce loss: an accuracy)
    assert resp.text.splitlines()[0] == "step,time,loss,eval_loss,metric:lr,metric:accuracy"
    assert [r["step"] for r in read_csv(resp.text)] == ["5", "10"]
    empty = api.get(f"/v1/jobs/{job['id']}/steps", params={"after": 10}, headers={"Accept": "text/csv"})
    assert empty.text == "step,time,loss,eval_loss\r\n"


@pytest.mark.parametrize("accept, csv_expected", [
    ("text/csv", True), ("text/csv;q=0.9, application/json;q=0.5", True), ("*/*", False),
    ("application/json, text/csv;q=0.5", False), ("text/csv;q=0, */*", False), ("text/*", True)])
def test_csv_is_chosen_by_accept(api, accept, csv_expected):
    job = submit(api, steps=5, report_every=5)
    wait_job(api, job["id"])
    resp = api.get(f"/v1/jobs/{job['id']}/steps", headers={"Accept": accept})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/csv" if csv_expected else "application/json"), accept


# -- the job resource ---------------------------------------------------------------------------
def test_job_resource_has_best_loss_settings_and_data_summaries(api):
    eval_data = {name: {**tensor, "shape": [20], "data": tensor["data"][:20]} for name, tensor in SEED_DATA.items()}
    job = submit(api, eval_data=eval_data, eval_every=10, optimizer={"name": "adam", "lr": 0.1}, time_limit_s=10**6)
    assert job["settings"]["optimizer"]["name"] == "adam"  # known at once, as submitted
    done = wait_job(api, job["id"])
    assert done["state"] == "succeeded", done
    steps = all_steps(api, job["id"])
    best = min(steps, key=lambda s: s["loss"])
    assert done["best_loss"] == best["loss"] and done["best_loss_step"] == best["step"]
    from runtime.spec import default_of, settings
    assert done["settings"] == {
        **{f.name: default_of(f) for f, _ in settings()},  # every setting, the defaults included
        "optimizer": {"name": "adam", "lr": 0.1, "betas": [0.9, 0.999], "eps": 1e-08, "weight_decay": 0.0},
        "steps": 60, "epochs": None, "batch_size": 16, "seed": 0, "shuffle": True, "report_every": 5,
        "gradients": "norms", "checkpoint_every": None, "eval_every": 10, "time_limit_s": 600}  # capped
    column = {"dtype": "float64", "per_example": True}
    assert done["data"] == {"examples": 60, "bytes": 3 * 60 * 8,
                            "inputs": {name: {**column, "shape": [60]} for name in ("x1", "x2", "y")}}
    assert done["eval_data"] == {"examples": 20, "bytes": 3 * 20 * 8,
                                 "inputs": {name: {**column, "shape": [20]} for name in ("x1", "x2", "y")}}
    assert done["links"]["data"] == f"/v1/jobs/{job['id']}/data"
    assert api.get(done["links"]["data"]).json()["examples"] == 60
    listed = api.get("/v1/jobs", params={"limit": 200}).json()["jobs"]
    assert [j for j in listed if j["id"] == job["id"]][0]["settings"] == done["settings"]


def test_an_older_job_hash_renders_with_nulls(api, store):
    job_id = f"job_{uuid.uuid4().hex}"
    old = {"id": job_id, "tenant": "tenant-a", "state": "succeeded", "graph_id": "sha256:" + "0" * 64,
           "created": repr(now()), "step": 10, "total_steps": 10, "attempts": 1, "loss": "0.5",
           "spec": json.dumps({"optimizer": {"name": "sgd", "lr": 0.5}, "steps": 10, "report_every": 5})}
    store._r.hset(store.job_key(job_id), mapping=old)
    store._r.expire(store.job_key(job_id), 600)
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["best_loss"] is None and job["best_loss_step"] is None
    assert job["data"] is None and job["eval_data"] is None
    assert job["settings"]["optimizer"] == {"name": "sgd", "lr": 0.5}
    assert job["settings"]["steps"] == 10 and job["settings"]["time_limit_s"] is None
    # no spec at all, or one this version cannot read: settings null, the job still renders
    store._r.hdel(store.job_key(job_id), "spec")
    assert api.get(f"/v1/jobs/{job_id}").json()["settings"] is None
    store._r.hset(store.job_key(job_id), "spec", json.dumps({"optimizer": "sgd", "steps": "many"}))
    assert api.get(f"/v1/jobs/{job_id}").json()["settings"] is None
    # a job without a history yet: a downsampled page and a CSV are empty, not errors
    page = api.get(f"/v1/jobs/{job_id}/steps", params={"max_points": 16}).json()
    assert page == {"steps": [], "next_after": None, "downsampled": False}
    assert api.get(f"/v1/jobs/{job_id}/steps", headers={"Accept": "text/csv"}).text == "step,time,loss,eval_loss\r\n"


# -- data rows ----------------------------------------------------------------------------------
def test_data_rows(api):
    job = submit(api, steps=5, report_every=5)
    url = f"/v1/jobs/{job['id']}/data"
    body = api.get(url).json()
    assert body["examples"] == 60 and body["offset"] == 0 and body["count"] == 10
    for name, tensor in body["data"].items():
        assert tensor["shape"] == [10] and tensor["dtype"] == "float64"
        assert tensor["data"] == SEED_DATA[name]["data"][:10]
    tail = api.get(url, params={"offset": 55, "limit": 100}).json()
    assert tail["count"] == 5 and tail["data"]["y"]["data"] == SEED_DATA["y"]["data"][55:]
    packed = msgpack.unpackb(api.get(url, params={"offset": 3, "limit": 2},
                                     headers={"Accept": "application/msgpack"}).content)
    assert packed["count"] == 2 and packed["data"]["x1"]["shape"] == [2]
    raw = packed["data"]["x1"]["data"]  # raw little-endian bytes, msgpack extension type 1
    assert raw.code == 1 and np.frombuffer(raw.data, "<f8").tolist() == SEED_DATA["x1"]["data"][3:5]


@pytest.mark.parametrize("params, location", [
    ({"offset": 60}, "/query/offset"), ({"offset": -1}, "/query/offset"), ({"limit": 0}, "/query/limit"),
    ({"limit": 101}, "/query/limit"), ({"offset": "x"}, "/query/offset")])
def test_data_rows_bad_parameters_are_located_422s(api, params, location):
    job = submit(api, steps=5, report_every=5)
    problem = assert_problem(api.get(f"/v1/jobs/{job['id']}/data", params=params), 422)
    assert locations(problem) == [location], problem


def test_data_rows_leave_inputs_that_are_not_per_example_whole(api):
    doc = json.loads(json.dumps(SEED_DOC))
    doc["name"] = f"scaled-{uuid.uuid4().hex}"
    doc["inputs"]["scale"] = {"dtype": "float64", "shape": [2]}
    doc["nodes"].insert(0, {"id": "scale1", "op": "sum", "inputs": ["scale"], "attrs": {}})
    doc["nodes"][1]["inputs"] = ["x1", "scale1"]  # x1w1 = x1 * sum(scale)
    data = {**SEED_DATA, "scale": {"dtype": "float64", "shape": [2], "data": [0.5, 0.5]}}
    job = submit(api, graph=doc, data=data, steps=5, report_every=5)
    body = api.get(f"/v1/jobs/{job['id']}/data", params={"offset": 58, "limit": 5}).json()
    assert body["count"] == 2 and body["data"]["x1"]["shape"] == [2]
    assert body["data"]["scale"] == {"dtype": "float64", "shape": [2], "data": [0.5, 0.5]}
    assert job["data"]["inputs"]["scale"]["per_example"] is False


# -- dry run --------------------------------------------------------------------------------------
class RecordingCelery:
    def __init__(self):
        self.sent = []

    def send_task(self, *args, **kwargs):
        self.sent.append((args, kwargs))


def namespace_keys(store) -> set[str]:
    """This session's keys but Celery's."""
    return {k.decode() for k in store._r.scan_iter(match=f"{store.ns}:*", count=1000)
            if not k.startswith(f"{store.ns}:celery:".encode())}


def new_keys(store, before: set[str]) -> set[str]:
    """Keys that appeared since ``before``, but those of jobs that existed then (an earlier test's
    job may still be training on the shared worker: its checkpoint or result may appear)."""
    jobs = {k.split(":")[2] for k in before if k.startswith(f"{store.ns}:job:")}
    return {k for k in namespace_keys(store) - before
            if not (k.startswith(f"{store.ns}:job:") and k.split(":")[2] in jobs)}


def test_dry_run_checks_everything_and_stores_nothing(settings, store, celery_worker):
    app = create_app(settings)
    app.state.celery = RecordingCelery()
    doc = {**SEED_DOC, "name": f"dry-{uuid.uuid4().hex}"}
    with starlette_test_client()(app) as client:
        headers = {"Authorization": f"Bearer {API_KEYS['tenant-a']}", "Idempotency-Key": f"dry-{uuid.uuid4().hex}"}
        indexes = (store.queued_key, store.outbox_key, store.tenant_key("tenant-a", "jobs"))
        listed = {key: set(store._r.zrange(key, 0, -1)) for key in indexes}
        before = namespace_keys(store)
        resp = client.post("/v1/jobs", params={"dry_run": "true"}, headers=headers,
                           json=job_body(graph=doc, optimizer={"name": "momentum"}, epochs=2, steps=None))
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert new_keys(store, before) == set()  # nothing stored: no job, no graph, no idempotency key
        assert all(set(store._r.zrange(key, 0, -1)) <= listed[key] for key in indexes)  # no job queued or listed
        assert app.state.celery.sent == []
        assert "location" not in resp.headers
        assert body["dry_run"] is True and body["total_steps"] == 8  # 2 epochs x ceil(60 / 16) batches
        assert client.get(f"/v1/graphs/{body['graph_id']}", headers=headers).status_code == 404
        # stored as the optimizer it builds: "momentum" is SGD with momentum 0.9
        assert body["settings"]["optimizer"] == {"name": "sgd", "lr": 0.01, "momentum": 0.9,
                                                 "nesterov": False, "weight_decay": 0.0}
        assert body["settings"]["epochs"] == 2 and body["settings"]["steps"] is None
        assert body["data"]["examples"] == 60 and body["eval_data"] is None

        # The same body for real: the dry run said what it stores.
        real = client.post("/v1/jobs", json=job_body(graph=doc, optimizer={"name": "momentum"}, epochs=2, steps=None),
                           headers={"Authorization": f"Bearer {API_KEYS['tenant-a']}"})
        assert real.status_code == 202 and len(app.state.celery.sent) == 1
        stored = real.json()
        assert (stored["graph_id"], stored["total_steps"], stored["settings"], stored["data"]) == (
            body["graph_id"], body["total_steps"], body["settings"], body["data"])
        assert client.post(f"/v1/jobs/{stored['id']}/cancel", headers=headers).status_code == 202

        # msgpack answers too
        packed = client.post("/v1/jobs", params={"dry_run": "1"}, json=job_body(),
                             headers={"Authorization": f"Bearer {API_KEYS['tenant-a']}", "Accept": "application/msgpack"})
        assert packed.status_code == 200 and msgpack.unpackb(packed.content)["dry_run"] is True


@pytest.mark.parametrize("overrides, status, location", [
    ({"optimizer": {"name": "sgdd"}}, 422, "/optimizer/name"),
    ({"steps": 10, "report_every": 0}, 422, "/report_every"),
    ({"data": {**SEED_DATA, "x1": {"dtype": "float64", "shape": [3], "data": [1, 2, 3]}}}, 422, "/data/x2")])
def test_dry_run_answers_the_problems_a_submission_gets(api, overrides, status, location):
    dry = assert_problem(api.post("/v1/jobs", params={"dry_run": "true"}, json=job_body(**overrides)), status)
    real = assert_problem(api.post("/v1/jobs", json=job_body(**overrides)), status)
    assert location in locations(dry)
    assert {k: v for k, v in dry.items() if k != "instance"} == {k: v for k, v in real.items() if k != "instance"}


def test_dry_run_must_be_a_boolean(api):
    problem = assert_problem(api.post("/v1/jobs", params={"dry_run": "perhaps"}, json=job_body()), 422)
    assert locations(problem) == ["/query/dry_run"]


# -- graph analysis ---------------------------------------------------------------------------
def test_graph_analysis(api):
    graph_id = stored_graph_id(api)
    resp = api.get(f"/v1/graphs/{graph_id}/analysis")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["graph_id"] == graph_id
    assert body["order"] == ["x1w1", "x2w2", "s", "z", "a", "L"]
    assert body["types"]["x1"] == {"kind": "input", "dtype": "float64", "shape": ["N"]}
    assert body["types"]["w1"] == {"kind": "parameter", "dtype": "float64", "shape": []}
    assert body["types"]["z"] == {"kind": "node", "dtype": "float64", "shape": ["N"]}
    assert body["types"]["L"] == {"kind": "node", "dtype": "float64", "shape": []}
    assert set(body["types"]) == {"x1", "x2", "y", "w1", "w2", "b", "x1w1", "x2w2", "s", "z", "a", "L"}
    assert body["outputs"] == {"a": "a", "loss": "L"} and body["loss"] == "loss"
    packed = api.get(f"/v1/graphs/{graph_id}/analysis", headers={"Accept": "application/msgpack"})
    assert msgpack.unpackb(packed.content) == body


def test_graph_analysis_of_a_matrix_graph(api):
    doc = load_json("small_mlp.json")
    graph_id = stored_graph_id(api, doc)
    body = api.get(f"/v1/graphs/{graph_id}/analysis").json()
    assert body["types"]["x"] == {"kind": "input", "dtype": "float32", "shape": ["N", 4]}
    hidden = body["types"]["w1"]["shape"][1]
    assert body["types"]["xw1"] == {"kind": "node", "dtype": "float32", "shape": ["N", hidden]}
    assert body["types"]["logits"]["shape"] == ["N", 3]
    assert sorted(body["order"]) == sorted(n["id"] for n in doc["nodes"])
    position = {node: i for i, node in enumerate(body["order"])}
    for node in doc["nodes"]:  # every node comes after the nodes it reads
        assert all(position[ref] < position[node["id"]] for ref in node["inputs"] if ref in position)


# -- tenants ----------------------------------------------------------------------------------
def test_new_routes_are_tenant_isolated(api):
    graph_id = stored_graph_id(api, {**SEED_DOC, "name": f"only-a-{uuid.uuid4().hex}"})
    job = submit(api, graph=None, graph_id=graph_id, steps=5, report_every=5)
    wait_job(api, job["id"])
    for url, params, headers in [(f"/v1/jobs/{job['id']}/steps", {"max_points": 16}, {}),
                                 (f"/v1/jobs/{job['id']}/steps", {}, {"Accept": "text/csv"}),
                                 (f"/v1/jobs/{job['id']}/data", {}, {}),
                                 (f"/v1/graphs/{graph_id}/analysis", {}, {})]:
        assert api.get(url, params=params, headers=headers).status_code == 200, url
        assert_problem(api.get(url, params=params, headers=headers, tenant="tenant-b"), 404)
    # a dry run on another tenant's stored graph is the submission's 422 unknown_graph
    problem = assert_problem(api.post("/v1/jobs", params={"dry_run": "true"}, tenant="tenant-b",
                                      json=job_body(graph=None, graph_id=graph_id)), 422)
    assert locations(problem) == ["/graph_id"]
