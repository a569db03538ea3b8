"""Hyperparameter sweeps at run time: launching trials, stopping the ones the early-termination
rule gives up on, finishing the sweep. There is no scheduler process: a sweep moves when one of
its trials finishes (the trial's worker calls :func:`advance`), when the API creates it, and in
every worker's recovery loop (worker/recovery.py), which advances sweeps a dead worker left
between a trial's end and the next launch. Advancing is idempotent and one process at a time
(a short Redis lock); trials are ordinary jobs, sent through Celery like any other.

A trial reports as any job does; its worker checks the sweep's early-termination rule
(runtime.sweeps: median stopping or ASHA) on the objective histories of all the sweep's trials
(eval loss when the sweep has eval data, else training loss) and stops the trial itself when
the rule says so: it ends ``succeeded`` with ``stop_reason: "early_termination"``.
"""

from __future__ import annotations

import logging
import math
import uuid
from typing import Any

from celery import Celery

from runtime.sweeps import asha, median_stopping

from .dispatch import send_job
from .quota_store import JobQuota
from .store import TERMINAL, JobStore, now

log = logging.getLogger("chainrule.sweeps")

CHECK_INTERVAL_S = 0.1  # how often a trial reads the others' histories for the rule


def advance(store: JobStore, sweep_id: str, celery: Celery) -> str | None:
    """Launch trials up to the sweep's max_concurrent, cancel a cancelling sweep's trials, finish
    the sweep when every trial has run. Trials are sent through ``celery`` to the queue the sweep was
    started on (its config's ``queue``). Returns the sweep's
    state (None when it does not exist, or another process is advancing it)."""
    sweep = store.get_sweep(sweep_id)
    if sweep is None or sweep.state in ("succeeded", "cancelled"):
        return None if sweep is None else sweep.state
    token = uuid.uuid4().hex
    if not store.lock_sweep(sweep_id, token):
        return None
    try:
        jobs = store.sweep_jobs(sweep_id)
        states = {index: store.job_state(job_id) for index, job_id in jobs.items()}
        active = [index for index, state in states.items() if state not in TERMINAL and state is not None]
        if sweep.state == "cancelling":
            for index in active:
                store.request_cancel(jobs[index])
            if not [i for i in active if store.job_state(jobs[i]) not in TERMINAL]:
                store.set_sweep_state(sweep_id, ("cancelling",), "cancelled", finished=repr(now()))
                return "cancelled"
            return "cancelling"
        trials = store.sweep_trials(sweep_id)
        config = sweep.config
        data, eval_data = store.sweep_data(sweep_id)
        while len(active) < config["max_concurrent"] and len(jobs) < len(trials):
            index = len(jobs)
            spec = {**trials[index]["spec"], "sweep": {"id": sweep_id, "index": index}}
            job_id, created = store.create_job(sweep.tenant, sweep.graph_id, spec, data or b"\x80", eval_data,
                                               idempotency_key=f"sweep:{sweep_id}:{index}",
                                               history_bytes=spec.get("history_bytes") or 0,
                                               quota=JobQuota(max_running_jobs=config.get("max_running_jobs") or 0))
            store.record_trial(sweep_id, index, job_id)
            if created:  # else a launch that died after storing it: in the outbox, the recovery loop sends it
                send_job(celery, store.settings, job_id, spec.get("time_limit_s") or store.settings.default_time_limit_s,
                         config.get("queue"))
                store.mark_sent(job_id)
            jobs[index] = job_id
            active.append(index)
        if len(jobs) == len(trials) and not active:
            store.set_sweep_state(sweep_id, ("running",), "succeeded", finished=repr(now()))
            return "succeeded"
        return "running"
    finally:
        store.unlock_sweep(sweep_id, token)


def objective_history(store: JobStore, job_id: str, objective: str) -> list[tuple[int, float]]:
    """(step, objective) of each of the trial's step entries that has one."""
    series = store.read_step_series(job_id)
    if not len(series):
        return []
    column = series.column(objective)
    steps = series.values[:, series.column("step")]
    return [(int(s), float(v)) for s, v in zip(steps, series.values[:, column]) if math.isfinite(v)]


def should_stop(store: JobStore, job_id: str, sweep_id: str) -> bool:
    """Whether the sweep's early-termination rule gives up on trial ``job_id`` now."""
    sweep = store.get_sweep(sweep_id)
    rule = (sweep.config.get("early_termination") or {}) if sweep is not None else {}
    if not rule:
        return False
    objective = sweep.config["objective"]
    histories = {jid: objective_history(store, jid, objective) for jid in store.sweep_jobs(sweep_id).values()}
    if rule["rule"] == "median":
        return median_stopping(histories, job_id, grace_steps=rule.get("grace_steps", 0),
                               min_trials=rule.get("min_trials", 3))
    return asha(histories, job_id, min_steps=rule["min_steps"], eta=rule.get("eta", 3),
                max_steps=sweep.config["max_steps"])


def summary(store: JobStore, sweep_id: str) -> dict[str, Any]:
    """Each launched trial's job id, state, step, best objective and stop reason; and the best trial."""
    sweep = store.get_sweep(sweep_id)
    objective = sweep.config["objective"]
    trials = store.sweep_trials(sweep_id)
    out = []
    for index, job_id in sorted(store.sweep_jobs(sweep_id).items()):
        job = store.get_job(job_id)
        history = objective_history(store, job_id, objective)
        best = min((v for _, v in history), default=None)
        out.append({"index": index, "job_id": job_id, "assignment": trials[index]["assignment"],
                    "state": job.state if job else "expired", "step": job.step if job else None,
                    "objective": best, "stop_reason": job.stop_reason if job else None})
    finished = [t for t in out if t["objective"] is not None and t["state"] == "succeeded"]
    best = min(finished or [t for t in out if t["objective"] is not None], key=lambda t: t["objective"],
               default=None)
    return {"trials": out, "best": best}
