"""A job that fails or is cancelled keeps every step it reported, the last one included,
and its progress (step, loss) says where it stopped.

The divergence case is the one a new user met: linear regression at lr 50 blows up
after a few dozen steps. Before the fix the reporter's buffer (flushed every 50 ms) was
dropped on failure, so the history stopped at step 1 while the error named a later step.
"""

from __future__ import annotations

import numpy as np
import pytest

import graphspec
import runtime
from graphspec import GraphBuilder
from worker.store import encode_tensors

from .conftest import wait_for_state

pytestmark = pytest.mark.integration

TENANT = "tenant-history"


def linear_regression() -> graphspec.Graph:
    g = GraphBuilder("linear_regression", dtype="float64")
    x, y = g.input("x", ["N", 3]), g.input("y", ["N", 1])
    w, b = g.param("w", [3, 1], init="zeros"), g.param("b", [1], init="zeros")
    g.loss(g.mse(x @ w + b, y, name="L"))
    return g.build()


def regression_data(n: int = 64) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, 3))
    return {"x": x, "y": x @ np.array([[1.5], [-2.0], [0.5]]) + 0.3}


def local_losses(graph, data, spec) -> tuple[list[float], list[dict[str, float]], runtime.NonFiniteError]:
    """Every step's loss and gradient norms the same run reports in this process, and the
    error that ends it."""
    losses: list[float] = []
    norms: list[dict[str, float]] = []
    trainer = runtime.Trainer(graph, runtime.make_optimizer(**spec["optimizer"]), batch_size=spec.get("batch_size"),
                              seed=spec.get("seed", 0))
    with pytest.raises(runtime.NonFiniteError) as failure:
        trainer.fit(data, runtime.init_params(graph), steps=spec["steps"],
                    callback=lambda r: (losses.append(r.loss), norms.append(dict(r.grad_norms))))
    return losses, norms, failure.value


@pytest.fixture
def submit(store, celery_app, settings, celery_worker):
    def submit(graph, data, spec) -> str:
        job_id, created = store.create_job(TENANT, store.put_graph(TENANT, graph), spec, encode_tensors(data))
        assert created
        celery_app.send_task("chainrule.train", args=[job_id], queue=settings.queue)
        store.mark_sent(job_id)
        return job_id

    return submit


@pytest.mark.parametrize("report_every", [1, 7])
def test_diverging_job_keeps_every_reported_step_and_shows_where_it_stopped(store, submit, report_every):
    graph, data = linear_regression(), regression_data()
    spec = {"optimizer": {"name": "sgd", "lr": 50.0}, "steps": 200, "report_every": report_every,
            "gradients": "norms"}
    losses, norms, error = local_losses(graph, data, spec)
    last = len(losses)  # the last step the trainer reported before the non-finite one
    assert 5 < last < 199, "the run must diverge part-way for this test to mean anything"

    job_id = submit(graph, data, spec)
    job, _ = wait_for_state(store, job_id, {"succeeded", "failed", "cancelled"}, timeout=30)
    assert job.state == "failed", job
    assert job.error.type == "NonFiniteError"
    assert f"step {last + 1}" in job.error.message and f"step {last + 1}" in str(error)

    steps = store.read_steps(job_id, limit=10_000)
    expected = [s for s in range(1, last + 1) if s % report_every == 0]
    if expected[-1:] != [last]:
        expected.append(last)  # the last reported step is always kept, whatever report_every is
    assert [s.step for s in steps] == expected
    assert [s.loss for s in steps] == pytest.approx([losses[s - 1] for s in expected], rel=1e-9)
    # the last step's norms too, though the failing step after it overwrote the engine's
    # gradients (the worker reads them during the callback: fit(copy_grads=False))
    for s in steps:
        assert s.grad_norms == pytest.approx(norms[s.step - 1], rel=1e-9), s.step
    assert job.step == last
    assert job.loss == pytest.approx(losses[-1], rel=1e-9)


def test_cancelled_job_keeps_its_last_reported_step(store, submit):
    graph, data = linear_regression(), regression_data()
    spec = {"optimizer": {"name": "sgd", "lr": 0.01}, "steps": 400_000, "report_every": 1000, "gradients": "none"}
    job_id = submit(graph, data, spec)
    wait_for_state(store, job_id, "running")
    store.request_cancel(job_id)
    job, _ = wait_for_state(store, job_id, {"cancelled", "failed", "succeeded"}, timeout=30)
    assert job.state == "cancelled", job
    steps = store.read_steps(job_id, limit=10_000)
    assert steps and steps[-1].step == job.step > 0
    assert all(s.step % 1000 == 0 for s in steps[:-1])
