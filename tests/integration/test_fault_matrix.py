"""The fault matrix: many jobs under repeated SIGKILLs, and cancels racing completion.

``test_kill_9_at_random_steps_across_many_jobs`` is the CI-sized bench/chaos.py: a batch
of seed jobs on two real workers (solo pool, 2 s lease, 0.5 s sweep), whose process
groups are SIGKILLed at random moments and replaced, and every job must still end as if
it had never been interrupted (tests/integration/promise.py).

``test_cancel_racing_completion`` sends cancels through the HTTP API at random moments
around each job's expected end: every job ends exactly once, succeeded (a result and the
whole history) or cancelled (no result, a gapless prefix of the history), as the cancel
response said.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import graphspec
import runtime
from worker.celery_app import make_celery
from worker.store import TERMINAL, JobStore, encode_tensors

from .conftest import EXAMPLES, ROOT, delete_namespace, wait_for
from .promise import assert_as_if_uninterrupted

pytestmark = pytest.mark.faults

SEED = EXAMPLES / "logistic_regression.json"
DATA = EXAMPLES / "data" / "seed_data.json"
OPTIMIZER = {"name": "sgd", "lr": 0.5}


# -- kill -9 across many jobs ------------------------------------------------------------
CHAOS_JOBS = 16
CHAOS_WORKERS = 2
MIN_KILLS = 6
MAX_KILLS = 10
KILL_GAP_S = (0.4, 1.2)  # seconds between kills, drawn at random (seeded)
CHAOS_TIMEOUT_S = 120.0  # a job still unfinished by then is lost: the test fails and says which


class _Workers:
    """Celery worker subprocesses, each the leader of its own process group, all of them
    SIGKILLed (whole group) in :meth:`close` whatever happened."""

    def __init__(self, env: dict[str, str], queue: str, logdir: Path):
        self.env, self.queue, self.logdir = env, queue, logdir
        self.tag = uuid.uuid4().hex[:8]
        self.started: list[tuple[subprocess.Popen, str, Path]] = []  # every process ever started
        self.live: list[tuple[subprocess.Popen, str]] = []  # the current pool (proc, hostname)

    def start(self) -> tuple[subprocess.Popen, str]:
        n = len(self.started)
        hostname = f"matrix{n}-{self.tag}@localhost"
        log_path = self.logdir / f"worker-{n}.log"
        cmd = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--pool=solo", "--concurrency=1",
               "-Q", self.queue, "-n", hostname, "--without-gossip", "--without-mingle", "--without-heartbeat",
               "--loglevel=INFO"]
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=log_file,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.started.append((proc, hostname, log_path))
        self.live.append((proc, hostname))
        return proc, hostname

    def kill(self, proc: subprocess.Popen) -> None:
        """SIGKILL the worker's whole process group (pgid == pid: it leads a new session)."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
        self.live = [(p, h) for p, h in self.live if p is not proc]

    def check_alive(self) -> None:
        for proc, hostname in self.live:
            if proc.poll() is not None:
                self.kill(proc)  # whatever is left of its process group
                raise AssertionError(f"worker {hostname} exited by itself ({proc.returncode}); its log:\n"
                                     + self.log_tail(hostname))

    def log_tail(self, hostname: str, lines: int = 60) -> str:
        for _, name, path in self.started:
            if name == hostname:
                text = path.read_text(errors="replace") if path.exists() else ""
                return "\n".join(text.splitlines()[-lines:])
        return ""

    def logs(self, lines: int = 40) -> str:
        return "\n".join(f"--- {name} ---\n{self.log_tail(name, lines)}" for _, name, _ in self.started)

    def close(self) -> None:
        # Only groups whose leader is not reaped yet: a reaped one was killed whole by kill(),
        # and its pid may since belong to someone else.
        running = [proc for proc, _, _ in self.started if proc.returncode is None]
        for proc in running:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc in running:
            proc.wait(timeout=10)


@pytest.fixture
def chaos(settings, env, tmp_path):
    """A namespace, queue, store and Celery app of the test's own, and its worker pool.

    A namespace of its own (under the session's, so the session cleanup covers it too):
    the session worker, if running, sweeps the session namespace every 10 s with
    max_attempts 3, and would otherwise take (or fail as poison) jobs orphaned here."""
    namespace = f"{settings.namespace}:matrix-{uuid.uuid4().hex[:8]}"
    own = settings.model_copy(update={"namespace": namespace, "queue": f"{namespace}.train", "lease_ttl_s": 2.0,
                                      "sweep_interval_s": 0.5, "unsent_grace_s": 2.0, "max_attempts": 20})
    worker_env = {**env, "CHAINRULE_NAMESPACE": namespace, "CHAINRULE_QUEUE": own.queue,
                  "CHAINRULE_LEASE_TTL_S": "2", "CHAINRULE_SWEEP_INTERVAL_S": "0.5", "CHAINRULE_UNSENT_GRACE_S": "2",
                  "CHAINRULE_MAX_ATTEMPTS": "20"}
    store = JobStore.connect(own)
    celery = make_celery(own)
    workers = _Workers(worker_env, own.queue, tmp_path)
    try:
        yield store, celery, workers
    finally:
        workers.close()
        celery.close()
        store._r.close()
        delete_namespace(settings.redis_url, namespace)


def _holders(store: JobStore, job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """hostname -> (job id, lease token) for every job running under a lease right now."""
    pipe = store._r.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hget(store.job_key(job_id), "state")
        pipe.get(store.job_key(job_id, "lease"))
    replies = pipe.execute()
    out = {}
    for job_id, state, token in zip(job_ids, replies[::2], replies[1::2]):
        if state == b"running" and token:
            token = token.decode()
            out[token.rpartition(":")[0]] = (job_id, token)
    return out


def _unfinished(store: JobStore, job_ids: list[str]) -> list[str]:
    pipe = store._r.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hget(store.job_key(job_id), "state")
    return [j for j, s in zip(job_ids, pipe.execute()) if (s or b"").decode() not in TERMINAL]


def test_kill_9_at_random_steps_across_many_jobs(chaos):
    store, celery, workers = chaos
    rng = random.Random(20240611)
    graph, data = graphspec.load(SEED), runtime.load_tensors(DATA)
    graph_id, blob = store.put_graph("tenant-a", graph), encode_tensors(data)

    for _ in range(CHAOS_WORKERS):
        workers.start()
    specs: dict[str, dict] = {}
    for i in range(CHAOS_JOBS):
        spec = {"optimizer": OPTIMIZER, "steps": rng.randint(1500, 5000), "batch_size": 16, "report_every": 1,
                "checkpoint_every": 250, "seed": 100 + i}
        job_id, _ = store.create_job("tenant-a", graph_id, spec, blob)
        # As the API does: send, then clear the outbox entry (else the sweep resends it).
        celery.send_task("chainrule.train", args=[job_id], queue=store.settings.queue)
        store.mark_sent(job_id)
        specs[job_id] = spec
    job_ids = list(specs)

    started = time.monotonic()
    # (seconds in, victim hostname, the job it was running when it died or None, that job's step)
    kills: list[tuple[float, str, str | None, int]] = []
    hits: dict[str, int] = {}  # job id -> kills confirmed to have interrupted it
    next_kill = started + rng.uniform(1.0, 2.5)  # (it waits for a worker to be busy)
    while True:
        unfinished = _unfinished(store, job_ids)
        if not unfinished:
            break
        if time.monotonic() - started > CHAOS_TIMEOUT_S:
            pytest.fail(_lost_report(store, unfinished, kills, workers))
        workers.check_alive()
        if len(kills) < MAX_KILLS and time.monotonic() >= next_kill:
            # A random worker among those training a job right now (a kill of an idle or
            # still-starting worker would interrupt nothing), preferring the jobs hit least, so
            # the kills land across many jobs rather than all on the last one left.
            holders = _holders(store, unfinished)
            busy = sorted(((p, h) for p, h in workers.live if h in holders), key=lambda ph: ph[1])
            if busy:
                fewest = min(hits.get(holders[h][0], 0) for _, h in busy)
                proc, hostname = rng.choice([(p, h) for p, h in busy if hits.get(holders[h][0], 0) == fewest])
                job_id, token = holders[hostname]
                workers.kill(proc)
                # Confirmed: the job is still running under the dead worker's token (it did not
                # finish in between), so it must be recovered by the sweep and run again.
                job = store.get_job(job_id)
                hit = job.state == "running" and job.lease == token
                if hit:
                    hits[job_id] = hits.get(job_id, 0) + 1
                kills.append((round(time.monotonic() - started, 2), hostname, job_id if hit else None,
                              job.step))
                workers.start()
                next_kill = time.monotonic() + rng.uniform(*KILL_GAP_S)
        time.sleep(0.05)
    elapsed = time.monotonic() - started

    jobs = {job_id: store.get_job(job_id) for job_id in job_ids}
    attempts = {job_id: job.attempts for job_id, job in jobs.items()}
    print(f"\nfault matrix: {len(jobs)} jobs, {len(workers.started)} workers started, {len(kills)} SIGKILLs "
          f"({sum(hits.values())} mid-job, across {len(hits)} jobs), {sum(attempts.values())} attempts "
          f"(max {max(attempts.values())}), all terminal after {elapsed:.1f} s")

    for job_id, spec in specs.items():
        assert jobs[job_id].state == "succeeded", (jobs[job_id], workers.logs())
        assert_as_if_uninterrupted(store, job_id, graph, data, spec)
        assert attempts[job_id] >= 1 + hits.get(job_id, 0), (job_id, attempts[job_id], hits.get(job_id))
    assert len(kills) >= MIN_KILLS, f"only {len(kills)} kills before every job finished: give the jobs more steps"
    assert sum(hits.values()) >= 1, kills
    assert sum(attempts.values()) > len(jobs), attempts
    assert sum(attempts.values()) >= len(jobs) + sum(hits.values()), (attempts, hits)


def _lost_report(store: JobStore, unfinished: list[str], kills, workers: _Workers) -> str:
    lines = [f"{len(unfinished)} job(s) never finished (kills: {kills}):"]
    for job_id in unfinished:
        job = store.get_job(job_id)
        lease = store._r.get(store.job_key(job_id, "lease"))
        stored = ("not stored" if job is None else f"state={job.state} step={job.step}/{job.total_steps} "
                  f"attempts={job.attempts} worker={job.worker}")
        lines.append(f"  {job_id}: {stored} lease={lease!r} "
                     f"active={store._r.sismember(store.active_key, job_id)} outbox={store.outbox_entry(job_id)}")
    return "\n".join(lines) + "\n" + workers.logs()


# -- cancel racing completion ------------------------------------------------------------
SEED_DOC = json.loads(SEED.read_text())
SEED_DATA = json.loads(DATA.read_text())
RACES = 20


def _job_body(steps: int, seed: int) -> dict:
    return {"graph": SEED_DOC, "data": SEED_DATA, "optimizer": OPTIMIZER, "steps": steps, "batch_size": 16,
            "report_every": 1, "seed": seed}


def _submit(api, steps: int, seed: int) -> str:
    resp = api.post("/v1/jobs", json=_job_body(steps, seed))
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


def _wait_terminal(api, job_id: str, timeout: float = 30.0) -> dict:
    def check():
        resp = api.get(f"/v1/jobs/{job_id}")
        assert resp.status_code == 200, resp.text
        return resp.json() if resp.json()["state"] in TERMINAL else None

    return wait_for(check, timeout=timeout, interval=0.01, message=f"job {job_id} to finish")


def _assert_unchanged_until_let_go(api, store, job_id: str, final: dict, history: list[int], steps: int) -> None:
    """A terminal job stays as it ended, checked again and again until its trainer has let go
    of it (the lease released after the trainer's last write: from then on every write it
    could still try is refused by the fence), and once more after that; not after a fixed pause."""
    def unchanged_and_released() -> bool:
        released = not store._r.exists(store.job_key(job_id, "lease"))
        again = api.get(f"/v1/jobs/{job_id}").json()
        assert (again["state"], again["step"], again["finished"]) == (final["state"], final["step"],
                                                                     final["finished"]), (final, again)
        assert [r.step for r in store.read_steps(job_id, limit=steps + 10)] == history
        return released

    wait_for(unchanged_and_released, timeout=10, interval=0.01, message=f"job {job_id}'s trainer to release it")


def test_cancel_racing_completion(api, store):
    rng = random.Random(7)
    # How long a job takes here, submit to succeeded, per step (the best of three: the
    # session worker may still be busy with another test's job at first).
    calibration_steps, timings = 600, []
    for seed in range(3):
        t0 = time.monotonic()
        job_id = _submit(api, calibration_steps, seed)
        assert _wait_terminal(api, job_id)["state"] == "succeeded"
        timings.append(time.monotonic() - t0)
    per_step = min(timings) / calibration_steps

    outcomes: list[tuple[str, int, float, int, str, int]] = []
    for i in range(RACES):
        steps = rng.randint(200, 600)
        expected = steps * per_step
        # Spread around the expected end: before it (cancelled part-way), after it (too late).
        delay = rng.uniform(0.0, 2.0) * expected
        asked_at = time.monotonic()
        job_id = _submit(api, steps, 1000 + i)
        time.sleep(max(0.0, delay - (time.monotonic() - asked_at)))
        resp = api.post(f"/v1/jobs/{job_id}/cancel")
        final = _wait_terminal(api, job_id)
        outcomes.append((job_id, steps, delay / expected, resp.status_code, final["state"], final["step"]))

        # The cancel's answer is consistent with what happened (service/routes/jobs.py):
        # accepted (202, cancelling/cancelled) and the job ends cancelled, or 409 because the
        # job had already finished, naming that state.
        if resp.status_code == 202:
            assert resp.json()["state"] in ("cancelling", "cancelled"), resp.json()
            assert final["state"] == "cancelled", (resp.json(), final)
        else:
            assert resp.status_code == 409, resp.text
            assert resp.headers["content-type"].startswith("application/problem+json")
            assert resp.json()["state"] == "succeeded", resp.json()
            assert final["state"] == "succeeded", final

        history = [r.step for r in store.read_steps(job_id, limit=steps + 10)]
        if final["state"] == "succeeded":
            assert history == list(range(1, steps + 1)), (job_id, history[-5:])
            assert final["step"] == steps
            assert store.get_blob(job_id, "result") is not None
            result = api.get(f"/v1/jobs/{job_id}/result")
            assert result.status_code == 200 and result.json()["steps"] == steps, result.text
        else:
            assert final["state"] == "cancelled", final
            k = len(history)
            assert k <= steps and history == list(range(1, k + 1)), (job_id, history[-5:])
            assert final["step"] == k, (final, k)
            assert store.get_blob(job_id, "result") is None, (
                f"job {job_id} ended cancelled (history 1..{k} of {steps}) but its result blob was written")
            assert api.get(f"/v1/jobs/{job_id}/result").status_code == 409

        # Terminal means terminal: nothing changes afterwards.
        _assert_unchanged_until_let_go(api, store, job_id, final, history, steps)
        late = api.post(f"/v1/jobs/{job_id}/cancel")  # and a cancel of a finished job is a 409
        assert late.status_code == 409 and late.json()["state"] == final["state"], late.text

    succeeded = sum(1 for o in outcomes if o[4] == "succeeded")
    cancelled = [o[5] / o[1] for o in outcomes if o[4] == "cancelled"]  # the fraction of steps done
    print(f"\ncancel race: {RACES} jobs ({per_step * 1000:.2f} ms/step): {succeeded} succeeded, {len(cancelled)} "
          f"cancelled ({sum(f == 0 for f in cancelled)} before a step, {sum(0 < f < 1 for f in cancelled)} part-way, "
          f"{sum(f == 1 for f in cancelled)} after the last step)")
    assert succeeded >= 1 and cancelled, outcomes
