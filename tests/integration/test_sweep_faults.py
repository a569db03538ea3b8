"""Sweeps survive what jobs survive (issue #17): a worker SIGKILLed in the middle of a trial (the
trial resumes on another worker from its checkpoint and the sweep goes on), a worker that died
between a trial's end and the next launch (the recovery loop of any worker launches it), and an
API restarted mid-sweep (the sweep is Redis state: a new API process reads it as it was)."""

from __future__ import annotations

import os
import signal

import pytest

import graphspec
import runtime
from worker import sweeps
from worker.store import encode_tensors, now

from .conftest import API_KEYS, ROOT, run_worker, starlette_test_client, wait_for
from .promise import assert_as_if_uninterrupted

pytestmark = pytest.mark.faults

SEED = ROOT / "examples" / "logistic_regression.json"
DATA = ROOT / "examples" / "data" / "seed_data.json"


def _stored_sweep(store, queue: str, rates: list[float], steps: int, max_concurrent: int = 1):
    """A sweep over the learning rate as POST /v1/sweeps stores it (each trial's spec in full)."""
    graph, data = graphspec.load(SEED), runtime.load_tensors(DATA)
    trials = []
    for lr in rates:
        spec = runtime.TrainingSpec.from_dict({"optimizer": {"name": "sgd", "lr": lr}, "steps": steps,
                                               "batch_size": 16, "report_every": 1, "checkpoint_every": 500,
                                               "seed": 3}).to_dict()
        trials.append({"assignment": {"optimizer.lr": lr}, "spec": {**spec, "time_limit_s": 600}})
    config = {"method": "grid", "seed": 0, "max_trials": len(rates), "max_concurrent": max_concurrent,
              "space": {"optimizer.lr": {"values": rates}}, "early_termination": None, "objective": "loss",
              "max_steps": steps, "queue": queue}
    sweep_id = store.create_sweep("tenant-a", store.put_graph("tenant-a", graph), config, trials,
                                  encode_tensors(data), None, now())
    return graph, data, sweep_id, trials


def test_a_trial_whose_worker_is_killed_resumes_and_the_sweep_finishes(store, celery_app, fault_env, tmp_path):
    queue, env = fault_env
    with run_worker(celery_app, env, queue=queue, hostname=f"sweep-a-{queue}@localhost",
                    log_path=tmp_path / "a.log") as worker:
        # stored once the worker is up: any worker's recovery loop may launch its first trial
        graph, data, sweep_id, trials = _stored_sweep(store, queue, [0.5, 0.1, 0.05], steps=8000)
        sweeps.advance(store, sweep_id, celery_app)  # as the API does on creating it (onto the sweep's queue)
        first = wait_for(lambda: store.sweep_jobs(sweep_id).get(0), timeout=10, message="the first trial")
        wait_for(lambda: store.get_job(first).step > 1500, timeout=60,
                 message="the first trial to pass its first checkpoints")
        os.killpg(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait(10)
    assert store.get_job(first).state == "running" and len(store.sweep_jobs(sweep_id)) == 1
    with run_worker(celery_app, env, queue=queue, hostname=f"sweep-b-{sweep_id}@localhost",
                    log_path=tmp_path / "b.log"):
        wait_for(lambda: store.get_sweep(sweep_id).state == "succeeded", timeout=120, message="the sweep to finish")
    jobs = store.sweep_jobs(sweep_id)
    assert sorted(jobs) == [0, 1, 2]
    assert store.get_job(first).attempts == 2
    for index, job_id in jobs.items():  # every trial as if nothing had happened, the killed one included
        assert_as_if_uninterrupted(store, job_id, graph, data, trials[index]["spec"])


def test_a_sweep_left_between_trials_is_moved_on_by_any_workers_recovery_loop(store, celery_app, fault_env,
                                                                             tmp_path, settings):
    queue, env = fault_env
    _, _, sweep_id, _ = _stored_sweep(store, queue, [0.5, 0.2], steps=50, max_concurrent=2)
    # nobody advances it here (as if the API died after storing it, or a worker after a trial's end)
    with run_worker(celery_app, env, queue=queue, hostname=f"sweep-c-{sweep_id}@localhost",
                    log_path=tmp_path / "c.log"):
        wait_for(lambda: store.get_sweep(sweep_id).state == "succeeded", timeout=60,
                 message="the recovery loop to run the sweep")
    assert all(store.get_job(j).state == "succeeded" for j in store.sweep_jobs(sweep_id).values())
    # and a restarted API reads it as it is: nothing of a sweep lives in the API process
    from service.app import create_app

    with starlette_test_client()(create_app(settings)) as fresh:
        body = fresh.get(f"/v1/sweeps/{sweep_id}", headers={"Authorization": f"Bearer {API_KEYS['tenant-a']}"}).json()
    assert body["state"] == "succeeded" and len(body["trials"]) == 2 and body["best"] is not None
