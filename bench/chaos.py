"""Chaos run: many jobs, workers killed at random, and a count of what was lost.

    python bench/chaos.py [--jobs 200] [--workers 2] [--redis-url redis://127.0.0.1:6379/0]
    python bench/chaos.py --quick        # a smoke run: 4 short jobs, 2 workers, at most 2 kills

Starts real Celery workers (solo pool, a 2 s lease, a 0.5 s orphan sweep) on a queue and
namespace of its own, submits --jobs seed-graph jobs (random step counts, every step
reported, checkpoints every 250 steps), and while they run repeatedly kills a random worker
(SIGKILL of its whole process group, or SIGTERM for a warm shutdown) and starts a
replacement (the first kill once a job is training; at most --kills kills, unlimited by
default). Then it checks every job: finished, its step history exactly 1..steps (no
gap, no duplicate), and its parameters bit for bit those of an uninterrupted local run.
Prints jobs completed / lost / with missing or duplicated steps / with different params.
Exit status 1 when a job was lost or differs. Deletes its keys (its namespace's only) and
stops its workers at the end; the worker logs are kept (path printed) only when a job was
lost or differs. ``--json PATH`` also writes the figures. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import graphspec  # noqa: E402
import runtime  # noqa: E402
from worker.celery_app import make_celery  # noqa: E402
from worker.dispatch import send_job  # noqa: E402
from worker.settings import Settings  # noqa: E402
from worker.store import JobStore, decode_tensors, encode_tensors  # noqa: E402


def start_worker(env: dict, logdir: Path, n: int) -> subprocess.Popen:
    log = open(logdir / f"worker-{n}.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--pool=solo",
                             "-Q", env["CHAINRULE_QUEUE"], "-n", f"chaos{n}-{env['CHAINRULE_NAMESPACE']}@localhost",
                             "--without-gossip", "--without-mingle", "--loglevel=INFO"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=None, help="jobs (default 200; --quick 4)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--kill-every", type=float, default=None,
                        help="mean seconds between kills (default 1.5; --quick 0.5)")
    parser.add_argument("--kills", type=int, default=None, help="at most this many kills (default no limit; --quick 2)")
    parser.add_argument("--min-steps", type=int, default=1000, help="a job's steps are drawn from [min, max]")
    parser.add_argument("--max-steps", type=int, default=3000)
    parser.add_argument("--timeout", type=float, default=None, help="seconds for all jobs (default 900; --quick 45)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 4 jobs, kills every 0.5 s on average, at most 2, 45 s timeout")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    n_jobs = args.jobs or (4 if args.quick else 200)
    kill_every = args.kill_every or (0.5 if args.quick else 1.5)
    max_kills = args.kills if args.kills is not None else (2 if args.quick else None)
    timeout = args.timeout or (45.0 if args.quick else 900.0)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below when terminated
    rng = random.Random(args.seed)
    namespace = "crchaos-" + uuid.uuid4().hex[:8]
    # Only this run's configuration: a CHAINRULE_* of the caller's must not change it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAINRULE_")}
    env.update({"CHAINRULE_REDIS_URL": args.redis_url, "REDIS_URL": args.redis_url,
                "CHAINRULE_NAMESPACE": namespace, "CHAINRULE_QUEUE": f"{namespace}.train",
                "CHAINRULE_LEASE_TTL_S": "2", "CHAINRULE_SWEEP_INTERVAL_S": "0.5", "CHAINRULE_MAX_ATTEMPTS": "1000"})
    settings = Settings(redis_url=args.redis_url, namespace=namespace, queue=env["CHAINRULE_QUEUE"],
                        max_attempts=1000, lease_ttl_s=2, sweep_interval_s=0.5)
    store, celery = JobStore.connect(settings), make_celery(settings)
    graph = graphspec.load(ROOT / "examples" / "logistic_regression.json")
    data = runtime.load_tensors(ROOT / "examples" / "data" / "seed_data.json")
    graph_id = store.put_graph("chaos", graph)
    blob = encode_tensors(data)
    logdir = Path(tempfile.mkdtemp(prefix="chainrule-chaos-"))
    workers = [start_worker(env, logdir, n) for n in range(args.workers)]
    started = args.workers
    kills = {"SIGKILL": 0, "SIGTERM": 0}
    jobs: dict[str, dict] = {}
    keep_logs = True  # until the run is known to be clean
    try:
        for i in range(n_jobs):
            spec = {"optimizer": {"name": "sgd", "lr": 0.5}, "steps": rng.randint(args.min_steps, args.max_steps),
                    "batch_size": 16,
                    "report_every": 1, "checkpoint_every": 250, "seed": rng.randint(0, 3)}
            job_id, _ = store.create_job("chaos", graph_id, spec, blob)
            send_job(celery, settings, job_id, settings.default_time_limit_s)
            store.mark_sent(job_id)  # as the API does
            jobs[job_id] = spec
        t0 = time.monotonic()
        next_kill = None  # the kill clock starts once a job is training
        while time.monotonic() - t0 < timeout:
            states = [store.job_state(j) for j in jobs]
            if all(s in ("succeeded", "failed", "cancelled") for s in states):
                break
            if next_kill is None and "running" in states:
                next_kill = time.monotonic() + rng.expovariate(1 / kill_every)
            if next_kill is not None and time.monotonic() >= next_kill and (
                    max_kills is None or sum(kills.values()) < max_kills):
                victim = rng.randrange(len(workers))
                how = rng.choice(["SIGKILL", "SIGKILL", "SIGTERM"])
                proc = workers[victim]
                try:
                    os.killpg(proc.pid, getattr(signal, how)) if how == "SIGKILL" else proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                kills[how] += 1
                workers[victim] = start_worker(env, logdir, started)
                started += 1
                next_kill = time.monotonic() + rng.expovariate(1 / kill_every)
            time.sleep(0.1)
        elapsed = time.monotonic() - t0

        completed = lost = bad_steps = bad_params = 0
        expected_cache: dict[tuple[int, int], dict] = {}
        for job_id, spec in jobs.items():
            if store.job_state(job_id) != "succeeded":
                lost += 1
                continue
            completed += 1
            steps = [r.step for r in store.read_steps(job_id, limit=spec["steps"] + 100)]
            if steps != list(range(1, spec["steps"] + 1)):
                bad_steps += 1
            key = (spec["steps"], spec["seed"])
            if key not in expected_cache:
                expected_cache[key] = runtime.Trainer(graph, runtime.SGD(lr=0.5), batch_size=16,
                                                      seed=spec["seed"]).fit(
                    data, runtime.init_params(graph, seed=spec["seed"]), steps=spec["steps"]).params
            result = graphspec.parse(store.get_blob(job_id, "result"), "msgpack", graphspec.Limits(max_bytes=10**7))
            params = decode_tensors(graphspec.codec.pack(result["params"]))
            if any(params[k].tobytes() != np.asarray(v).tobytes() for k, v in expected_cache[key].items()):
                bad_params += 1
        attempts = [job.attempts if (job := store.get_job(j)) is not None else 0 for j in jobs]
        print(f"chaos: {len(jobs)} jobs, {args.workers} workers, {kills['SIGKILL']} SIGKILLs + {kills['SIGTERM']} "
              f"SIGTERMs in {elapsed:.0f} s")
        print(f"  completed {completed}, lost {lost}, with missing or duplicated steps {bad_steps}, "
              f"with parameters different from an uninterrupted run {bad_params}")
        print(f"  jobs that lost a worker at least once: {sum(a > 1 for a in attempts)} "
              f"(max attempts {max(attempts, default=0)})")
        logs = "".join(path.read_text(errors="replace") for path in logdir.glob("worker-*.log"))
        actions = {name: logs.count(marker) for name, marker in [
            ("requeued by the sweep", "worker lost, requeued"),
            ("stranded deliveries resent", "died before starting it, sent again"),
            ("unsent jobs sent", "never sent, sent"),
            ("lost messages resent", "lost by the broker, sent again"),
            ("trainers fenced off (lease lost)", "lease lost"),
            ("hand-backs at SIGTERM", "handed back at step")]}
        print("  recovery actions in the worker logs: " + ", ".join(f"{n} {name}" for name, n in actions.items()))
        clean = lost == bad_steps == bad_params == 0
        if args.json:
            Path(args.json).write_text(json.dumps({
                "script": "chaos.py", "date": datetime.datetime.now().isoformat(timespec="seconds"),
                "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                            "platform": platform.platform()},
                "jobs": len(jobs), "workers": args.workers, "kills": kills, "elapsed_s": elapsed,
                "completed": completed, "lost": lost, "bad_steps": bad_steps, "bad_params": bad_params,
                "jobs_that_lost_a_worker": sum(a > 1 for a in attempts), "max_attempts": max(attempts, default=0),
                "recovery_actions": actions,
            }, indent=2) + "\n")
        keep_logs = not clean
        return 0 if clean else 1
    finally:
        for proc in workers:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        store.delete_namespace()
        store.close()
        if keep_logs:
            print(f"  worker logs kept in {logdir}", file=sys.stderr)
        else:
            shutil.rmtree(logdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
