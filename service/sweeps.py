"""Hyperparameter sweeps through the API: check a sweep whole (the base job, every trial's
settings), store it, launch its first trials; read and cancel. The trials then run as ordinary
jobs, and the workers move the sweep on (worker/sweeps.py)."""

from __future__ import annotations

from datetime import datetime, timezone
from celery import Celery

import runtime
from runtime.sweeps import SearchSpace, apply
from worker.store import JobStore, now
from worker.sweeps import advance, summary

from .memory_limit import check_memory
from .models import SweepRequest, SweepResource, SweepTrial
from .problems import ProblemError, unprocessable
from .settings import ApiSettings
from .submit import keep_graph_stored, prepare_job, stored_spec

MAX_TRIALS = 1000  # trials in one sweep, at most


def _relocated(exc: ProblemError, prefix: str) -> ProblemError:
    """The same problem with its locations under ``prefix`` (the base job is /base in a sweep)."""
    if exc.errors:
        exc.errors = [{**e, "location": prefix + e.get("location", "")} for e in exc.errors]
    return exc


def create_sweep(req: SweepRequest, tenant: str, store: JobStore, celery: Celery, settings: ApiSettings) -> str:
    """Check everything, store the sweep and launch its first trials; returns its id."""
    if req.max_trials > MAX_TRIALS:
        raise unprocessable(f"max_trials is {req.max_trials}; the limit is {MAX_TRIALS}",
                            [{"code": "too_large", "location": "/max_trials", "message": f"at most {MAX_TRIALS}"}])
    if req.base.init_from is not None:
        raise unprocessable("init_from is not supported in a sweep's base (yet): start each trial from its "
                            "initializers", [{"code": "unsupported", "location": "/base/init_from",
                                              "message": "not supported in a sweep"}])
    try:
        base = prepare_job(req.base, tenant, store, settings)
    except ProblemError as exc:
        raise _relocated(exc, "/base") from None
    rule = req.early_termination
    if rule is not None and rule.rule == "asha" and rule.min_steps is None:
        raise unprocessable("the asha rule needs min_steps (its first rung)",
                            [{"code": "missing_field", "location": "/early_termination/min_steps",
                              "message": "give min_steps"}])
    try:
        assignments = SearchSpace.from_dict(req.space).trials(req.method, max_trials=req.max_trials, seed=req.seed)
    except runtime.SpecError as exc:
        raise unprocessable(exc.issues[0]["message"], exc.issues) from None
    graph = base.graph
    trials, max_steps = [], 0
    body = req.base.training()
    # each trial's memory estimate (its batch size may differ) from the data's dtypes and shapes,
    # as the base job's checks summarised them: nothing to decode again
    data, eval_data = (None if summary is None else {name: (i["dtype"], tuple(i["shape"]))
                                                     for name, i in summary["inputs"].items()}
                       for summary in (base.spec["data_summary"], base.spec["eval_data_summary"]))
    for index, assignment in enumerate(assignments):
        try:
            training = apply(body, assignment)
            trainer = runtime.Trainer.from_spec(graph, training)
            check_memory(trainer, data, eval_data, settings, gradients=training.gradients,
                         graph_location="/base/graph" if base.inline_graph else "/base/graph_id")
            spec = stored_spec(training, graph, trainer, settings, base.spec["examples"], base.spec["data_summary"],
                               base.spec["eval_data_summary"])
        except runtime.SpecError as exc:
            raise unprocessable(f"trial {index} ({assignment}): {exc.issues[0]['message']}", exc.issues) from None
        except ProblemError as exc:
            raise unprocessable(f"trial {index} ({assignment}): {exc.detail}", exc.errors or []) from None
        trials.append({"assignment": assignment, "spec": spec})
        max_steps = max(max_steps, spec["total_steps"] or 0)
    config = {"method": req.method, "seed": req.seed, "max_trials": len(trials), "max_concurrent": req.max_concurrent,
              "space": req.space, "early_termination": None if rule is None else rule.model_dump(),
              "objective": "eval_loss" if base.eval_data is not None else "loss", "max_steps": max_steps,
              "queue": settings.queue,  # its trials go to the queue the API sends jobs to
              # the tenant's cap as the sweep starts: its trials wait queued at it like jobs do
              "max_running_jobs": settings.limits_for(tenant).max_running_jobs}
    graph_id = keep_graph_stored(store, settings, tenant, graph, base.graph_id)
    sweep_id = store.create_sweep(tenant, graph_id, config, trials, base.data, base.eval_data, now())
    advance(store, sweep_id, celery)  # the first trials; the workers launch the rest as trials finish
    return sweep_id


def sweep_resource(store: JobStore, sweep_id: str) -> SweepResource:
    sweep = store.get_sweep(sweep_id)
    config = sweep.config
    found = summary(store, sweep_id)
    return SweepResource(
        id=sweep.id, state=sweep.state, method=config["method"], objective=config["objective"],
        max_trials=config["max_trials"], max_concurrent=config["max_concurrent"],
        early_termination=config.get("early_termination"), space=config["space"],
        trials=[SweepTrial(**t) for t in found["trials"]],
        best=None if found["best"] is None else SweepTrial(**found["best"]),
        created=_time(sweep.created), finished=_time(sweep.finished))


def cancel_sweep(store: JobStore, celery: Celery, sweep_id: str) -> None:
    """Stop launching trials and cancel the running ones (the sweep is cancelled once they stop)."""
    store.set_sweep_state(sweep_id, ("running",), "cancelling")
    advance(store, sweep_id, celery)  # cancelling: it launches nothing


def _time(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, tz=timezone.utc)

