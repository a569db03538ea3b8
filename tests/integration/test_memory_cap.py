"""Memory limits against the real stack (issue #19, item 2).

* The API refuses a job whose estimated peak (runtime.memory) is over ``max_job_memory_bytes``
  with a located 422 ``memory-too-large``: at ``/batch_size`` naming the batch size that fits,
  at ``/graph`` when even one example does not fit; nothing is stored.
* A real prefork Celery worker whose pool child is capped (``worker_memory_limit_bytes``, as
  RLIMIT_AS: worker/memory.py) fails a job that allocates past the cap with ``OutOfMemory``
  naming the cap and the setting, keeps the steps the job reported, and runs the next job on
  the same pool child.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import graphspec
import runtime
from graphspec import GraphBuilder
from worker.store import encode_tensors

from .conftest import API_KEYS, EXAMPLES, run_worker, starlette_test_client, wait_for_state

pytestmark = pytest.mark.integration

TENANT = "tenant-memory"
CAP = 64 * 2**20  # the API's max_job_memory_bytes in these tests
WORKER_ALLOWANCE = 160 * 2**20  # what a job may map beyond the pool child's own baseline


def wide_graph() -> graphspec.Graph:
    """x [N, 8] -> tanh(x @ W [8, 4096]): 32 MiB of float32 per node at N = 2000, little per example."""
    g = GraphBuilder("wide", dtype="float32")
    x = g.input("x", ["N", 8])
    h = g.tanh(g.matmul(x, g.param("w", [8, 4096], init="zeros")))
    g.loss(g.mean(h * h))
    return g.build()


def outer_graph() -> graphspec.Graph:
    """A [4096, 4096] outer product of two parameters: 64 MiB whatever the batch size."""
    g = GraphBuilder("outer", dtype="float32")
    x = g.input("x", ["N", 8])
    a = g.op("unsqueeze", g.param("a", [4096], init="zeros"), axes=[1])
    b = g.op("unsqueeze", g.param("b", [4096], init="zeros"), axes=[0])
    g.loss(g.mean(a * b) + g.mean(x))
    return g.build()


def tensor(array: np.ndarray) -> dict:
    return {"dtype": array.dtype.name, "shape": list(array.shape), "data": array.tolist()}


@pytest.fixture
def capped_api(settings, store):
    """The real app and Redis with max_job_memory_bytes = 64 MiB (no worker: nothing is accepted)."""
    from service.app import create_app

    capped = settings.model_copy(update={"max_job_memory_bytes": CAP, "max_body_bytes": 8 * 2**20,
                                         "max_job_data_bytes": 8 * 2**20, "max_tensor_elements": 2**20})
    with starlette_test_client()(create_app(capped)) as client:
        yield client


def _post(client, body: dict, query: str = ""):
    return client.post(f"/v1/jobs{query}", json=body, headers={"Authorization": f"Bearer {API_KEYS['tenant-a']}"})


def test_the_api_refuses_a_job_over_the_memory_cap_at_its_batch_size(capped_api, store):
    x = np.random.default_rng(0).standard_normal((2000, 8)).astype(np.float32)
    before = len(store.list_jobs("tenant-a", limit=1000)[0])
    response = _post(capped_api, {"graph": json.loads(graphspec.dumps(wide_graph())), "data": {"x": tensor(x)},
                                  "optimizer": {"name": "sgd"}, "steps": 10, "batch_size": 2000})
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["type"].endswith("/memory-too-large"), problem
    (issue,) = problem["errors"]
    assert issue["location"] == "/batch_size" and issue["code"] == "memory_too_large"
    fits = int(re.search(r"set batch_size to (\d+) or less", issue["message"]).group(1))
    assert 1 <= fits < 2000
    assert "max_job_memory_bytes" in problem["detail"] and "tanh" in problem["detail"]
    assert len(store.list_jobs("tenant-a", limit=1000)[0]) == before  # nothing stored
    # the batch size it names is accepted (checked without storing: a dry run)
    ok = _post(capped_api, {"graph": json.loads(graphspec.dumps(wide_graph())), "data": {"x": tensor(x)},
                            "optimizer": {"name": "sgd"}, "steps": 10, "batch_size": fits}, "?dry_run=true")
    assert ok.status_code == 200, ok.text


def test_the_api_refuses_a_graph_that_does_not_fit_at_any_batch_size(capped_api):
    x = np.zeros((4, 8), np.float32)
    response = _post(capped_api, {"graph": json.loads(graphspec.dumps(outer_graph())), "data": {"x": tensor(x)},
                                  "optimizer": {"name": "sgd"}, "steps": 1, "batch_size": 2})
    assert response.status_code == 422, response.text
    (issue,) = response.json()["errors"]
    assert issue["location"] == "/graph", issue
    assert "even a batch of 1 does not fit" in issue["message"]


def test_a_capped_worker_fails_an_oversized_job_and_runs_the_next(settings, env, store, celery_app, tmp_path):
    """The evaluation pass over 20,000 eval examples makes [20000, 4096] float32 values (312 MiB
    each): over the pool child's 160 MiB allowance, after steps 1-4 trained and were reported."""
    queue = f"{settings.queue}.memory"
    worker_env = {**env, "CHAINRULE_QUEUE": queue, "CHAINRULE_WORKER_MEMORY_LIMIT_BYTES": str(WORKER_ALLOWANCE),
                  "CHAINRULE_MAX_JOB_MEMORY_BYTES": str(8 * 2**30)}
    rng = np.random.default_rng(0)
    data = {"x": rng.standard_normal((64, 8)).astype(np.float32)}
    eval_data = {"x": rng.standard_normal((20_000, 8)).astype(np.float32)}
    graph = wide_graph()
    big_spec = {"optimizer": {"name": "sgd", "lr": 0.1}, "steps": 20, "batch_size": 16, "eval_every": 5,
                "report_every": 1}
    seed = graphspec.load(EXAMPLES / "logistic_regression.json")
    seed_spec = {"optimizer": {"name": "sgd", "lr": 0.5}, "steps": 30, "batch_size": 16}
    hostname = f"memory-{settings.namespace}@localhost"

    def send(tenant_graph, spec, data_, eval_=None) -> str:
        graph_id = store.put_graph(TENANT, tenant_graph)
        job_id, created = store.create_job(TENANT, graph_id, spec, encode_tensors(data_),
                                           None if eval_ is None else encode_tensors(eval_))
        assert created
        celery_app.send_task("chainrule.train", args=[job_id], queue=queue)
        store.mark_sent(job_id)
        return job_id

    with run_worker(celery_app, worker_env, queue=queue, hostname=hostname, log_path=tmp_path / "worker.log",
                    pool="prefork", concurrency=1) as worker:
        big = send(graph, big_spec, data, eval_data)
        job, _ = wait_for_state(store, big, {"failed", "succeeded"}, timeout=60)
        assert job.state == "failed", job
        assert job.error.type == "OutOfMemory", job.error
        assert "CHAINRULE_WORKER_MEMORY_LIMIT_BYTES" in job.error.message
        assert str(WORKER_ALLOWANCE) in job.error.message
        print(job.error.message)
        steps = [s.step for s in store.read_steps(big, limit=1000)]
        assert steps[:4] == [1, 2, 3, 4], steps  # what it trained before the evaluation is kept

        after = send(seed, seed_spec, runtime.load_tensors(EXAMPLES / "data" / "seed_data.json"))
        job, _ = wait_for_state(store, after, "succeeded", timeout=60)
        assert job.worker == hostname and worker.alive()
        log = worker.log()
        caps = re.findall(r"pool child (\d+): address space (\d+) bytes at start; RLIMIT_AS (\d+)", log)
        assert len(caps) == 1, log  # one pool child: it survived the failed job and ran the next
        baseline, limit = int(caps[0][1]), int(caps[0][2])
        assert limit == baseline + WORKER_ALLOWANCE
        print(f"pool child baseline {baseline / 2**20:.0f} MiB, RLIMIT_AS {limit / 2**20:.0f} MiB")
