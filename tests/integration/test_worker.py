"""The Celery worker against a real Redis: jobs go in through the job store and a Celery
message, and everything is checked in Redis (state, step stream, result, errors)."""

from __future__ import annotations

import json
import math
import os
import pickle
import time
import uuid

import numpy as np
import pytest

import graphspec
import runtime
from worker.store import StepRecord, decode_tensors, encode_tensors

from .conftest import EXAMPLES, run_worker, wait_for, wait_for_state

pytestmark = pytest.mark.integration

TENANT = "tenant-worker"
SEED_SPEC = {"optimizer": {"name": "sgd", "lr": 0.5}, "steps": 60, "batch_size": 16, "report_every": 5}
LONG_SPEC = {"optimizer": {"name": "sgd", "lr": 0.5}, "steps": 200_000, "batch_size": 16, "report_every": 100}


@pytest.fixture(scope="module")
def seed_graph() -> graphspec.Graph:
    return graphspec.load(EXAMPLES / "logistic_regression.json")


@pytest.fixture(scope="module")
def seed_data() -> dict[str, np.ndarray]:
    return runtime.load_tensors(EXAMPLES / "data" / "seed_data.json")


@pytest.fixture
def submit(store, celery_app, settings, celery_worker):
    """Store a graph and a queued job, then send the Celery message; returns the job id."""

    def submit(graph, data, spec, *, send: bool = True, tenant: str = TENANT) -> str:
        graph_id = store.put_graph(tenant, graph)
        job_id, created = store.create_job(tenant, graph_id, spec, encode_tensors(data))
        assert created
        assert store.get_job(job_id).state == "queued"
        if send:
            send_message(job_id)
        return job_id

    def send_message(job_id: str) -> None:
        celery_app.send_task("chainrule.train", args=[job_id], queue=settings.queue)
        store.mark_sent(job_id)  # as the API does: else the sweep sends it again after unsent_grace_s

    submit.send = send_message
    return submit


def local_run(graph, data, spec):
    """The same training in this process: a job is a pure function of graph, data, spec and seed."""
    reports = []
    trainer = runtime.Trainer(graph, runtime.make_optimizer(**spec["optimizer"]), batch_size=spec.get("batch_size"),
                              shuffle=spec.get("shuffle", True), seed=spec.get("seed", 0))
    result = trainer.fit(data, runtime.init_params(graph, seed=spec.get("seed", 0)), steps=spec.get("steps"),
                         callback=reports.append)
    return result, reports


def all_steps(store, job_id) -> list[StepRecord]:
    return store.read_steps(job_id, limit=1_000_000)


def test_job_runs_to_success_with_history_and_result(store, submit, celery_worker, seed_graph, seed_data):
    job_id = submit(seed_graph, seed_data, SEED_SPEC)
    job, seen = wait_for_state(store, job_id, {"succeeded", "failed", "cancelled"})
    assert job.state == "succeeded", job
    # Whatever the poll caught, it is in lifecycle order: queued -> running -> succeeded.
    order = ["queued", "running", "succeeded"]
    assert seen == sorted(seen, key=order.index), seen
    assert job.created <= job.started <= job.finished
    assert job.worker == celery_worker.hostname
    assert job.attempts == 1
    assert job.step == job.total_steps == 60

    expected, reports = local_run(seed_graph, seed_data, SEED_SPEC)
    expected_loss = {r.step: r.loss for r in reports}

    steps = all_steps(store, job_id)
    assert [s.step for s in steps] == list(range(5, 61, 5))  # in order, each once
    assert [s.loss for s in steps] == pytest.approx([expected_loss[s.step] for s in steps], rel=1e-12)
    losses = [s.loss for s in steps]
    assert losses[-1] < losses[0] / 2
    assert np.mean(losses[-4:]) < np.mean(losses[:4])
    for s in steps:
        assert set(s.grad_norms) == {"w1", "w2", "b"}
        assert all(math.isfinite(v) and v >= 0 for v in s.grad_norms.values())
        assert s.grads is None  # gradients: "norms" (the default) stores no tensors
        assert s.eval_loss is None
    times = [s.time for s in steps]
    assert times == sorted(times) and job.started <= times[0] <= times[-1] <= job.finished

    # Paging through the stream with an exclusive ``after``.
    assert [s.step for s in store.read_steps(job_id, after=30, limit=3)] == [35, 40, 45]
    assert [s.step for s in store.read_steps(job_id, after=60)] == []

    # The result blob: msgpack tensors, nothing pickled, equal to the local run.
    result = graphspec.parse(store.get_blob(job_id, "result"), "msgpack")
    assert result["steps"] == 60 and result["loss"] == pytest.approx(expected.losses[-1], rel=1e-12)
    assert job.loss == pytest.approx(result["loss"], rel=1e-12)
    params = runtime.data.tensors_from_tree(result["params"])
    assert set(params) == {"w1", "w2", "b"}
    for name, value in params.items():
        np.testing.assert_allclose(value, expected.params[name], rtol=1e-12)

    # A finished job's keys expire after the retention period.
    for part in (None, "steps", "data", "result"):
        assert 0 < store._r.ttl(store.job_key(job_id, part)) <= store.settings.retention_s


@pytest.mark.parametrize("gradients", ["full", "none"])
def test_gradients_option(store, submit, seed_graph, seed_data, gradients):
    spec = {**SEED_SPEC, "steps": 10, "gradients": gradients}
    job_id = submit(seed_graph, seed_data, spec)
    job, _ = wait_for_state(store, job_id, {"succeeded", "failed", "cancelled"})
    assert job.state == "succeeded", job
    steps = all_steps(store, job_id)
    assert [s.step for s in steps] == [5, 10]
    _, reports = local_run(seed_graph, seed_data, spec)
    by_step = {r.step: r for r in reports}
    for s in steps:
        if gradients == "none":
            assert s.grads is None and s.grad_norms == {}
            continue
        grads = decode_tensors(s.grads)
        assert set(grads) == {"w1", "w2", "b"}
        for name, g in grads.items():
            assert g.shape == () and g.dtype == np.float64
            np.testing.assert_allclose(g, by_step[s.step].grads[name], rtol=1e-12)
            assert s.grad_norms[name] == pytest.approx(float(np.linalg.norm(g)), rel=1e-12)


def test_cancel_running_job_stops_quickly_with_partial_history(store, submit, seed_graph, seed_data):
    job_id = submit(seed_graph, seed_data, LONG_SPEC)
    wait_for_state(store, job_id, "running", timeout=20)
    wait_for(lambda: store.read_steps(job_id, limit=1), timeout=10, message="the first reported steps")

    asked = time.monotonic()
    assert store.request_cancel(job_id) in ("cancelling", "cancelled")
    job, seen = wait_for_state(store, job_id, {"cancelled", "succeeded", "failed"}, timeout=10)
    elapsed = time.monotonic() - asked
    assert job.state == "cancelled", (job, seen)
    assert elapsed < 10
    assert job.finished is not None

    steps = [s.step for s in all_steps(store, job_id)]
    assert steps and steps == sorted(set(steps))
    assert all(step % 100 == 0 for step in steps[:-1])  # sampled every report_every steps...
    # ... and the last step run may be recorded as well, whatever report_every is.
    assert steps[-1] % 100 == 0 or steps[-1] == job.step
    assert steps[-1] <= job.step < LONG_SPEC["steps"]
    assert store.get_blob(job_id, "result") is None


def test_second_delivery_while_the_first_trainer_runs_does_nothing(store, submit, celery_app, celery_worker,
                                                                    settings, env, seed_graph, seed_data, tmp_path):
    """At-least-once delivery can hand a running job to a second worker: the job's lease makes
    that delivery a no-op, and the first trainer carries on."""
    job_id = submit(seed_graph, seed_data, LONG_SPEC)
    try:
        wait_for_state(store, job_id, "running", timeout=20)
        wait_for(lambda: store.read_steps(job_id, limit=1), timeout=10, message="the first reported steps")
        queue = f"{settings.namespace}.second"
        with run_worker(celery_app, env, queue=queue, hostname=f"{settings.namespace}-second@localhost",
                        log_path=tmp_path / "second.log") as second:
            task = celery_app.send_task("chainrule.train", args=[job_id], queue=queue)
            line = f"Task chainrule.train[{task.id}] succeeded"
            wait_for(lambda: line in second.log(), timeout=15, message="the second worker to handle the message")
            assert "'duplicate'" in next(row for row in second.log().splitlines() if line in row)
        job = store.get_job(job_id)
        assert job.state == "running" and job.worker == celery_worker.hostname and job.attempts == 1
        step = job.step
        wait_for(lambda: int(store.get_job(job_id).step) > step, timeout=10, message="the first trainer to go on")
    finally:
        store.request_cancel(job_id)
    job, _ = wait_for_state(store, job_id, {"cancelled", "succeeded", "failed"}, timeout=10)
    assert job.state == "cancelled" and job.attempts == 1
    steps = [s.step for s in all_steps(store, job_id)]
    assert steps == sorted(set(steps))


def test_cancel_queued_job_never_runs(store, submit, seed_graph, seed_data):
    job_id = submit(seed_graph, seed_data, SEED_SPEC, send=False)
    assert store.request_cancel(job_id) == "cancelled"
    submit.send(job_id)  # the message still arrives: the worker must leave the job alone
    sentinel = submit(seed_graph, seed_data, {**SEED_SPEC, "steps": 5})
    job, _ = wait_for_state(store, sentinel, {"succeeded", "failed", "cancelled"})
    assert job.state == "succeeded"  # one queue, one solo worker: the first message was handled before
    job = store.get_job(job_id)
    assert job.state == "cancelled" and job.attempts == 0 and job.started is None
    assert all_steps(store, job_id) == []


def test_time_limit_fails_the_job_on_a_prefork_worker(store, celery_app, settings, env, seed_graph, seed_data,
                                                      tmp_path):
    """The service sends soft/hard time limits with each task. Celery enforces them only in a
    pool that can interrupt the task (prefork), so this runs its own prefork worker on its own
    queue; the session's solo worker would not stop the job."""
    queue = f"{settings.namespace}.prefork"
    graph_id = store.put_graph(TENANT, seed_graph)
    job_id, _ = store.create_job(TENANT, graph_id, LONG_SPEC, encode_tensors(seed_data))
    with run_worker(celery_app, env, queue=queue, hostname=f"{settings.namespace}-prefork@localhost",
                    log_path=tmp_path / "prefork.log", pool="prefork") as worker:
        celery_app.send_task("chainrule.train", args=[job_id], queue=queue, soft_time_limit=1, time_limit=30)
        store.mark_sent(job_id)
        try:
            job, _ = wait_for_state(store, job_id, {"succeeded", "failed", "cancelled"}, timeout=20)
        except AssertionError:
            store.request_cancel(job_id)
            raise AssertionError(f"the time limit did not stop the job; worker log:\n{worker.log()[-3000:]}")
    assert job.state == "failed", job
    assert job.error.type == "TimeLimitExceeded", job
    # The limit runs from when the pool accepted the task, a little before "started" is written.
    assert 0.5 <= job.finished - job.started < 10
    assert 0 < job.step < LONG_SPEC["steps"]
    assert store.get_blob(job_id, "result") is None


def test_bad_data_fails_with_error_and_node(store, submit):
    graph = graphspec.load(EXAMPLES / "small_mlp.json")
    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(8, 4)).astype(np.float32), "labels": np.full(8, 7, dtype=np.int64)}
    job_id = submit(graph, data, {"optimizer": {"name": "sgd", "lr": 0.1}, "steps": 20, "report_every": 1})
    job, _ = wait_for_state(store, job_id, {"succeeded", "failed", "cancelled"})
    assert job.state == "failed", job
    assert job.error.type == "ExecutionError"
    assert job.error.node == "L"
    assert "out of range" in job.error.message and "7" in job.error.message
    assert job.finished is not None
    assert store.get_blob(job_id, "result") is None
    assert all_steps(store, job_id) == []


def test_redelivered_job_resumes_from_its_checkpoint(store, submit, seed_graph, seed_data, celery_worker):
    """A worker died after step 25 with a checkpoint at step 20; the job is delivered again. The new
    attempt resumes at step 21, its replay of steps 21-25 is refused by the stream, and the run
    ends exactly as an uninterrupted one."""
    spec = {**SEED_SPEC, "checkpoint_every": 20}
    checkpoints = []
    trainer = runtime.Trainer(seed_graph, runtime.make_optimizer(**spec["optimizer"]), batch_size=16, seed=0)
    reports = []
    expected = trainer.fit(seed_data, runtime.init_params(seed_graph, seed=0), steps=60, callback=reports.append,
                           checkpoint_every=20, on_checkpoint=checkpoints.append)
    by_step = {r.step: r for r in reports}

    job_id = submit(seed_graph, seed_data, spec, send=False)
    # The first attempt, as it was when its worker died (its lease then expired).
    assert store.acquire_lease(job_id, "dead")
    assert store.transition(job_id, ["queued"], "running", token="dead", started="1.0", worker="dead@host",
                            lease="dead")[0]
    store._r.hincrby(store.job_key(job_id), "attempts", 1)
    store.put_blob(job_id, "checkpoint", checkpoints[0].to_bytes(), token="dead")
    assert checkpoints[0].step == 20
    first = [StepRecord(step, by_step[step].loss, by_step[step].grad_norms, time.time()) for step in range(5, 26, 5)]
    assert store.report_steps(job_id, "dead", first, {"step": 25})[0] == []
    store._r.delete(store.job_key(job_id, "lease"))
    written_before = {s.step: s.time for s in all_steps(store, job_id)}

    submit.send(job_id)
    job, _ = wait_for_state(store, job_id, {"succeeded", "failed", "cancelled"})
    assert job.state == "succeeded", job
    assert job.attempts == 2 and job.worker == celery_worker.hostname
    steps = all_steps(store, job_id)
    assert [s.step for s in steps] == list(range(5, 61, 5))
    assert {s.step: s.time for s in steps if s.step <= 25} == written_before  # not rewritten
    assert [s.loss for s in steps] == pytest.approx([by_step[s.step].loss for s in steps], rel=1e-12)
    result = graphspec.parse(store.get_blob(job_id, "result"), "msgpack")
    assert result["steps"] == 60
    params = runtime.data.tensors_from_tree(result["params"])
    for name, value in params.items():
        np.testing.assert_array_equal(value, expected.params[name])  # bit for bit
    final = runtime.Checkpoint.from_bytes(store.get_blob(job_id, "checkpoint"))
    assert final.step == 60


def _marked_checkpoint(graph, data, spec, at: int) -> runtime.Checkpoint:
    """The run's checkpoint at step ``at``, its parameters moved off the normal path: a run that
    resumes from it ends elsewhere than one that starts again from step 0 (which, training being
    deterministic, would otherwise end bit for bit the same)."""
    checkpoints = []
    trainer = runtime.Trainer(graph, runtime.make_optimizer(**spec["optimizer"]), batch_size=spec["batch_size"],
                              seed=spec.get("seed", 0))
    trainer.fit(data, runtime.init_params(graph, seed=spec.get("seed", 0)), steps=at, checkpoint_every=at,
                on_checkpoint=checkpoints.append)
    [checkpoint] = checkpoints
    assert checkpoint.step == at
    checkpoint.params = {name: np.asarray(value) + 0.25 for name, value in checkpoint.params.items()}
    return runtime.Checkpoint.from_bytes(checkpoint.to_bytes())


def _resumed_run(graph, data, spec, checkpoint: runtime.Checkpoint):
    """What a run resumed from ``checkpoint`` reports and ends with, in this process."""
    reports = []
    trainer = runtime.Trainer(graph, runtime.make_optimizer(**spec["optimizer"]), batch_size=spec["batch_size"],
                              seed=spec.get("seed", 0))
    result = trainer.fit(data, None, steps=spec["steps"], callback=reports.append,
                         resume=runtime.Checkpoint.from_bytes(checkpoint.to_bytes()))
    return result, {r.step: r for r in reports}


def _orphaned_at_checkpoint(store, job_id: str, checkpoint: runtime.Checkpoint, losses: dict[int, float]) -> None:
    """The job as its first trainer left it when it died right after checkpointing: running,
    steps up to the checkpoint written, its lease expired."""
    assert store.acquire_lease(job_id, "dead")
    assert store.transition(job_id, ["queued"], "running", token="dead", started="1.0", worker="dead@host",
                            lease="dead")[0]
    store._r.hincrby(store.job_key(job_id), "attempts", 1)
    first = [StepRecord(step, losses[step], {}, time.time()) for step in range(5, checkpoint.step + 1, 5)]
    assert store.report_steps(job_id, "dead", first, {"step": checkpoint.step})[0] == []
    store.put_blob(job_id, "checkpoint", checkpoint.to_bytes(), token="dead")
    store._r.delete(store.job_key(job_id, "lease"))


def _redelivered_after_checkpoint(store, submit, graph, data, spec, checkpoint, losses) -> tuple[str, list]:
    """Submit the job, leave it as a worker that died after ``checkpoint`` would, deliver it again
    and wait: it succeeds on its second attempt with every fifth step reported once. Returns the
    job's id and steps."""
    job_id = submit(graph, data, spec, send=False)
    _orphaned_at_checkpoint(store, job_id, checkpoint, losses)
    submit.send(job_id)
    job, _ = wait_for_state(store, job_id, {"succeeded", "failed", "cancelled"})
    assert job.state == "succeeded", job
    assert job.attempts == 2
    steps = all_steps(store, job_id)
    assert [s.step for s in steps] == list(range(5, spec["steps"] + 1, 5))
    return job_id, steps


def test_redelivered_job_continues_from_its_checkpoint_not_from_step_0(store, submit, seed_graph, seed_data):
    """Regression guard: a redelivery that ignored the checkpoint and trained again from step 0
    would end exactly as the test above expects (deterministic training, replayed steps refused),
    losing only time. Here the checkpoint is marked (its parameters moved off the normal path):
    the steps after it and the result must be those of a run resumed from it."""
    spec = {**SEED_SPEC, "checkpoint_every": 20}
    _, normal = local_run(seed_graph, seed_data, spec)
    normal = {r.step: r for r in normal}
    checkpoint = _marked_checkpoint(seed_graph, seed_data, spec, 20)
    expected, resumed = _resumed_run(seed_graph, seed_data, spec, checkpoint)
    assert resumed[25].loss != normal[25].loss  # the mark shows in the losses after the checkpoint

    job_id, steps = _redelivered_after_checkpoint(store, submit, seed_graph, seed_data, spec, checkpoint,
                                                  {s: normal[s].loss for s in normal})
    after = [s for s in steps if s.step > 20]
    assert [s.loss for s in after] == [resumed[s.step].loss for s in after], "did not resume from the checkpoint"
    result = graphspec.parse(store.get_blob(job_id, "result"), "msgpack")
    assert result["steps"] == 60
    for name, value in runtime.data.tensors_from_tree(result["params"]).items():
        np.testing.assert_array_equal(value, expected.params[name])  # bit for bit: resumed from the mark


def test_a_resumed_job_never_reports_a_step_before_its_checkpoint(settings, seed_graph, seed_data):
    """The job's progress (its ``step``, what GET /v1/jobs/{id} shows) never goes back: a
    redelivered job reports from the step after its checkpoint on. Inline (run_job in this
    process), every report the trainer makes is seen, not only what Redis kept."""
    from worker.jobs import run_job
    from worker.store import JobStore

    reported: list[tuple[list[int], int]] = []  # (steps written, progress step) per report

    class Watched(JobStore):
        def report_steps(self, job_id, token, records, progress):
            if "step" in progress:
                reported.append(([r.step for r in records], int(progress["step"])))
            return super().report_steps(job_id, token, records, progress)

    spec = {**SEED_SPEC, "report_every": 1, "checkpoint_every": 20}
    _, normal = local_run(seed_graph, seed_data, spec)
    checkpoint = _marked_checkpoint(seed_graph, seed_data, spec, 20)
    expected, _ = _resumed_run(seed_graph, seed_data, spec, checkpoint)
    store = Watched.connect(settings)
    try:
        graph_id = store.put_graph(TENANT, seed_graph)
        job_id, _ = store.create_job(TENANT, graph_id, spec, encode_tensors(seed_data))
        store.mark_sent(job_id)
        _orphaned_at_checkpoint(store, job_id, checkpoint, {r.step: r.loss for r in normal})
        store.transition(job_id, ["running"], "queued", token="!", requeued=repr(time.time()))  # as the sweep does
        reported.clear()

        assert run_job(store, job_id, worker="inline@test") == "succeeded"
        job = store.get_job(job_id)
        assert job.state == "succeeded" and job.step == 60 and job.attempts == 2, job
        params = decode_tensors(graphspec.codec.pack(graphspec.parse(store.get_blob(job_id, "result"),
                                                                     "msgpack")["params"]))
    finally:
        store._r.close()
    written = [step for steps, _ in reported for step in steps]
    progress = [step for _, step in reported]
    assert written == list(range(21, 61)), f"the resumed run reported steps {written[:5]}... (checkpoint at 20)"
    assert progress == sorted(progress) and progress[0] > 20, f"the job's step went back: {progress[:5]}..."
    for name, value in expected.params.items():
        np.testing.assert_array_equal(params[name], value)


def test_replayed_step_is_refused_not_duplicated(store, submit, seed_graph, seed_data):
    job_id = submit(seed_graph, seed_data, SEED_SPEC, send=False)

    def rec(step: int, loss: float) -> StepRecord:
        return StepRecord(step=step, loss=loss, grad_norms={"w1": 0.1}, time=time.time())

    assert store.acquire_lease(job_id, "t")
    # report_steps returns (refused steps, the job's state).
    assert store.report_steps(job_id, "t", [rec(1, 0.9), rec(2, 0.8)], {"step": 2}) == ([], "queued")
    # A redelivered task replays steps 2 and 3 from a checkpoint: 2 is refused, 3 is new.
    assert store.report_steps(job_id, "t", [rec(2, 0.5), rec(3, 0.7)], {"step": 3}) == ([2], "queued")
    assert store.report_steps(job_id, "t", [rec(3, 0.1), rec(1, 0.2)], {"step": 3}) == ([3, 1], "queued")
    store.release_lease(job_id, "t")
    steps = all_steps(store, job_id)
    assert [(s.step, s.loss) for s in steps] == [(1, 0.9), (2, 0.8), (3, 0.7)]
    assert store.get_job(job_id).step == 3


def test_redelivered_message_of_finished_job_does_not_train_again(store, submit, seed_graph, seed_data):
    job_id = submit(seed_graph, seed_data, SEED_SPEC)
    job, _ = wait_for_state(store, job_id, {"succeeded", "failed", "cancelled"})
    assert job.state == "succeeded"
    before = [(s.step, s.loss, s.time) for s in all_steps(store, job_id)]
    submit.send(job_id)  # at-least-once delivery: the same message again
    sentinel = submit(seed_graph, seed_data, {**SEED_SPEC, "steps": 5})
    wait_for_state(store, sentinel, {"succeeded", "failed", "cancelled"})
    after = store.get_job(job_id)
    assert after.attempts == 1 and after.finished == job.finished
    assert [(s.step, s.loss, s.time) for s in all_steps(store, job_id)] == before


class _MkdirWhenUnpickled:
    """Unpickling this runs os.mkdir(path): the marker shows whether anything was unpickled."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def _publish_raw(celery_app, queue: str, job_id: str, body: bytes, content_type: str, content_encoding: str) -> None:
    """A hand-made Celery protocol-2 task message for chainrule.train(job_id)."""
    task_id = str(uuid.uuid4())
    headers = {"lang": "py", "task": "chainrule.train", "id": task_id, "root_id": task_id, "parent_id": None,
               "group": None, "retries": 0, "eta": None, "expires": None, "timelimit": [None, None],
               "argsrepr": repr((job_id,)), "kwargsrepr": "{}", "origin": "chainrule-tests"}
    with celery_app.connection_for_write() as conn:
        conn.Producer().publish(body, exchange="", routing_key=queue, content_type=content_type,
                                content_encoding=content_encoding, headers=headers, correlation_id=task_id,
                                retry=True)


def test_pickled_message_is_refused(store, submit, celery_app, celery_worker, settings, seed_graph, seed_data,
                                    tmp_path):
    assert celery_app.conf.accept_content == ["json"]
    worker_conf = celery_app.control.inspect(destination=[celery_worker.hostname], timeout=5).conf()
    assert worker_conf[celery_worker.hostname]["accept_content"] == ["json"]

    marker = tmp_path / "unpickled"
    pickled_job = submit(seed_graph, seed_data, SEED_SPEC, send=False)
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None,
             "marker": _MkdirWhenUnpickled(str(marker))}
    _publish_raw(celery_app, settings.queue, pickled_job, pickle.dumps(((pickled_job,), {}, embed), protocol=2),
                 "application/x-python-serialize", "binary")

    # Control: the same hand-made message in JSON is accepted and runs. One queue and one
    # solo worker, so when it has finished the pickled message ahead of it was handled.
    json_job = submit(seed_graph, seed_data, SEED_SPEC, send=False)
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    _publish_raw(celery_app, settings.queue, json_job, json.dumps([[json_job], {}, embed]).encode(),
                 "application/json", "utf-8")
    job, _ = wait_for_state(store, json_job, {"succeeded", "failed", "cancelled"})
    assert job.state == "succeeded", job

    job = store.get_job(pickled_job)
    assert job.state == "queued" and job.attempts == 0, job
    assert not marker.exists(), "the worker unpickled a message"
    assert store._r.llen(f"{settings.namespace}:celery:{settings.queue}") == 0  # refused, not requeued
    log = celery_worker.log()
    assert "untrusted content" in log or "ContentDisallowed" in log, log[-3000:]


def test_listing_pages_never_skip_jobs_created_in_the_same_instant(store):
    """The cursor is (creation time, id): a page boundary inside a group of equal creation
    times (a busy API, a coarse clock) neither skips nor repeats a job."""
    tenant = f"ties-{uuid.uuid4().hex[:8]}"
    ids = [store.create_job(tenant, "g", {"steps": 1}, b"")[0] for _ in range(7)]
    store._r.zadd(store.tenant_key(tenant, "jobs"), {job_id: 1000.0 for job_id in ids[2:6]})  # four ties
    for limit in (1, 2, 3):
        seen, cursor = [], None
        while True:
            page, cursor = store.list_jobs(tenant, before=cursor, limit=limit)
            seen += [job.id for job in page]
            if cursor is None:
                break
        assert sorted(seen) == sorted(ids) and len(seen) == len(ids), limit
    for job_id in ids:
        store.request_cancel(job_id)


def _dropout_mlp(rate: float) -> graphspec.Graph:
    g = graphspec.GraphBuilder("dropout_mlp", dtype="float32")
    x, y = g.input("x", ["N", 4]), g.input("y", ["N"], dtype="int64")
    logits = g.linear(g.dropout(g.relu(g.linear(x, 16, name="hidden")), rate, name="drop"), 3, name="head")
    g.output("accuracy", g.accuracy(logits, y))
    g.loss(g.softmax_cross_entropy(logits, y))
    return g.build()


def test_a_dropout_job_redelivered_after_its_checkpoint_draws_the_same_masks(store, submit, celery_worker):
    """Dropout's masks come from the job's seed and the step number (runtime.Noise), not from a
    generator's history: a worker that dies after checkpointing at step 20 hands over to one that
    resumes at step 21 with the masks an uninterrupted run draws, so the job ends bit for bit as
    the same training run in this process."""
    graph = _dropout_mlp(0.4)
    rng = np.random.default_rng(3)
    x_value = rng.normal(size=(64, 4)).astype(np.float32)
    data = {"x": x_value, "y": (x_value[:, 0] > 0).astype(np.int64) + (x_value[:, 1] > 0.5)}
    spec = {**SEED_SPEC, "seed": 11, "checkpoint_every": 20}

    def local(graph, **fit):
        trainer = runtime.Trainer(graph, runtime.make_optimizer(**spec["optimizer"]), batch_size=16, seed=11)
        return trainer.fit(data, runtime.init_params(graph, seed=11), steps=60, **fit)

    checkpoints, reports = [], []
    expected = local(graph, callback=reports.append, checkpoint_every=20, on_checkpoint=checkpoints.append)
    by_step = {r.step: r for r in reports}
    assert local(_dropout_mlp(0.0)).losses != expected.losses  # the masks change the run: they are under test

    job_id, steps = _redelivered_after_checkpoint(store, submit, graph, data, spec, checkpoints[0],
                                                  {s: by_step[s].loss for s in by_step})
    assert [s.loss for s in steps if s.step > 20] == [by_step[s.step].loss for s in steps if s.step > 20]
    result = graphspec.parse(store.get_blob(job_id, "result"), "msgpack")
    for name, value in runtime.data.tensors_from_tree(result["params"]).items():
        np.testing.assert_array_equal(value, expected.params[name])  # bit for bit, masks included
