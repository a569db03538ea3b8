"""Every training setting end to end: one field of runtime.TrainingSpec reaches the command line,
the Python client, the HTTP API (and its OpenAPI schema), the stored job and the worker's trainer.

The values come from the spec's own field list, so a setting added to TrainingSpec is covered
here without editing this file — and this test fails until every surface carries it. And a job
stored before specs were versioned still runs after the upgrade."""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest

import graphspec
import runtime
from runtime.data import load_tensors
from runtime.spec import TrainingSpec, default_of, settings
from service.client import Client
from worker.dispatch import send_job
from worker.store import encode_tensors

from .conftest import API_KEYS, EXAMPLES, wait_for_state
from browser import live_server

SEED_GRAPH = EXAMPLES / "logistic_regression.json"
SEED_DATA = EXAMPLES / "data" / "seed_data.json"


def unusual_values() -> dict:
    """A valid value other than the default for every setting (the optimizer: momentum with two
    hyperparameters). A field of a kind this does not know fails here first."""
    values = {}
    for f, s in settings():
        default = default_of(f)
        if f.name == "optimizer":
            values[f.name] = {"name": "momentum", "lr": 0.05, "momentum": 0.8}
        elif isinstance(default, bool):
            values[f.name] = not default
        elif s.choices:
            values[f.name] = next(c for c in s.choices if c != default)
        elif s.kind is str and default is None:  # a job id: the surfaces test puts a real one in
            values[f.name] = "job_" + "0" * 32
        elif s.kind is float and default is None:  # valid together with the other values here
            values[f.name] = {"decay_rate": 0.5, "min_lr": 0.001, "clip_norm": 50.0, "clip_value": 100.0,
                              "min_delta": 1e-4, "target_loss": 1e-9}[f.name]
        elif default is None or isinstance(default, int):
            values[f.name] = {"steps": 7, "epochs": 50, "batch_size": 4, "seed": 3, "report_every": 2,
                              "eval_every": 3, "checkpoint_every": 5, "time_limit_s": 600, "warmup_steps": 2,
                              "decay_steps": 3, "patience": 100}[f.name]
        else:
            raise AssertionError(f"no test value for setting {f.name!r} ({type(default).__name__})")
        assert values[f.name] != default, f.name
    return values


def test_every_setting_has_a_flag_a_request_field_and_a_stored_field():
    from service.cli import build_parser
    from service.models import JobRequest, JobSettings

    parser = build_parser()
    subcommands = next(a for a in parser._actions if a.dest == "command").choices
    for f, s in settings():
        if f.name == "optimizer":
            continue
        flag = s.flag or "--" + f.name.replace("_", "-")
        for command in ("train", "submit"):
            flags = {o for a in subcommands[command]._actions for o in a.option_strings}
            assert (flag in flags) == (command == "submit" or not s.service_only), (command, flag)
        request = JobRequest.model_fields[f.name]
        assert request.default == default_of(f) and request.description == s.doc, f.name
        assert f.name in JobSettings.model_fields, f.name
    spec = TrainingSpec.from_dict(unusual_values())
    assert TrainingSpec.from_stored(json.loads(json.dumps(spec.to_dict()))) == dataclasses.replace(
        spec, optimizer=spec.optimizer_config())


@pytest.fixture(scope="module")
def server(env, celery_worker):
    with live_server(env) as url:
        yield url


@pytest.mark.parametrize("surface", ["client keywords", "client spec", "command line"])
def test_every_setting_reaches_the_stored_job_and_the_trainer(server, env, tmp_path, surface):
    values = unusual_values()
    data = load_tensors(SEED_DATA)
    eval_data = {k: v[:10] for k, v in data.items()}
    with Client(server, api_key=API_KEYS["tenant-a"], timeout=20) as client:
        source = client.submit(SEED_GRAPH, data, steps=3)  # init_from needs a succeeded job of this tenant
        assert client.wait(source["id"], timeout=60)["state"] == "succeeded"
        values["init_from"] = source["id"]
        if surface == "client keywords":
            optimizer = dict(values.pop("optimizer"))
            job = client.submit(SEED_GRAPH, data, eval_data=eval_data, optimizer=optimizer.pop("name"),
                                **values, **optimizer)
            values["optimizer"] = {"name": "momentum", "lr": 0.05, "momentum": 0.8}
        elif surface == "client spec":
            job = client.submit(SEED_GRAPH, data, TrainingSpec.from_dict(values), eval_data=eval_data)
        else:
            import subprocess
            runtime.save_tensors(tmp_path / "eval.npz", eval_data)
            flags = []
            for f, s in settings():
                value = values[f.name]
                if f.name == "optimizer":
                    flags += ["--optimizer", value["name"], "--lr", value["lr"], "--momentum", value["momentum"]]
                elif isinstance(value, bool):
                    flags.append(s.flag or "--" + f.name.replace("_", "-"))
                else:
                    flags += ["--" + f.name.replace("_", "-"), value]
            result = subprocess.run([sys.executable, "-m", "service.cli", "submit", str(SEED_GRAPH), "--data",
                                     str(SEED_DATA), "--eval-data", str(tmp_path / "eval.npz"), "--url", server,
                                     "--api-key", API_KEYS["tenant-a"], *map(str, flags)],
                                    capture_output=True, text=True, env=env, timeout=60)
            assert result.returncode == 0, result.stderr
            job = client.status(result.stdout.split()[0])
        final = client.wait(job["id"], timeout=60)
        steps = list(client.iter_steps(job["id"]))
        result = client.result(job["id"])
    assert final["state"] == "succeeded", final
    stored = final["settings"]
    for f, _ in settings():
        if f.name == "optimizer":  # every hyperparameter filled in ("momentum" is SGD with momentum)
            expected = json.loads(json.dumps(TrainingSpec.from_dict({**values, "steps": 1}).optimizer_config()))
            assert stored["optimizer"] == expected and stored["optimizer"]["momentum"] == 0.8
        else:
            assert stored[f.name] == values[f.name], f.name
    # and the trainer used them: 7 steps (before 50 epochs of 4-row batches), every 2nd reported
    # and the last, full gradients, eval every 3 steps
    assert values["gradients"] == "full" and final["step"] == values["steps"]
    assert [s["step"] for s in steps] == [2, 4, 6, 7]
    assert all(s["grads"]["w1"]["shape"] == [] and s["grad_norms"] for s in steps)
    assert [s["step"] for s in steps if s["eval_loss"] is not None] == [6]  # and at the end, in the result:
    assert result["eval_loss"] is not None
    # the schedule ("step" after a warmup) set every update's rate, reported with the norm before clipping
    schedule = TrainingSpec.from_dict(values).lr_schedule()
    assert [s["metrics"]["lr"] for s in steps] == pytest.approx([schedule.rate(0.05, s["step"], 7) for s in steps])
    assert all(s["metrics"]["grad_norm"] > 0 for s in steps)
    assert final["stop_reason"] == result["stop_reason"] == "steps"


def test_a_job_stored_before_specs_had_versions_still_runs(store, celery_app, celery_worker, settings):
    """The spec exactly as 0.1 stored it: no "version", the optimizer filled in, the service's notes."""
    graph = graphspec.load(SEED_GRAPH)
    data = load_tensors(SEED_DATA)
    legacy = {"optimizer": {"name": "sgd", "lr": 0.5, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0},
              "steps": 20, "epochs": None, "batch_size": 16, "seed": 0, "shuffle": True, "report_every": 1,
              "gradients": "norms", "checkpoint_every": None, "eval_every": None, "time_limit_s": 3600,
              "total_steps": 20, "examples": 100, "data_summary": None, "eval_data_summary": None}
    graph_id = store.put_graph("tenant-a", graph)
    job_id, _ = store.create_job("tenant-a", graph_id, legacy, encode_tensors(data))
    send_job(celery_app, settings, job_id, 3600)
    store.mark_sent(job_id)
    job, _ = wait_for_state(store, job_id, ("succeeded", "failed"), timeout=60)
    assert job.state == "succeeded", job
    assert job.step == 20 and [r.step for r in store.read_steps(job_id, limit=100)] == list(range(1, 21))
    expected = runtime.Trainer.from_spec(graph, TrainingSpec.from_stored(legacy)).fit(
        data, runtime.init_params(graph, seed=0), steps=20)
    assert job.loss == pytest.approx(expected.loss, rel=1e-12)
