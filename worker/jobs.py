"""Running one training job: read it from Redis, train with the runtime, report as it goes.

Kept free of Celery so it can be read (and tested) on its own; worker/tasks.py calls it.

Every write a trainer makes (steps, progress, checkpoints, the result, state changes) is
fenced by its lease token (worker/store.py): once another trainer holds the job or the sweep
has requeued it, the write is refused with LeaseLost and this trainer stops at once.
While Redis is unreachable (a restart) the trainer waits for it, up to
``Settings.redis_outage_s``; past that the job is left to the orphan sweep.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any, Callable, TypeVar

import numpy as np
import redis.exceptions
from celery.exceptions import SoftTimeLimitExceeded

import graphspec
import runtime
from graphspec.codec import pack
from graphspec.tensors import encode_tensor_raw

from .records import JobRecord
from . import logs, metrics, sweeps
from .step_metrics import step_metric_names, step_metrics
from .store import TERMINAL, JobStore, LeaseLost, StepRecord, decode_tensors, encode_tensors, now

log = logging.getLogger(__name__)

# Sampled steps are written in batches (the first step at once): one round trip per interval
# instead of one per step. The interval is at least FLUSH_INTERVAL_S, and long enough that
# writing takes at most FLUSH_SHARE of the trainer's time: a write is a fenced Lua step in
# Redis, whose wait (and OpenBLAS's threads spinning beside it on a small machine) cost ~1 ms
# on a 2-core machine, 2.5 % of a W2-sized job at 50 ms (bench/README.md, issue #19 c). It
# never exceeds FLUSH_INTERVAL_MAX_S, so a slow Redis delays the live view by a second at most.
FLUSH_INTERVAL_S = 0.05
FLUSH_SHARE = 0.01
FLUSH_INTERVAL_MAX_S = 1.0
# Between writes the worker still looks at the cancel flag this often.
CANCEL_POLL_S = 0.25

# BusyLoadingError (Redis restarting, loading its AOF) is a ConnectionError. A Redis at its
# maxmemory (noeviction) refuses writes until retention or deletions free memory: for a trainer
# that is an outage too (it waits, then leaves the job to the sweep), never the job's failure.
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.OutOfMemoryError)
T = TypeVar("T")


def patiently(store: JobStore, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``call`` retried through a Redis outage for up to ``redis_outage_s`` (then it raises).
    Only for writes that are safe to repeat: fenced, keyed by step, or plain sets."""
    deadline = time.monotonic() + store.settings.redis_outage_s
    delay = 0.05
    while True:
        try:
            return call(*args, **kwargs)
        except REDIS_DOWN as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("redis unavailable (%s); retrying in %.2f s", exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


def _quietly(call: Callable[..., T], default: T) -> T:
    """A best-effort read: while Redis is down the next flush waits for it instead."""
    try:
        return call()
    except REDIS_DOWN:
        return default


class _Reporter:
    """Samples every report_every-th step and writes the samples in one fenced round trip
    every ``flush_every`` seconds (FLUSH_INTERVAL_S, longer when writes are slow: FLUSH_SHARE);
    each write also reads the job's state (cancel requests)."""

    def __init__(self, store: JobStore, job_id: str, spec: runtime.TrainingSpec, token: str,
                 stopping_key: str | None = None, metric_names: list[str] | None = None, sweep_id: str | None = None):
        self.store, self.job_id, self.token, self.stopping_key = store, job_id, token, stopping_key
        self.metric_names = metric_names or []
        self.sweep_id = sweep_id  # a sweep's trial: its early-termination rule may stop it
        self.sweep_stopped = False
        self.last_sweep_check = time.monotonic()
        self.handing_back = False
        self.every = spec.report_every
        self.gradients = spec.gradients
        self.buffer: list[StepRecord] = []
        self.last_flush = float("-inf")
        self.flush_every = FLUSH_INTERVAL_S
        self.last_poll = self.last_renew = self.last_stop_check = time.monotonic()
        self.cancelled = False
        self.last: runtime.StepReport | None = None
        self.flushed_step: int | None = None  # the last step counted in the worker's metrics
        # Only full gradients are read after the call (finish() samples the last report); norms
        # are read during it, so the trainer can hand over its own arrays (fit's copy_grads).
        self.keeps_gradients = self.gradients == "full"
        self.last_norms: dict[str, float] | None = None

    def __call__(self, report: runtime.StepReport) -> str | None:
        if self.flushed_step is None:
            self.flushed_step = report.step - 1  # a resumed run counts from its checkpoint on
        self.last = report
        if report.step % self.every == 0:
            self._sample(report)
        elif self.gradients == "norms":
            # now, not at finish(): the engine's arrays change with the next step, and a failing
            # next step leaves this one the last in the history
            self.last_norms = dict(report.grad_norms.items())
        clock = time.monotonic()
        if clock - self.last_renew >= self.store.settings.lease_ttl_s / 3:
            # alive, even between sparse reports; False means another trainer or the sweep has the job
            if not _quietly(lambda: self.store.renew_lease(self.job_id, self.token), True):
                raise LeaseLost(self.job_id)
            self.last_renew = clock
        if self.stopping_key is not None and clock - self.last_stop_check >= CANCEL_POLL_S:
            self.last_stop_check = clock
            self.handing_back = _quietly(lambda: self.store.worker_stopping(self.stopping_key), self.handing_back)
        if self.buffer and clock - self.last_flush >= self.flush_every:
            self.flush()
        elif clock - self.last_poll >= CANCEL_POLL_S:
            self.last_poll = clock
            self.cancelled = _quietly(lambda: self.store.cancel_requested(self.job_id), self.cancelled)
        if self.sweep_id is not None and clock - self.last_sweep_check >= sweeps.CHECK_INTERVAL_S:
            self.last_sweep_check = clock
            if self.buffer:
                self.flush()  # the rule reads this trial's history too
            self.sweep_stopped = _quietly(lambda: sweeps.should_stop(self.store, self.job_id, self.sweep_id), False)
        return "stop" if self.cancelled or self.handing_back or self.sweep_stopped else None

    def _sample(self, report: runtime.StepReport, norms: dict[str, float] | None = None) -> None:
        grads = encode_tensors(report.grads) if self.gradients == "full" else None
        if norms is None:
            norms = dict(report.grad_norms.items()) if self.gradients != "none" else {}  # computed now, from this step
        self.buffer.append(StepRecord(report.step, float(report.loss), norms, now(), report.eval_loss, grads,
                                      step_metrics(self.metric_names, report)))
        self.sampled = report.step

    def finish(self) -> None:
        """The last step is always in the history, whatever report_every is."""
        if self.last is not None and getattr(self, "sampled", None) != self.last.step:
            self._sample(self.last, self.last_norms)
        self.flush()

    def flush(self) -> None:
        progress: dict[str, Any] = {"updated": repr(now())}
        if self.last is not None:
            # epoch: complete epochs, as the result counts them
            progress.update(step=self.last.step, loss=repr(float(self.last.loss)), epoch=self.last.epochs)
        started = time.monotonic()
        _, state = patiently(self.store, self.store.report_steps, self.job_id, self.token, self.buffer, progress)
        took = time.monotonic() - started
        self.flush_every = min(FLUSH_INTERVAL_MAX_S, max(FLUSH_INTERVAL_S, took / FLUSH_SHARE))
        if self.last is not None and (recorder := metrics.recorder()) is not None:  # once per batch, not per step
            recorder.steps(self.last.step - self.flushed_step)
            self.flushed_step = self.last.step
        self.buffer = []
        self.cancelled = self.cancelled or state in ("cancelling", "cancelled")
        self.last_flush = self.last_poll = time.monotonic()


def run_job(store: JobStore, job_id: str, *, worker: str, requeue: Callable[[JobRecord], None] | None = None,
            job: JobRecord | None = None) -> str:
    """Train job ``job_id`` to its end; returns the final state. Never raises for a job's own
    failure (bad data, NaN, time limit): that is recorded on the job as ``failed``.

    When the worker begins a warm shutdown the job is checkpointed, put back to ``queued``
    and sent again with ``requeue(job)``, so a rolling deploy loses no work. ``job``: the job as
    the caller just read it (else it is read here)."""
    job = job if job is not None else patiently(store, store.get_job, job_id)
    # this job's log lines carry its id, its tenant and the id of the request that submitted it
    logs.job_id.set(job_id)
    logs.tenant.set(None if job is None else job.tenant)
    logs.request_id.set(None if job is None else job.request_id)
    if job is None:
        log.warning("job %s no longer exists (expired?)", job_id)
        return "missing"
    if job.state in TERMINAL:
        return job.state  # a redelivery of a finished job: nothing to do
    log.info("job %s: training (submitted by request %s)", job_id, job.request_id or "-")
    token = f"{worker}:{uuid.uuid4().hex}"
    if not patiently(store, store.acquire_lease, job_id, token):
        log.info("job %s is held by a live trainer: this delivery does nothing", job_id)
        return "duplicate"
    try:
        return _run_leased(store, job_id, job, token, worker, requeue)
    except LeaseLost:
        log.warning("job %s: lease lost (the sweep requeued it or another trainer holds it); stopped", job_id)
        return "lease lost"
    finally:
        _quietly(lambda: store.release_lease(job_id, token), None)  # else it expires by itself


def _run_leased(store: JobStore, job_id: str, job: JobRecord, token: str, worker: str,
                requeue: Callable[[JobRecord], None] | None) -> str:
    ok, previous, attempts = store.start(job_id, token, started=repr(now()), worker=worker)
    if not ok:
        if previous == "tenant_busy":  # its tenant runs max_running_jobs already: it waits, queued
            store.defer_job(job_id)
            log.info("job %s: its tenant is at max_running_jobs; deferred", job_id)
            return "deferred"
        if previous == "cancelling":  # cancelled while its worker was lost: nobody else will finish it
            store.transition(job_id, ["cancelling"], "cancelled", token=token, finished=repr(now()))
            return "cancelled"
        return previous
    if attempts > store.settings.max_attempts:
        return _fail(store, job_id, token, "PoisonJob", f"the job was started {attempts - 1} times without "
                                                         f"finishing (max_attempts {store.settings.max_attempts})")
    try:
        state = _train(store, job_id, job, token, worker, requeue)
    except (LeaseLost, *REDIS_DOWN):
        raise  # not the job's fault: the sweep (or the trainer that holds the lease) carries on
    except SoftTimeLimitExceeded:
        state = _fail(store, job_id, token, "TimeLimitExceeded", "the job ran past its time limit")
    except runtime.NonFiniteError as exc:
        state = _fail(store, job_id, token, "NonFiniteError", str(exc), node=exc.node)
    except runtime.ExecutionError as exc:
        state = _fail(store, job_id, token, "ExecutionError", str(exc), node=exc.node)
    except (runtime.ChainruleRuntimeError, graphspec.GraphSpecError, ValueError, TypeError) as exc:
        state = _fail(store, job_id, token, type(exc).__name__, str(exc))
    except MemoryError as exc:  # over the pool child's cap (worker/memory.py): the job fails, the worker lives on
        from .memory import out_of_memory_message
        state = _fail(store, job_id, token, "OutOfMemory", out_of_memory_message(exc))
    except Exception as exc:  # a bug must fail the job visibly, not leave it "running" forever
        log.exception("job %s crashed", job_id)
        state = _fail(store, job_id, token, "InternalError", f"{type(exc).__name__}: {exc}")
    return state


def _fail(store: JobStore, job_id: str, token: str, kind: str, message: str, node: str | None = None) -> str:
    fields = {"finished": repr(now()), "error_type": kind, "error_message": message[:2000]}
    if node:
        fields["error_node"] = node
    patiently(store, store.transition, job_id, ["running", "cancelling"], "failed", token=token, **fields)
    return "failed"


def _hand_back(store: JobStore, job_id: str, job: JobRecord, token: str, reporter: "_Reporter",
               result: runtime.TrainResult, requeue: Callable[[JobRecord], None]) -> str:
    """Warm shutdown: save where training stopped, put the job back in the queue, send it again."""
    reporter.flush()
    patiently(store, store.put_blob, job_id, "checkpoint", result.checkpoint.to_bytes(), token=token)
    moved, previous = patiently(store, store.transition, job_id, ["running"], "queued", token=token, enqueue=True,
                                step=result.steps, requeued=repr(now()))
    if not moved:
        return previous  # cancelled meanwhile: nothing to hand back
    store.give_back_attempt(job_id)
    # Let go before sending: the next worker may receive the message within a millisecond.
    store.release_lease(job_id, token)
    requeue(job)
    store.mark_sent(job_id)
    log.info("job %s handed back at step %d (worker shutting down)", job_id, result.steps)
    return "handed back"


def _checkpointing(store: JobStore, job_id: str, token: str, spec: runtime.TrainingSpec, reporter: "_Reporter"):
    """Without an explicit checkpoint_every a job is still checkpointed: a checkpoint is taken every
    runtime.DEFAULT_CHECKPOINT_STEPS steps and written when Settings.checkpoint_every_s has passed."""
    explicit = spec.checkpoint_every
    last = [time.monotonic()]

    def save(checkpoint: runtime.Checkpoint) -> None:
        if explicit or time.monotonic() - last[0] >= store.settings.checkpoint_every_s:
            # The history first: a checkpoint must never be ahead of the steps already written,
            # or a resumed run would skip the buffered ones.
            reporter.flush()
            started = time.monotonic()
            patiently(store, store.put_blob, job_id, "checkpoint", checkpoint.to_bytes(), token=token)
            last[0] = time.monotonic()
            if (recorder := metrics.recorder()) is not None:
                recorder.observe("checkpoint_write_seconds", last[0] - started)

    return explicit or runtime.DEFAULT_CHECKPOINT_STEPS, save


def _train(store: JobStore, job_id: str, job: JobRecord, token: str, worker: str,
           requeue: Callable[[JobRecord], None] | None) -> str:
    spec = runtime.TrainingSpec.from_stored(job.spec)  # also a job stored before specs had versions
    # one round trip for everything the job starts from (init: a warm start's parameters)
    graph, (data_blob, eval_blob, checkpoint_blob, init_blob) = store.get_graph_and_blobs(
        job.tenant, job.graph_id, job_id, "data", "eval_data", "checkpoint", "init")
    if graph is None:
        return _fail(store, job_id, token, "MissingGraph", f"graph {job.graph_id} is no longer stored")
    data = decode_tensors(data_blob or b"\x80")
    eval_data = decode_tensors(eval_blob) if eval_blob else None
    # compiled: the fast engine (docs/performance.md); the interpreter stays the reference
    trainer = runtime.Trainer.from_spec(graph, spec, compiled=True)
    resume = runtime.Checkpoint.from_bytes(checkpoint_blob) if checkpoint_blob else None
    params = None if resume else decode_tensors(init_blob) if init_blob else runtime.init_params(graph, seed=spec.seed)
    reporter = _Reporter(store, job_id, spec, token, store.worker_stopping_key(worker) if requeue else None,
                         step_metric_names(graph, spec, eval_data is not None), (job.spec.get("sweep") or {}).get("id"))
    checkpoint_every, save_checkpoint = _checkpointing(store, job_id, token, spec, reporter)
    try:
        options = {**spec.fit_options(has_eval_data=eval_data is not None), "checkpoint_every": checkpoint_every}
        result = trainer.fit(data, params, callback=reporter, eval_data=eval_data, resume=resume,
                             on_checkpoint=save_checkpoint, copy_grads=reporter.keeps_gradients, **options)
    except (LeaseLost, *REDIS_DOWN):
        raise  # not ours to write any more, or nowhere to write it
    except Exception:
        # The job's own failure (divergence, bad data, time limit): the steps reported so far,
        # the last one included, are what explains it; they go in before the failure is recorded.
        reporter.finish()
        raise
    if reporter.handing_back and not reporter.cancelled:
        return _hand_back(store, job_id, job, token, reporter, result, requeue)
    reporter.finish()
    if reporter.cancelled:
        patiently(store, store.transition, job_id, ["cancelling", "running"], "cancelled", token=token,
                  finished=repr(now()), step=result.steps)
        return "cancelled"
    final_loss = float("nan") if result.loss is None else float(result.loss)
    # a trial its sweep's rule stopped ran no less honestly: it succeeded, and says why it is short
    stop_reason = "early_termination" if reporter.sweep_stopped else result.stop_reason
    blob = pack({
        "params": {k: encode_tensor_raw(np.asarray(v)) for k, v in result.params.items()},
        "loss": final_loss, "steps": result.steps, "epochs": result.epochs,
        "eval_loss": result.eval_loss, "stop_reason": stop_reason, "best_step": result.best_step,
        "metrics": dict(result.metrics), "eval_metrics": None if result.eval_metrics is None else dict(result.eval_metrics),
    })
    # The result and the state move together: a cancel that lands first leaves no result behind.
    ok, previous = patiently(store, store.transition, job_id, ["running"], "succeeded", token=token,
                             blob=("result", blob), finished=repr(now()), step=result.steps, loss=repr(final_loss),
                             stop_reason=stop_reason)
    if not ok and previous == "cancelling":  # cancel arrived after the last step: honour it
        patiently(store, store.transition, job_id, ["cancelling"], "cancelled", token=token, finished=repr(now()))
        return "cancelled"
    return previous if not ok else "succeeded"
