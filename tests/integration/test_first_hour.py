"""What a new user met in their first hour with the client and the `chainrule` client
commands, against a real API server, Celery worker and Redis (issue: "The first hour").

* the optimizer's own defaults everywhere (Adam without lr trains at 1e-3, not SGD's rate);
* the Python client takes the optimizer as a name with keywords or as the HTTP body's object;
* `status` and `result` count epochs the same way;
* an API problem is printed once, located;
* `submit --watch` of a diverging job shows where it stopped, not step 1.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from graphspec import dump
from runtime.data import load_tensors

from .conftest import API_KEYS
from .test_client import SEED_DATA, SEED_GRAPH, assert_no_traceback, cli, client, server  # noqa: F401 (fixtures)
from .test_failed_history import linear_regression, regression_data

pytestmark = pytest.mark.integration


def stored_optimizer(store, job_id: str) -> dict:
    return store.get_job(job_id).spec["optimizer"]


@pytest.fixture
def cli_env(env, server):  # noqa: F811 (the fixture imported above)
    return {**env, "CHAINRULE_URL": server.url, "CHAINRULE_API_KEY": API_KEYS["tenant-a"]}


def test_client_takes_the_optimizer_as_a_name_or_as_the_http_object(client, store):  # noqa: F811
    by_name = client.submit(SEED_GRAPH, SEED_DATA, optimizer="sgd", lr=0.5, momentum=0.8, steps=3)
    as_object = client.submit(SEED_GRAPH, SEED_DATA, optimizer={"name": "sgd", "lr": 0.5, "momentum": 0.8}, steps=3)
    assert stored_optimizer(store, by_name["id"]) == stored_optimizer(store, as_object["id"])
    adam = client.submit(SEED_GRAPH, SEED_DATA, optimizer={"name": "adam"}, steps=3)
    assert stored_optimizer(store, adam["id"]) == {"name": "adam", "lr": 0.001, "betas": [0.9, 0.999], "eps": 1e-08,
                                                   "weight_decay": 0.0}
    with pytest.raises(TypeError, match="lr given both in the optimizer object and as a keyword"):
        client.submit(SEED_GRAPH, SEED_DATA, optimizer={"name": "adam", "lr": 0.1}, lr=0.2, steps=3)
    for job in (by_name, as_object, adam):
        assert client.wait(job["id"], timeout=20)["state"] == "succeeded"


@pytest.mark.parametrize("optimizer,lr", [("adam", 0.001), ("sgd", 0.01)])
def test_cli_submit_without_lr_uses_the_optimizers_own_default(cli_env, store, optimizer, lr):
    result = cli("submit", SEED_GRAPH, "--data", SEED_DATA, "--steps", 3, "--optimizer", optimizer, env=cli_env)
    assert result.returncode == 0, result.stderr
    assert stored_optimizer(store, result.stdout.strip())["lr"] == lr


def test_status_and_result_count_epochs_the_same(cli_env):
    submitted = cli("submit", SEED_GRAPH, "--data", SEED_DATA, "--steps", 300, "--lr", 0.5, "--batch-size", 16,
                    "--watch", env=cli_env)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.splitlines()[0]
    batches = -(-len(load_tensors(SEED_DATA)["y"]) // 16)
    epochs = 300 // batches
    status = cli("status", job_id, env=cli_env)
    assert re.search(rf"^  epochs:\s+{epochs}$", status.stdout, re.M), status.stdout
    result = cli("result", job_id, env=cli_env)
    assert f"after 300 steps ({epochs} epochs)" in result.stdout


def test_a_problem_is_printed_once_with_its_location(cli_env, tmp_path):
    data = load_tensors(SEED_DATA)
    np.savez(tmp_path / "d.npz", X1=data["x1"], x2=data["x2"], y=data["y"])
    result = cli("submit", SEED_GRAPH, "--data", tmp_path / "d.npz", "--steps", 3, env=cli_env)
    assert result.returncode == 1
    assert_no_traceback(result)
    assert result.stderr.count("unexpected input 'X1'") == 1, result.stderr
    assert "error: 422 Data does not fit the graph\n  /data/X1: unexpected input 'X1'; the graph's inputs are: " \
           "x1, x2, y" in result.stderr


def test_watching_a_diverging_job_shows_where_it_stopped(cli_env, tmp_path):
    graph, data = tmp_path / "linear.json", tmp_path / "data.npz"
    dump(linear_regression(), graph)
    np.savez(data, **regression_data())
    result = cli("submit", graph, "--data", data, "--steps", 200, "--lr", 50, "--watch", env=cli_env)
    assert result.returncode == 1
    failing = int(re.search(r"NonFiniteError: step (\d+):", result.stderr).group(1))
    final = re.search(r"^job_\w+ failed: step (\d+)/200, loss (\S+)$", result.stdout, re.M)
    assert final, result.stdout
    assert int(final.group(1)) == failing - 1 > 5  # the last step it reported, not step 1
    assert float(final.group(2)) > 1e3  # diverging: the loss where it stopped, not the first one
