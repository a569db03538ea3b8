"""Issue #17's training controls through the real stack (API, Redis, a Celery worker): schedules,
clipping and early stopping set at submit, checked there with located errors, and what a job
reports — every step entry's lr, grad_norm and accuracy (eval_accuracy at evaluations), the
same from the paged history, the downsampled page and the CSV export — and why it stopped."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

import graphspec
from runtime.schedules import Schedule

from .test_api import SEED_DATA, assert_problem, job_body, load_json, locations, submit, wait_job
from .test_dashboard_api import all_steps

pytestmark = pytest.mark.integration

EVAL_DATA = {name: {**tensor, "shape": [20], "data": tensor["data"][:20]} for name, tensor in SEED_DATA.items()}


def test_a_scheduled_clipped_job_reports_its_rates_norms_and_accuracy(api):
    job = submit(api, steps=40, batch_size=16, report_every=1, optimizer={"name": "sgd", "lr": 0.5},
                 schedule="cosine", warmup_steps=5, min_lr=0.05, clip_norm=0.2, eval_data=EVAL_DATA, eval_every=10)
    done = wait_job(api, job["id"])
    assert done["state"] == "succeeded", done
    assert done["stop_reason"] == "steps"
    steps = all_steps(api, job["id"])
    assert [s["step"] for s in steps] == list(range(1, 41))
    schedule = Schedule("cosine", warmup_steps=5, min_lr=0.05)
    assert [s["metrics"]["lr"] for s in steps] == pytest.approx([schedule.rate(0.5, n, 40) for n in range(1, 41)])
    # the norm before clipping is reported, and the gradients the update used are clipped to 0.2
    assert all(s["metrics"]["grad_norm"] > 0 for s in steps)
    clipped = [s for s in steps if s["metrics"]["grad_norm"] > 0.2]
    assert clipped, "the clip bound should bite on some steps"
    for s in clipped:
        assert sum(n * n for n in s["grad_norms"].values()) ** 0.5 == pytest.approx(0.2, rel=1e-4)
    assert all(0.0 <= s["metrics"]["accuracy"] <= 1.0 for s in steps)
    assert [s["step"] for s in steps if s["metrics"]["eval_accuracy"] is not None] == [10, 20, 30, 40]
    # the downsampled page (read from the series) and the CSV carry the same numbers
    page = api.get(f"/v1/jobs/{job['id']}/steps", params={"max_points": 16}).json()
    by_step = {s["step"]: s for s in steps}
    assert page["downsampled"]
    for entry in page["steps"]:
        assert entry["metrics"] == pytest.approx(by_step[entry["step"]]["metrics"], nan_ok=True)
    rows = list(csv.DictReader(io.StringIO(api.get(f"/v1/jobs/{job['id']}/steps",
                                                    headers={"Accept": "text/csv"}).text)))
    assert [float(r["metric:lr"]) for r in rows] == pytest.approx([s["metrics"]["lr"] for s in steps])
    result = api.get(f"/v1/jobs/{job['id']}/result").json()
    assert result["stop_reason"] == "steps" and result["metrics"]["accuracy"] == steps[-1]["metrics"]["accuracy"]
    assert result["eval_metrics"]["accuracy"] == steps[-1]["metrics"]["eval_accuracy"]


def test_early_stopping_through_the_service_restores_the_best_evaluation(api):
    job = submit(api, steps=3000, batch_size=16, report_every=50, optimizer={"name": "sgd", "lr": 0.5},
                 eval_data=EVAL_DATA, eval_every=10, patience=3, min_delta=1e-3, restore_best=True)
    done = wait_job(api, job["id"], timeout=60)
    assert done["state"] == "succeeded", done
    assert done["stop_reason"] == "patience" and done["step"] < 3000
    result = api.get(f"/v1/jobs/{job['id']}/result").json()
    assert result["stop_reason"] == "patience" and result["best_step"] is not None
    assert result["best_step"] % 10 == 0 and result["best_step"] < done["step"]


@pytest.mark.parametrize("overrides, location", [
    ({"schedule": "step"}, "/decay_steps"),
    ({"schedule": "linear", "warmup_steps": 60}, "/warmup_steps"),  # the whole run (60 steps) is warmup
    ({"schedule": "cosine", "min_lr": 5.0}, "/min_lr"),
    ({"patience": 3}, "/eval_every"),
    ({"patience": 3, "eval_every": 10}, "/eval_data"),
    ({"clip_norm": -1}, "/clip_norm"),
    ({"decay_rate": "fast", "schedule": "exponential"}, "/decay_rate"),
])
def test_controls_that_cannot_run_are_refused_at_submit_where_they_are(api, overrides, location):
    problem = assert_problem(api.post("/v1/jobs", json=job_body(**overrides)), 422)
    assert location in locations(problem), problem
    assert "Traceback" not in str(problem)



# -- warm start ----------------------------------------------------------------------------

def test_a_job_starts_from_a_finished_job_s_parameters(api):
    first = submit(api, steps=30, optimizer={"name": "sgd", "lr": 0.5})
    assert wait_job(api, first["id"])["state"] == "succeeded"
    trained = api.get(f"/v1/jobs/{first['id']}/result").json()["params"]
    # at learning rate 0 the second job's parameters are the first's, and its loss is theirs
    second = submit(api, steps=2, report_every=1, optimizer={"name": "sgd", "lr": 0.0}, init_from=first["id"])
    done = wait_job(api, second["id"])
    assert done["state"] == "succeeded", done
    assert done["settings"]["init_from"] == first["id"]
    assert api.get(f"/v1/jobs/{second['id']}/result").json()["params"] == trained
    fresh = submit(api, steps=2, report_every=1, optimizer={"name": "sgd", "lr": 0.0})
    wait_job(api, fresh["id"])
    warm_loss = all_steps(api, second["id"])[0]["loss"]
    assert warm_loss < all_steps(api, fresh["id"])[0]["loss"]  # trained parameters fit better than fresh ones


def test_a_warm_start_that_cannot_be_made_is_refused_at_init_from(api):
    finished = submit(api, steps=5)
    wait_job(api, finished["id"])
    cases = [
        ({"init_from": "job_" + "0" * 32}, "no job"),
        ({"init_from": "yesterday's"}, "job_[0-9a-f]{32}"),
    ]
    for overrides, words in cases:
        problem = assert_problem(api.post("/v1/jobs", json=job_body(**overrides)), 422)
        assert locations(problem) == ["/init_from"] and words in str(problem), problem
    # another tenant's job is not found either
    problem = assert_problem(api.post("/v1/jobs", json=job_body(init_from=finished["id"]), tenant="tenant-b"), 422)
    assert locations(problem) == ["/init_from"] and "no job" in problem["detail"]
    # a job still queued or running has no trained parameters yet
    long = submit(api, steps=100_000, report_every=1000)
    problem = assert_problem(api.post("/v1/jobs", json=job_body(init_from=long["id"])), 422)
    assert locations(problem) == ["/init_from"] and "not succeeded" in str(problem)
    api.post(f"/v1/jobs/{long['id']}/cancel")
    # a graph with other parameters: every mismatch named
    rng = np.random.default_rng(0)
    mlp_data = {"x": graphspec.encode_tensor_json(rng.normal(size=(8, 4)).astype(np.float32)),
                "labels": graphspec.encode_tensor_json(np.zeros(8, dtype=np.int64))}
    body = job_body(graph=load_json("small_mlp.json"), data=mlp_data, init_from=finished["id"])
    problem = assert_problem(api.post("/v1/jobs", json=body), 422)
    assert locations(problem) == ["/init_from"]
    detail = problem["detail"]
    assert "'b1' is not among its parameters (b, w1, w2)" in detail and "'b2' is not among" in detail
    assert "'w1' is float64[] there, float32[4, 16] here" in detail and "lacks: b" in detail
