"""Issue #17's training controls through the real stack (API, Redis, a Celery worker): schedules,
clipping and early stopping set at submit, checked there with located errors, and what a job
reports — every step entry's lr, grad_norm and accuracy (eval_accuracy at evaluations), the
same from the paged history, the downsampled page and the CSV export — and why it stopped."""

from __future__ import annotations

import csv
import io

import pytest

from runtime.schedules import Schedule

from .test_api import SEED_DATA, assert_problem, job_body, locations, submit, wait_job
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

