"""Refusing a job whose estimated peak memory is over ``max_job_memory_bytes``, before it is stored.

The estimate is runtime.memory's: from the graph's static shapes, the data's shapes and the
batch size (docs/runtime.md, "Memory"). The 422 names the largest values and how to fit: the
largest batch size that does, or else the graph's or the data's size.
"""

from __future__ import annotations

from typing import Any, Mapping

import runtime
from runtime.memory import MemoryEstimate, estimate_training, largest_fitting_batch
from worker.settings import Settings

from .problems import unprocessable

def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def check_memory(trainer: runtime.Trainer, data: Mapping[str, Any], eval_data: Mapping[str, Any] | None,
                 settings: Settings, *, gradients: str = "norms", graph_location: str = "/graph") -> MemoryEstimate:
    """The job's estimate; a 422 ``memory-too-large`` when it is over ``settings.max_job_memory_bytes``.

    ``data``/``eval_data``: the decoded arrays (or ``(dtype, shape)`` pairs); ``trainer``: the one
    the worker will build (runtime.Trainer.from_spec). The issue's location is ``/batch_size`` when
    a smaller batch fits (the message names the largest that does), else ``/data`` or
    ``/eval_data`` when the data's own parts are the largest, else ``graph_location`` (``/graph``,
    or ``/graph_id`` for a stored graph)."""
    cap = settings.max_job_memory_bytes
    estimate = estimate_training(trainer, data, eval_data, gradients=gradients, engine="compiled")
    if estimate.total <= cap:
        return estimate
    largest = estimate.largest(3)
    named = "; ".join(f"{p.name}: {p.what}, {_mib(p.bytes)}" for p in largest)
    head = (f"the job's estimated peak memory is {_mib(estimate.total)} (batch size {estimate.batch_size}); "
            f"a job may use at most {_mib(cap)} (max_job_memory_bytes). Largest: {named}")
    fits = None
    if estimate.batch_size is not None and estimate.batch_size > 1:
        fits = largest_fitting_batch(trainer, data, eval_data, cap, gradients=gradients, engine="compiled")
    if fits is not None:
        location = "/batch_size"
        fix = f"set batch_size to {fits} or less"
    else:  # not even a batch of 1: what is largest then says what to shrink
        smallest = estimate if not estimate.batch_size else estimate_training(
            trainer, data, eval_data, batch_size=1, gradients=gradients, engine="compiled")
        top = smallest.largest(1)[0]
        if top.name.startswith("eval_data/") or top.name == "evaluation":
            location, fix = "/eval_data", "use less eval_data (evaluation runs over all of it at once)"
        elif top.what.startswith("training data"):
            location, fix = "/data", "use less data"
        else:
            location, fix = graph_location, ("use a smaller graph (fewer or smaller parameters and values)"
                                             + (": even a batch of 1 does not fit" if estimate.batch_size else ""))
    message = f"{head}: {fix}"
    raise unprocessable(message, [{"code": "memory_too_large", "location": location, "message": message}],
                        kind="memory-too-large", title="The job would need too much memory")
