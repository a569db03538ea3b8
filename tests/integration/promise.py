"""The promise the fault tests assert: every accepted job finishes exactly once in effect,
its step history has no gap and no duplicate, and its final parameters are bit for bit
those of an uninterrupted run with the same seed."""

from __future__ import annotations

import numpy as np

import graphspec
import runtime
from worker.store import decode_tensors


def local_params(graph: graphspec.Graph, data: dict[str, np.ndarray], spec: dict) -> dict[str, np.ndarray]:
    """The same training, uninterrupted, in this process."""
    trainer = runtime.Trainer(graph, runtime.make_optimizer(**spec["optimizer"]), batch_size=spec.get("batch_size"),
                              shuffle=spec.get("shuffle", True), seed=spec.get("seed", 0))
    return trainer.fit(data, runtime.init_params(graph, seed=spec.get("seed", 0)), steps=spec["steps"]).params


def assert_as_if_uninterrupted(store, job_id: str, graph: graphspec.Graph, data: dict[str, np.ndarray], spec: dict,
                               *, every: int = 1) -> None:
    job = store.get_job(job_id)
    assert job.state == "succeeded", job
    steps = [r.step for r in store.read_steps(job_id, limit=spec["steps"] + 10)]
    expected_steps = list(range(every, spec["steps"] + 1, every))
    if expected_steps[-1] != spec["steps"]:
        expected_steps.append(spec["steps"])  # the last step is always reported
    assert steps == expected_steps, f"job {job_id}: gaps or duplicates in its step history"
    result = graphspec.parse(store.get_blob(job_id, "result"), "msgpack", graphspec.Limits(max_bytes=10**7))
    params = decode_tensors(graphspec.codec.pack(result["params"]))
    for name, value in local_params(graph, data, spec).items():
        assert params[name].tobytes() == np.asarray(value).tobytes(), f"job {job_id}: {name} differs"
