"""A job's step history is budgeted at submit: one request cannot fill Redis.

The case a new user hit: a wide model with ``gradients: "full"`` and ``report_every: 1``
for many steps was accepted and wrote a megabyte of history per step. Now the submission
is refused with a located 422 that says how to fit, and the suggested settings are accepted.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from graphspec import GraphBuilder, dumps
from graphspec.codec import parse
from graphspec.tensors import encode_tensor_json
from worker.store import StepRecord, encode_tensors

from .conftest import wait_for_state

pytestmark = pytest.mark.integration

WIDTH = 96  # 96 x 96 float32 = 36 KiB of gradient per entry (the test settings cap tensors at 20,000 elements)


def wide_job(**overrides) -> dict:
    g = GraphBuilder("wide", dtype="float32")
    x, y = g.input("x", ["N", WIDTH]), g.input("y", ["N", WIDTH])
    w = g.param("w", [WIDTH, WIDTH], init="zeros")
    g.loss(g.mse(x @ w, y, name="L"))
    rng = np.random.default_rng(0)
    data = {name: encode_tensor_json(rng.normal(size=(4, WIDTH)).astype(np.float32)) for name in ("x", "y")}
    body = {"graph": parse(dumps(g.build())), "data": data, "optimizer": {"name": "sgd", "lr": 1e-3},
            "steps": 400_000, "report_every": 1, "gradients": "full"}
    body.update(overrides)
    return body


def problem(resp) -> dict:
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    return resp.json()


def test_full_gradients_every_step_are_refused_with_how_to_fit(api, settings):
    body = problem(api.post("/v1/jobs", json=wide_job()))
    assert body["type"].endswith("history-too-large")
    [error] = body["errors"]
    assert error["location"] == "/report_every" and error["code"] == "history_too_large"
    assert f"{settings.max_job_history_bytes / 2**20:.3g} MiB of history" in body["detail"]
    assert 'gradients: "norms"' in body["detail"]
    suggested = int(re.search(r"set report_every to (\d+) or more", body["detail"]).group(1))

    per_entry = StepRecord.size_bound({"w": (np.dtype(np.float32), (WIDTH, WIDTH))}, "full")
    assert -(-400_000 // suggested) * per_entry <= settings.max_job_history_bytes  # the byte cap binds here
    assert -(-400_000 // (suggested - 1)) * per_entry > settings.max_job_history_bytes

    # the advice works: the suggested cadence is accepted (then cancelled: it is a long job)
    accepted = api.post("/v1/jobs", json=wide_job(report_every=suggested))
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["id"]
    api.post(f"/v1/jobs/{job_id}/cancel")
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] in ("cancelling", "cancelled")


def test_more_entries_than_a_job_keeps_are_refused_not_trimmed(api, settings):
    steps = settings.stream_maxlen * 4
    body = problem(api.post("/v1/jobs", json=wide_job(steps=steps, gradients="none")))
    assert body["errors"][0]["location"] == "/report_every"
    assert f"a job keeps at most {settings.stream_maxlen} entries" in body["detail"]
    assert body["detail"].endswith("set report_every to 4 or more")
    accepted = api.post("/v1/jobs", json=wide_job(steps=steps, gradients="none", report_every=4))
    assert accepted.status_code == 202, accepted.text
    api.post(f"/v1/jobs/{accepted.json()['id']}/cancel")


def test_size_bound_covers_what_a_worker_writes(store, settings):
    """The bound is what a real entry takes as written, for every gradients option."""
    rng = np.random.default_rng(3)
    params = {"w": rng.normal(size=(7, 5)).astype(np.float32), "b": rng.normal(size=5), "s": np.float64(2.5)}
    shapes = {n: (np.asarray(v).dtype, np.shape(v)) for n, v in params.items()}
    for gradients in ("none", "norms", "full"):
        record = StepRecord(step=123_456, loss=-1.2345678901234567e-300, time=1.7e9 + 0.123456789,
                            grad_norms={} if gradients == "none" else {n: 1.2345678901234567e-10 for n in params},
                            eval_loss=0.1234567890123456, grads=encode_tensors(params) if gradients == "full" else None)
        written = sum(len(str(k)) + len(v if isinstance(v, bytes) else str(v)) for k, v in record.to_fields().items())
        assert written <= StepRecord.size_bound(shapes, gradients), gradients


def test_when_one_entry_of_full_gradients_is_over_the_cap_norms_are_the_way(settings):
    from service.limits import check_history_budget
    from service.problems import ProblemError

    graph = GraphBuilder("wide", dtype="float32")
    x, y = graph.input("x", ["N", WIDTH]), graph.input("y", ["N", WIDTH])
    graph.loss(graph.mse(x @ graph.param("w", [WIDTH, WIDTH], init="zeros"), y, name="L"))
    built = graph.build()
    small = settings.model_copy(update={"max_job_history_bytes": 10_000})
    with pytest.raises(ProblemError) as refused:
        check_history_budget(built, 10, 1, "full", small)
    [error] = refused.value.errors
    assert error["location"] == "/gradients" and "report_every" not in error["message"]
    assert 'gradients: "norms"' in error["message"]
    check_history_budget(built, 10, 1, "norms", small)  # fits: nothing raised
