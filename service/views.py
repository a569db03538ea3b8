"""Stored job data (Redis hashes, stream entries, msgpack blobs) as API resources."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Any

from pydantic import ValidationError

import graphspec
from graphspec.tensors import RawBytes
from runtime.data import tensors_from_tree
from worker.records import JobRecord
from worker.store import StepRecord, decode_tensors

from .bodies import finite, tensors_json, tensors_raw
from .models import (DataSummary, GraphAnalysis, JobError, JobLinks, JobResource, JobResult, JobSettings, StepEntry,
                     Tensor, ValueType)


def _time(value: float | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromtimestamp(value, tz=timezone.utc)
    except (ValueError, OverflowError, OSError):
        return None


def _finite(value: float | None) -> float | None:
    """NaN and inf (a diverged loss) are null in JSON."""
    return value if value is not None and math.isfinite(value) else None


def job_links(job_id: str) -> JobLinks:
    base = f"/v1/jobs/{job_id}"
    return JobLinks(self=base, steps=f"{base}/steps", events=f"{base}/events", result=f"{base}/result",
                    cancel=f"{base}/cancel", data=f"{base}/data")


def job_resource(job: JobRecord) -> JobResource:
    """A stored job (JobStore.get_job) as the API's job resource."""
    spec = job.spec
    error = None if job.error is None else JobError(type=job.error.type, message=job.error.message, node=job.error.node)
    return JobResource(
        id=job.id, state=job.state, step=job.step, total_steps=job.total_steps, epoch=job.epoch,
        loss=_finite(job.loss), best_loss=_finite(job.best_loss), best_loss_step=job.best_loss_step,
        settings=job_settings(spec), data=_summary(spec.get("data_summary")),
        eval_data=_summary(spec.get("eval_data_summary")),
        created=_time(job.created), started=_time(job.started), finished=_time(job.finished),
        error=error, worker=job.worker, attempts=job.attempts, graph_id=job.graph_id, links=job_links(job.id),
        stop_reason=job.stop_reason,
    )


SETTINGS_FIELDS = tuple(JobSettings.model_fields)


def job_settings(spec: dict[str, Any]) -> JobSettings | None:
    """A stored job spec's training settings; fields it lacks are null, and a spec that does not
    read as settings (none stored, or a shape this version does not know) is null as a whole."""
    if not spec:
        return None
    try:
        return JobSettings.model_validate({name: spec.get(name) for name in SETTINGS_FIELDS})
    except ValidationError:
        return None


def _summary(value: Any) -> DataSummary | None:
    if value is None:
        return None
    try:
        return DataSummary.model_validate(value)
    except ValidationError:
        return None


def step_entry(record: StepRecord) -> StepEntry:
    """A step entry for JSON: stored gradient tensors decoded to JSON tensors."""
    fields: dict[str, Any] = dict(step=record.step, loss=finite(record.loss),
                                  grad_norms={k: finite(v) for k, v in record.grad_norms.items()},
                                  eval_loss=finite(record.eval_loss), time=record.time,
                                  metrics={k: finite(v) for k, v in record.metrics.items()})
    if record.grads is not None:
        fields["grads"] = {k: Tensor(**v) for k, v in tensors_json(decode_tensors(record.grads)).items()}
    return StepEntry(**fields)


def step_tree_msgpack(record: StepRecord) -> dict[str, Any]:
    """A step entry for msgpack: gradient tensors stay raw bytes."""
    out: dict[str, Any] = {"step": record.step, "loss": record.loss, "grad_norms": record.grad_norms,
                           "eval_loss": record.eval_loss, "time": record.time, "metrics": dict(record.metrics)}
    if record.grads is not None:
        out["grads"] = tensors_raw(decode_tensors(record.grads))
    return out


def step_json(record: StepRecord) -> str:
    return json.dumps(step_entry(record).model_dump(mode="json", exclude_unset=True), separators=(",", ":"),
                      allow_nan=False)


def result_resource(blob: bytes) -> JobResult:
    """The stored result blob (msgpack: params as raw tensors, loss, steps, epochs, eval_loss) for JSON."""
    limits = graphspec.Limits(max_bytes=len(blob) + 1, max_tensor_elements=2**40)
    tree = graphspec.parse(blob, "msgpack", limits)
    arrays = tensors_from_tree(tree.get("params", {}), "result", limits=limits)
    metrics, eval_metrics = tree.get("metrics") or {}, tree.get("eval_metrics")
    return JobResult(loss=finite(tree.get("loss")), steps=int(tree.get("steps", 0)),
                     epochs=int(tree.get("epochs", 0)), eval_loss=finite(tree.get("eval_loss")),
                     params={k: Tensor(**v) for k, v in tensors_json(arrays).items()},
                     stop_reason=tree.get("stop_reason"), best_step=tree.get("best_step"),
                     metrics={k: finite(v) for k, v in metrics.items()},
                     eval_metrics=None if eval_metrics is None else {k: finite(v) for k, v in eval_metrics.items()})


def result_params(blob: bytes) -> dict[str, Any]:
    """The trained parameters of a stored result blob, as arrays."""
    limits = graphspec.Limits(max_bytes=len(blob) + 1, max_tensor_elements=2**40)
    return tensors_from_tree(graphspec.parse(blob, "msgpack", limits).get("params", {}), "result", limits=limits)


def json_safe(value: Any) -> Any:
    """Nested lists of numbers with NaN/inf as the strings JSON tools use for them."""
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, RawBytes):
        return None
    return value


def graph_analysis(graph_id: str, graph: graphspec.Graph) -> GraphAnalysis:
    """What validation inferred about a graph (``graph.analysis``): execution order and every value's type."""
    analysis = graph.analysis
    kinds = {**{name: "node" for name in (n.id for n in graph.nodes)},
             **{name: "parameter" for name in graph.parameters}, **{name: "input" for name in graph.inputs}}
    types = {name: ValueType(kind=kinds[name], dtype=t.dtype, shape=list(t.shape))
             for name, t in analysis.types.items() if name in kinds}
    return GraphAnalysis(graph_id=graph_id, order=[graph.nodes[i].id for i in analysis.order], types=types,
                         outputs=dict(graph.outputs), loss=graph.loss)
