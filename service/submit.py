"""Submitting a training job: validate everything, store it, enqueue it.

Nothing is written to Redis until the whole request is known to be runnable: the graph
(inline or stored), the optimizer, the step budget, the data's size, encoding and fit.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis.exceptions
from celery import Celery

import graphspec
import runtime
from runtime.schedules import ScheduleError
from worker import logs
from worker.dispatch import send_job
from worker.records import JobRecord
from worker.step_metrics import step_metric_names
from .settings import ApiSettings
from worker.store import GraphGone, IdempotencyConflict, JobStore, encode_tensors, now

from .data import check_fits, decode_map
from .datarows import per_example
from .limits import check_history_budget, declared_totals, graph_limits
from .memory_limit import check_memory
from .models import DryRun, JobRequest
from .problems import ProblemError, conflict, graph_problem, too_large, unavailable, unprocessable
from .quotas import job_quota
from .views import job_settings, result_params

log = logging.getLogger("service.jobs")



@dataclass
class PreparedJob:
    graph: graphspec.Graph
    graph_id: str
    inline_graph: bool
    spec: dict[str, Any]
    data: bytes
    eval_data: bytes | None
    time_limit_s: int
    init: bytes | None = None  # the starting parameters (init_from's trained ones), as tensors


def _issue(code: str, location: str, message: str) -> list[dict[str, str]]:
    return [{"code": code, "location": location, "message": message}]


def _resolve_graph(req: JobRequest, tenant: str, store: JobStore, settings: ApiSettings) -> tuple[graphspec.Graph, bool]:
    if req.graph is not None and req.graph_id is not None:
        raise unprocessable("give either graph or graph_id, not both",
                            _issue("conflicting_fields", "/graph_id", "graph_id given together with an inline graph"))
    if req.graph is None and req.graph_id is None:
        raise unprocessable("a job needs a graph: an inline document in graph, or graph_id",
                            _issue("missing_field", "/graph", "give graph (a document) or graph_id"))
    if req.graph is not None:
        try:
            return graphspec.from_data(req.graph, graph_limits(settings)), True
        except graphspec.GraphSpecError as exc:
            raise graph_problem(exc, prefix="/graph") from None
    graph = store.get_graph(tenant, req.graph_id)
    if graph is None:
        raise unprocessable(f"graph {req.graph_id!r} is not stored; POST it to /v1/graphs first",
                            _issue("unknown_graph", "/graph_id", f"no stored graph {req.graph_id!r}"))
    return graph, False


def prepare_job(req: JobRequest, tenant: str, store: JobStore, settings: ApiSettings) -> PreparedJob:
    """Everything checked, nothing stored; a ProblemError (413/422) names what is wrong and where."""
    graph, inline = _resolve_graph(req, tenant, store, settings)

    try:  # every training setting, checked once, here (runtime.TrainingSpec: the one definition)
        training = runtime.TrainingSpec.from_dict(req.training())
        optimizer = training.optimizer_config()  # stored in full: the job's settings say what it trains with
        json.dumps(optimizer, allow_nan=False)
    except runtime.SpecError as exc:
        optimizer_issue = any(issue["code"] == "invalid_optimizer" for issue in exc.issues)
        raise unprocessable(exc.issues[0]["message"] if len(exc.issues) == 1 else str(exc), exc.issues,
                            **({"kind": "invalid-optimizer"} if optimizer_issue else {})) from None
    except (ValueError, TypeError, OverflowError) as exc:
        raise unprocessable(f"invalid optimizer: {exc}", _issue("invalid_optimizer", "/optimizer", str(exc)),
                            kind="invalid-optimizer") from None
    if training.steps is not None and training.steps > settings.max_steps:
        raise unprocessable(f"steps is {training.steps}; the limit is {settings.max_steps}",
                            _issue("too_large", "/steps", f"at most {settings.max_steps} steps"))
    if training.eval_every is not None and req.eval_data is None:
        raise unprocessable("eval_every needs eval_data", _issue("missing_field", "/eval_data",
                                                                 "eval_every is set but eval_data is missing"))

    # Size before decoding: the declared dtype x shape of every tensor.
    limits = graph_limits(settings)
    total = declared_totals(req.data)[1] + declared_totals(req.eval_data or {})[1]
    if total > settings.max_job_data_bytes:
        raise too_large(f"the job's data is {total} bytes; the limit is {settings.max_job_data_bytes}",
                        location="/data", limit=settings.max_job_data_bytes)

    trainer = runtime.Trainer.from_spec(graph, training)  # what the worker will build: its checks and counts
    data = decode_map(req.data, "/data", limits)
    examples = check_fits(trainer, data, "/data")
    eval_data = eval_examples = None
    if req.eval_data is not None:
        eval_data = decode_map(req.eval_data, "/eval_data", limits)
        eval_examples = check_fits(trainer, eval_data, "/eval_data")

    check_memory(trainer, data, eval_data, settings, gradients=training.gradients,
                 graph_location="/graph" if inline else "/graph_id")
    spec = stored_spec(training, graph, trainer, settings, examples, data_summary(graph, data, examples),
                       None if eval_data is None else data_summary(graph, eval_data, eval_examples))
    init = None if training.init_from is None else warm_start(store, tenant, training.init_from, graph)
    time_limit = spec["time_limit_s"]
    return PreparedJob(graph=graph, graph_id=graphspec.content_hash(graph), inline_graph=inline, spec=spec,
                       data=encode_tensors(data),
                       eval_data=encode_tensors(eval_data) if eval_data is not None else None,
                       time_limit_s=time_limit, init=init)


def stored_spec(training: runtime.TrainingSpec, graph: graphspec.Graph, trainer: runtime.Trainer,
                settings: ApiSettings, examples: int | None, summary: dict[str, Any],
                eval_summary: dict[str, Any] | None) -> dict[str, Any]:
    """The spec a job is stored with, after the checks that need the data's size: the step limit,
    the schedule against the run's length, the history budget (a sweep's trials: each of them)."""
    total_steps = trainer.total_steps(examples, training.steps, training.epochs)
    if total_steps is not None and total_steps > settings.max_steps:
        raise unprocessable(f"{training.epochs} epochs are {total_steps} steps; the limit is {settings.max_steps}",
                            _issue("too_large", "/epochs", f"at most {settings.max_steps} steps in all"))
    optimizer = training.optimizer_config()
    try:  # the schedule against the run's length, now that it is known (warmup longer than the run...)
        training.lr_schedule().check(optimizer["lr"], total_steps)
    except ScheduleError as exc:
        raise unprocessable(str(exc), _issue("invalid_value", f"/{exc.setting}", str(exc))) from None
    history_bytes = check_history_budget(graph, total_steps, training.report_every, training.gradients, settings,
                                         tuple(step_metric_names(graph, training, eval_summary is not None)))
    time_limit = min(training.time_limit_s or settings.default_time_limit_s, settings.max_time_limit_s)
    return {
        **training.to_dict(), "optimizer": optimizer, "time_limit_s": time_limit,
        # not read by the worker; kept for the job resource and for operators
        "total_steps": total_steps, "examples": examples, "data_summary": summary, "eval_data_summary": eval_summary,
        "history_bytes": history_bytes,  # the step history's bound: counts toward the tenant's max_job_bytes
    }


def warm_start(store: JobStore, tenant: str, job_id: str, graph: graphspec.Graph) -> bytes:
    """The trained parameters of ``job_id`` (this tenant's, succeeded) as the new job's starting
    point, checked against ``graph``'s parameters: every name, shape and dtype must match."""
    source = store.get_job(job_id)
    if source is None or source.tenant != tenant:
        raise unprocessable(f"init_from: no job {job_id} (of this tenant)",
                            _issue("unknown_job", "/init_from", f"no job {job_id}: give a succeeded job of yours"))
    blob = store.get_blob(job_id, "result") if source.state == "succeeded" else None
    if blob is None:
        raise unprocessable(f"init_from: job {job_id} is {source.state}; only a succeeded job has trained parameters",
                            _issue("job_not_succeeded", "/init_from", f"job {job_id} is {source.state}, not "
                                                                      "succeeded"))
    params = result_params(blob)
    problems = []
    for name, spec in graph.parameters.items():
        if name not in params:
            problems.append(f"{name!r} is not among its parameters ({', '.join(sorted(params)) or 'none'})")
        elif params[name].dtype.name != spec.dtype or list(params[name].shape) != list(spec.shape):
            problems.append(f"{name!r} is {params[name].dtype.name}{list(params[name].shape)} there, "
                            f"{spec.dtype}{list(spec.shape)} here")
    extra = sorted(set(params) - set(graph.parameters))
    if extra:
        problems.append(f"it has parameters this graph lacks: {', '.join(extra)}")
    if problems:
        message = f"init_from: job {job_id}'s parameters do not fit this graph: {'; '.join(problems)}"
        raise unprocessable(message, _issue("incompatible_parameters", "/init_from", message))
    return encode_tensors({name: params[name] for name in graph.parameters})


def data_summary(graph: graphspec.Graph, arrays: dict[str, Any], examples: int | None) -> dict[str, Any]:
    """The job resource's ``data``/``eval_data``: rows, decoded bytes, and each tensor's dtype and shape."""
    return {"examples": examples, "bytes": sum(int(a.nbytes) for a in arrays.values()),
            "inputs": {name: {"dtype": a.dtype.name, "shape": list(a.shape),
                              "per_example": per_example(graph, name)}
                       for name, a in arrays.items()}}


def dry_run(prepared: PreparedJob) -> DryRun:
    """What submitting ``prepared`` would store, for ``POST /v1/jobs?dry_run=true``."""
    spec = prepared.spec
    return DryRun(graph_id=prepared.graph_id, total_steps=spec["total_steps"], settings=job_settings(spec),
                  data=spec["data_summary"], eval_data=spec["eval_data_summary"])


def submit_job(prepared: PreparedJob, tenant: str, store: JobStore, celery: Celery, settings: ApiSettings,
               idempotency_key: str | None) -> tuple[JobRecord, bool]:
    """Store and enqueue; returns (job hash, created). A repeated Idempotency-Key returns the first job."""
    limits = settings.limits_for(tenant)
    graph_id = prepared.graph_id

    def store_it() -> tuple[JobRecord, bool]:
        return store.store_job(tenant, graph_id, prepared.spec, prepared.data, prepared.eval_data,
                               idempotency_key=idempotency_key, init=prepared.init,
                               request_id=logs.request_id.get(), quota=job_quota(limits),
                               history_bytes=prepared.spec["history_bytes"], keep_graph_s=settings.graph_retention_s)

    try:
        try:  # the graph is kept stored in the same step (it must outlive the job's wait in the queue)
            job, created = store_it()
        except GraphGone:  # an inline graph not stored yet, or a stored one that expired meanwhile
            store_graph(store, settings, tenant, prepared.graph, graph_id)
            try:
                job, created = store_it()
            except GraphGone:
                raise conflict(f"graph {graph_id} was deleted while this job was being stored; submit it "
                               "again") from None
    except IdempotencyConflict as exc:
        raise ProblemError(422, str(exc), kind="idempotency-key-reused", job_id=exc.job_id) from None
    job_id = job.id
    if not created:
        return _replayed(store, tenant, job_id), False
    log.info("job %s submitted (tenant %s, graph %s)", job_id, tenant, graph_id)
    # `job` is as stored (queued): once sent, a worker may already be running it.
    try:
        send_job(celery, settings, job_id, prepared.time_limit_s)
    except Exception as exc:  # noqa: BLE001 - any broker failure: the job must not stay queued forever
        if _redis_full(exc):
            # Stored whole and in the outbox: the recovery loop sends it once Redis has room. A 503
            # here would make a client without an Idempotency-Key submit it a second time.
            log.warning("job %s stored; Redis is full, so the recovery loop will send it: %s", job_id, exc)
            return job, True
        log.error("could not enqueue job %s: %s", job_id, exc)
        _mark_enqueue_failed(store, tenant, job_id, idempotency_key, exc)
        raise unavailable("the job could not be queued (task broker unavailable); retry later",
                          kind="queue-unavailable", job_id=job_id) from None
    try:
        store.mark_sent(job_id, job.created)  # if this process dies before here, the sweep sends the job
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        # Sent but still in the outbox: the sweep sends it again, which is harmless; a 503
        # here would make a client without an Idempotency-Key submit a second job.
        log.warning("job %s sent; could not clear its outbox entry: %s", job_id, exc)
    return job, True


def keep_graph_stored(store: JobStore, settings: ApiSettings, tenant: str, graph: graphspec.Graph,
                      graph_id: str) -> str:
    """Keep a sweep's graph stored for at least ``graph_retention_s`` more, so it outlives the
    wait of the trials it launches later (a job's own graph is kept by the script that stores the
    job: :func:`submit_job`): a graph the tenant already stores (by id, or the same document sent
    inline again) is only kept longer; any other is stored, as is one that expired since the
    request was checked."""
    if not store.keep_graph(tenant, graph_id, settings.graph_retention_s):
        store_graph(store, settings, tenant, graph, graph_id)
    return graph_id


def store_graph(store: JobStore, settings: ApiSettings, tenant: str, graph: graphspec.Graph, graph_id: str) -> None:
    """Store ``graph`` (as ``graph_id``) for ``graph_retention_s``, counted toward the tenant's
    max_graph_bytes (a 429 over it)."""
    store.put_graph(tenant, graph, ttl_s=settings.graph_retention_s,
                    max_bytes=settings.limits_for(tenant).max_graph_bytes, graph_id=graph_id)


def _redis_full(exc: BaseException | None) -> bool:
    """Whether a broker error is Redis at its maxmemory (kombu wraps Redis's OOM refusal)."""
    while exc is not None:
        if isinstance(exc, redis.exceptions.OutOfMemoryError) or "used memory > 'maxmemory'" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _replayed(store: JobStore, tenant: str, job_id: str) -> JobRecord:
    # The first request may still be writing the job (set-if-absent on the key comes first).
    for _ in range(20):
        job = store.job_for_tenant(tenant, job_id)
        if job is not None:
            return job
        time.sleep(0.05)
    raise conflict("a request with this Idempotency-Key is still being processed; retry shortly", job_id=job_id)


def _mark_enqueue_failed(store: JobStore, tenant: str, job_id: str, idempotency_key: str | None,
                         exc: Exception) -> None:
    try:
        store.transition(job_id, ["queued"], "failed", finished=repr(now()), error_type="EnqueueError",
                         error_message=f"the job could not be queued: {exc}"[:2000])
        if idempotency_key is not None:
            # A retry with the same key must enqueue a new job, not replay the failed one.
            store.release_idempotency_key(tenant, idempotency_key)
    except Exception:  # noqa: BLE001 - Redis may be what failed; the 503 stands either way
        log.exception("could not mark job %s as failed after the enqueue error", job_id)


def check_idempotency_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not key or len(key) > 255 or not key.isprintable():
        raise ProblemError(400, "Idempotency-Key must be 1 to 255 printable characters", kind="invalid-header")
    return key
