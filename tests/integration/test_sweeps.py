"""Hyperparameter sweeps (issue #17 item 6) against the real stack: trials are ordinary jobs run by
a real Celery worker, launched at most max_concurrent at a time as earlier ones finish; the best
trial; cancelling; the median stopping rule; every mistake located before anything runs."""

from __future__ import annotations

import pytest

from .conftest import wait_for
from .test_api import SEED_DATA, SEED_DOC, assert_problem, locations

pytestmark = pytest.mark.integration

EVAL_DATA = {name: {**tensor, "shape": [20], "data": tensor["data"][:20]} for name, tensor in SEED_DATA.items()}


def base(**overrides) -> dict:
    body = {"graph": SEED_DOC, "data": SEED_DATA, "optimizer": {"name": "sgd", "lr": 0.5}, "steps": 200,
            "batch_size": 16, "report_every": 10}
    body.update(overrides)
    return body


def start(api, tenant: str = "tenant-a", **body) -> dict:
    resp = api.post("/v1/sweeps", json=body, tenant=tenant)
    assert resp.status_code == 202, resp.text
    assert resp.headers["location"] == f"/v1/sweeps/{resp.json()['id']}"
    return resp.json()


def wait_sweep(api, sweep_id: str, states=("succeeded", "cancelled"), timeout: float = 60) -> dict:
    last = {}

    def done():
        last.update(api.get(f"/v1/sweeps/{sweep_id}").json())
        return dict(last) if last["state"] in states else None
    return wait_for(done, timeout=timeout, message=lambda: f"sweep {sweep_id} stayed {last.get('state')}")


def test_a_grid_sweep_runs_every_trial_a_few_at_a_time_and_names_the_best(api):
    sweep = start(api, base=base(), space={"optimizer.lr": {"values": [0.001, 0.05, 1.0]}}, method="grid",
                  max_trials=10, max_concurrent=2)
    assert sweep["state"] == "running" and len(sweep["trials"]) == 2  # the first two queued at once
    done = wait_sweep(api, sweep["id"])
    assert done["state"] == "succeeded" and done["objective"] == "loss"
    assert [t["assignment"] for t in done["trials"]] == [{"optimizer.lr": v} for v in (0.001, 0.05, 1.0)]
    jobs = [api.get(f"/v1/jobs/{t['job_id']}").json() for t in done["trials"]]
    assert all(j["state"] == "succeeded" and j["step"] == 200 for j in jobs)
    assert [j["settings"]["optimizer"]["lr"] for j in jobs] == [0.001, 0.05, 1.0]
    # never more than max_concurrent trials queued or running at once
    spans = [(j["created"], j["finished"]) for j in jobs]
    assert max(sum(1 for c, f in spans if c <= t < f) for t, _ in spans) <= 2
    best = min(done["trials"], key=lambda t: t["objective"])
    assert done["best"] == best and best["assignment"] == {"optimizer.lr": 1.0}  # lr 1 learns fastest here
    listed = api.get("/v1/sweeps").json()["sweeps"]
    assert done["id"] in [s["id"] for s in listed]


def test_cancelling_a_sweep_cancels_its_running_trials_and_launches_no_more(api):
    sweep = start(api, base=base(steps=400_000, report_every=1000), space={"optimizer.lr": {"values": [0.1, 0.2,
                                                                                                           0.3]}},
                  method="grid", max_trials=3, max_concurrent=1)
    first = sweep["trials"][0]["job_id"]
    wait_for(lambda: api.get(f"/v1/jobs/{first}").json()["state"] == "running", timeout=20)
    resp = api.post(f"/v1/sweeps/{sweep['id']}/cancel")
    assert resp.status_code == 202
    done = wait_sweep(api, sweep["id"], timeout=30)
    assert done["state"] == "cancelled" and len(done["trials"]) == 1
    assert api.get(f"/v1/jobs/{first}").json()["state"] == "cancelled"


def test_the_median_rule_stops_trials_that_fall_behind(api):
    """One at a time: each later trial is compared with the finished ones; the rates that cannot
    learn in time fall below the median and stop early, as succeeded jobs that say why."""
    sweep = start(api, base=base(steps=3000, report_every=10, eval_data=EVAL_DATA, eval_every=10),
                  space={"optimizer.lr": {"values": [1.0, 0.5, 1e-5, 2e-5, 0.8]}}, method="grid", max_trials=5,
                  max_concurrent=1, early_termination={"rule": "median", "grace_steps": 50, "min_trials": 2})
    done = wait_sweep(api, sweep["id"], timeout=120)
    assert done["state"] == "succeeded" and done["objective"] == "eval_loss"
    by_lr = {t["assignment"]["optimizer.lr"]: t for t in done["trials"]}
    assert by_lr[1.0]["stop_reason"] == by_lr[0.5]["stop_reason"] == "steps"  # nothing to compare with yet
    for slow in (1e-5, 2e-5):
        assert by_lr[slow]["stop_reason"] == "early_termination", by_lr[slow]
        assert by_lr[slow]["state"] == "succeeded" and by_lr[slow]["step"] < 3000
    assert done["best"]["assignment"]["optimizer.lr"] in (1.0, 0.8, 0.5)


@pytest.mark.parametrize("body, location", [
    ({"base": base(steps=None), "space": {"optimizer.lr": {"values": [0.1]}}, "max_trials": 2}, "/base/steps"),
    ({"base": base(), "space": {"learning_rate": {"values": [0.1]}}, "max_trials": 2}, "/space/learning_rate"),
    ({"base": base(), "space": {"optimizer.lr": {"values": [0.1, -1.0]}}, "method": "grid", "max_trials": 2},
     "/space/optimizer.lr"),
    ({"base": base(), "space": {"optimizer.lr": {"uniform": [0.1, 1]}}, "method": "grid", "max_trials": 2},
     "/space/optimizer.lr"),
    ({"base": base(), "space": {"optimizer.lr": {"values": [0.1]}}, "max_trials": 0}, "/max_trials"),
    ({"base": base(), "space": {"optimizer.lr": {"values": [0.1]}}, "max_trials": 2,
      "early_termination": {"rule": "asha"}}, "/early_termination/min_steps"),
])
def test_a_sweep_that_cannot_run_is_refused_where_it_is(api, body, location):
    problem = assert_problem(api.post("/v1/sweeps", json=body), 422)
    assert location in locations(problem), problem


def test_another_tenants_sweep_is_not_found(api):
    sweep = start(api, base=base(steps=20), space={"optimizer.lr": {"values": [0.1]}}, max_trials=1)
    assert_problem(api.get(f"/v1/sweeps/{sweep['id']}", tenant="tenant-b"), 404)
    assert_problem(api.post(f"/v1/sweeps/{sweep['id']}/cancel", tenant="tenant-b"), 404)
    assert sweep["id"] not in [s["id"] for s in api.get("/v1/sweeps", tenant="tenant-b").json()["sweeps"]]


@pytest.fixture(scope="module")
def server(env, celery_worker):
    from browser import live_server

    with live_server(env) as url:
        yield url


@pytest.mark.parametrize("graph, data, extra", [
    ("logistic_regression.json", "data/seed_data.json", ["--steps", "150", "--batch-size", "16"]),
    ("small_mlp.json", "data/small_mlp_data.json", ["--epochs", "15", "--batch-size", "32"]),
])
def test_one_command_finds_a_good_learning_rate(server, env, graph, data, extra):
    """The issue's promise: one `chainrule sweep ... --watch` over the learning rate, every trial
    printed as it finishes, and the best; the best is the lowest loss any trial reached."""
    import json
    import subprocess
    import sys

    from service.client import Client

    from .conftest import API_KEYS, EXAMPLES

    space = json.dumps({"optimizer.lr": {"log_uniform": [1e-4, 2.0]}})
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "sweep", str(EXAMPLES / graph), "--data", str(EXAMPLES / data),
         *extra, "--space", space, "--max-trials", "6", "--max-concurrent", "2", "--watch",
         "--url", server, "--api-key", API_KEYS["tenant-a"]],
        capture_output=True, text=True, env=env, timeout=180)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    sweep_id = lines[0]
    assert len([line for line in lines if line.startswith("trial ")]) == 6
    assert lines[-1].startswith("best: trial ")
    with Client(server, api_key=API_KEYS["tenant-a"]) as client:
        sweep = client.sweep(sweep_id)
    assert sweep["state"] == "succeeded" and len(sweep["trials"]) == 6
    best = sweep["best"]
    assert best["objective"] == min(t["objective"] for t in sweep["trials"])
    assert best["job_id"] in lines[-1] and f"optimizer.lr={best['assignment']['optimizer.lr']:.4g}" in lines[-1]
    worst = max(sweep["trials"], key=lambda t: t["objective"])
    assert worst["assignment"]["optimizer.lr"] < best["assignment"]["optimizer.lr"]  # tiny rates learn least


def test_asha_stops_trials_that_are_not_in_the_top_of_a_rung(api):
    """Successive halving, one trial at a time: at the rungs (50, 100, 200... steps) a trial must be
    in the best half of those that reached them; the slow rates are not, and stop there."""
    sweep = start(api, base=base(steps=3000, report_every=10, eval_data=EVAL_DATA, eval_every=10),
                  space={"optimizer.lr": {"values": [1.0, 0.8, 1e-5, 2e-5]}}, method="grid", max_trials=4,
                  max_concurrent=1, early_termination={"rule": "asha", "min_steps": 50, "eta": 2})
    done = wait_sweep(api, sweep["id"], timeout=120)
    assert done["state"] == "succeeded"
    by_lr = {t["assignment"]["optimizer.lr"]: t for t in done["trials"]}
    assert by_lr[1.0]["stop_reason"] == "steps"  # alone at every rung: nothing to halve yet
    for slow in (1e-5, 2e-5):
        assert by_lr[slow]["stop_reason"] == "early_termination" and by_lr[slow]["step"] < 3000, by_lr[slow]
