"""A stored job as a typed record: what :meth:`worker.store.JobStore.get_job` returns.

A job lives in one Redis hash of strings (worker/store.py writes it, atomically, in Lua).
:meth:`JobRecord.from_hash` is the one place those strings are read back — numbers parsed,
timestamps as Unix seconds, the error as one object, the stored spec as a dict — so no caller
indexes the hash by field name. A field a job was stored without (an older version wrote
it) reads as None, and a value that does not parse reads as None rather than failing the
request that shows the job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class JobFailure:
    """Why a job failed: an error type (``NonFiniteError``, ``TimeLimitExceeded``...), a message,
    and the graph node it names, if any."""

    type: str
    message: str
    node: str | None = None


@dataclass(frozen=True)
class JobRecord:
    id: str
    tenant: str
    state: str
    graph_id: str
    spec: dict[str, Any] = field(default_factory=dict)  # the stored training spec and the service's notes on it
    step: int = 0
    total_steps: int | None = None
    epoch: int | None = None
    loss: float | None = None  # the latest training loss (NaN/inf as they are)
    best_loss: float | None = None
    best_loss_step: int | None = None
    created: float | None = None  # Unix seconds
    started: float | None = None
    finished: float | None = None
    updated: float | None = None
    requeued: float | None = None
    error: JobFailure | None = None
    worker: str | None = None
    lease: str | None = None  # the token of the trainer that last started it (the live lease is its own key)
    attempts: int = 0
    stop_reason: str | None = None  # why a succeeded job stopped (runtime.stopping.REASONS)
    request_id: str | None = None  # the X-Request-ID of the request that submitted it (worker/logs.py)

    @classmethod
    def from_hash(cls, fields: Mapping[str, str]) -> "JobRecord":
        """A job hash (decoded to str) as a record."""
        get = fields.get
        try:
            spec = json.loads(get("spec") or "{}")
        except ValueError:
            spec = {}
        if not isinstance(spec, dict):
            spec = {}
        error = None
        if get("error_type"):
            error = JobFailure(get("error_type", ""), get("error_message", ""), get("error_node") or None)
        return cls(
            id=get("id", ""), tenant=get("tenant", ""), state=get("state", ""), graph_id=get("graph_id", ""),
            spec=spec, step=_int(get("step")) or 0,
            total_steps=_int(get("total_steps")) or spec.get("total_steps") or None,
            epoch=_int(get("epoch")), loss=_float(get("loss")), best_loss=_float(get("best_loss")),
            best_loss_step=_int(get("best_loss_step")), created=_float(get("created")),
            started=_float(get("started")), finished=_float(get("finished")), updated=_float(get("updated")),
            requeued=_float(get("requeued")), error=error, worker=get("worker") or None,
            lease=get("lease") or None, attempts=_int(get("attempts")) or 0, stop_reason=get("stop_reason") or None,
            request_id=get("request_id") or None)

    @property
    def time_limit_s(self) -> int | None:
        """The job's time limit as the server capped it at submit (None for a job stored without one)."""
        value = self.spec.get("time_limit_s")
        return value if isinstance(value, int) and not isinstance(value, bool) else None


def _int(value: str | None) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(float(value))
    except (ValueError, OverflowError):
        return None


def _float(value: str | None) -> float | None:
    if value in (None, ""):
        return None
    try:
        return float(value)
    except ValueError:
        return None
