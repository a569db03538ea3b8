"""Soak: many jobs through the HTTP API with workers killed at random, then retention.

    python bench/soak.py [--jobs 10000] [--workers 2] [--redis-url redis://127.0.0.1:6379/0]
    python bench/soak.py --quick        # a smoke run: 30 jobs, 2 workers, a kill or two

Starts `chainrule api --workers 2` and --workers Celery workers (solo pool, a 2 s lease, a 0.5 s
recovery loop) in a namespace of its own on the given Redis, with a short retention
(--retention-s) and the request-rate limit off for its tenant. Submits --jobs seed-graph jobs
(20 steps, every step reported) through POST /v1/jobs from --clients concurrent clients, each
job with an Idempotency-Key so a client retries a 429/503 without ever submitting twice; while
they run, SIGKILLs a random worker every --kill-every seconds on average and starts a
replacement. Then checks every job as it ends (before retention removes it): succeeded, its step
history exactly 1..20 (its Redis stream, read in batches: checking 10,000 jobs one HTTP request at
a time could not keep up with retention). Then waits for retention and the recovery loop's pruning and compares the namespace's
Redis memory (MEMORY USAGE summed over its keys) with the baseline taken before the first job:
no key of a job or graph may be left, nor an entry in an index (a tenant's counters and byte
totals stay, a few small keys whatever it ran). Prints: jobs accepted / succeeded / lost / with
missing or duplicated steps, kills, throughput, and memory before, at the peak and after retention. ``--json PATH`` also
writes them. Exit status 1 when a job was lost or a history is wrong, or memory did not come
back. Figures, not assertions: docs/reliability.md quotes a run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
SEED = json.loads((ROOT / "examples" / "logistic_regression.json").read_text())
SEED_DATA = json.loads((ROOT / "examples" / "data" / "seed_data.json").read_text())
STEPS = 20
KEY = "soak-key"
TERMINAL = ("succeeded", "failed", "cancelled")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def start_worker(env: dict, logdir: Path, n: int) -> subprocess.Popen:
    return start([sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--pool=solo",
                  "-Q", env["CHAINRULE_QUEUE"], "-n", f"soak{n}-{env['CHAINRULE_NAMESPACE']}@localhost",
                  "--without-gossip", "--without-mingle", "--loglevel=INFO"], env, logdir / f"worker-{n}.log")


def kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def namespace_memory(r: redis.Redis, namespace: str) -> tuple[int, int]:
    """(bytes, keys) of the namespace: MEMORY USAGE summed over its keys."""
    total = keys = 0
    for key in r.scan_iter(f"{namespace}:*", count=1000):
        total += r.memory_usage(key, samples=0) or 0
        keys += 1
    return total, keys


def per_item_keys(r: redis.Redis, namespace: str) -> list[str]:
    """Keys that belong to one job or graph, or index them: what retention must remove. (A tenant's
    counters and byte totals stay: a few small keys per tenant, whatever it ran.)"""
    left = []
    for raw in r.scan_iter(f"{namespace}:*", count=1000):
        key = raw.decode()
        if ":job:" in key or ":graph:" in key or ":idem:" in key or (
                key.endswith((":jobs", ":usage:jobs", ":usage:graphs", ":queued", ":running"))
                and r.type(raw) in (b"zset", b"set") and (r.zcard(raw) if r.type(raw) == b"zset" else r.scard(raw))):
            left.append(key)
    return left


def submit(client: httpx.Client, body: dict, key: str, stop: threading.Event) -> str | None:
    """POST a job, retrying 429/503 after Retry-After (and transport errors): the same
    Idempotency-Key makes every retry the same submission."""
    while not stop.is_set():
        try:
            resp = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})
        except httpx.TransportError:
            time.sleep(0.2)
            continue
        if resp.status_code in (200, 202):
            return resp.json()["id"]
        if resp.status_code in (429, 503):
            time.sleep(float(resp.headers.get("retry-after", "1")))
            continue
        raise RuntimeError(f"POST /v1/jobs: {resp.status_code} {resp.text[:500]}")
    return None


def check(r: redis.Redis, namespace: str, ended: list[tuple[str, str]]) -> dict[str, str]:
    """Jobs that ended, judged in one pipelined read of their step streams (before retention
    removes them): "ok" when succeeded with its history exactly 1..STEPS, else "failed" or "bad steps"."""
    pipe = r.pipeline(transaction=False)
    for job_id, _ in ended:
        pipe.xrange(f"{namespace}:job:{job_id}:steps")
    out = {}
    for (job_id, state), entries in zip(ended, pipe.execute()):
        steps = [int(entry_id.split(b"-")[0]) for entry_id, _ in entries]
        out[job_id] = ("failed" if state != "succeeded" else
                       "ok" if steps == list(range(1, STEPS + 1)) else "bad steps")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=None, help="jobs (default 10000; --quick 30)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=8, help="concurrent submitting clients")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--kill-every", type=float, default=None, help="mean seconds between kills (default 5; --quick 2)")
    parser.add_argument("--retention-s", type=int, default=None, help="retention (default 30; --quick 3)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds for all jobs (default 3600; --quick 120)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run: 30 jobs, short retention")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    n_jobs = args.jobs or (30 if args.quick else 10_000)
    kill_every = args.kill_every or (2.0 if args.quick else 5.0)
    retention = args.retention_s or (3 if args.quick else 30)
    timeout = args.timeout or (120.0 if args.quick else 3600.0)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below when terminated
    rng = random.Random(args.seed)
    namespace = "crsoak-" + uuid.uuid4().hex[:8]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAINRULE_")}
    env.update({"CHAINRULE_REDIS_URL": args.redis_url, "REDIS_URL": args.redis_url, "PYTHONUNBUFFERED": "1",
                "CHAINRULE_NAMESPACE": namespace, "CHAINRULE_QUEUE": f"{namespace}.train",
                "CHAINRULE_LEASE_TTL_S": "2", "CHAINRULE_SWEEP_INTERVAL_S": "0.5", "CHAINRULE_MAX_ATTEMPTS": "1000",
                "CHAINRULE_RETENTION_S": str(retention), "CHAINRULE_GRAPH_RETENTION_S": str(retention),
                "CHAINRULE_API_KEYS": f"{KEY}:soak", "CHAINRULE_REQUESTS_PER_SECOND": "0",
                "CHAINRULE_MAX_QUEUED_JOBS": str(n_jobs + 1), "CHAINRULE_MAX_JOB_BYTES": "0"})
    r = redis.Redis.from_url(args.redis_url)
    logdir = Path(tempfile.mkdtemp(prefix="chainrule-soak-"))
    port = free_port()
    api = start([sys.executable, "-m", "service.cli", "api", "--port", str(port), "--workers", "2",
                 "--log-level", "warning"], env, logdir / "api.log")
    workers = [start_worker(env, logdir, n) for n in range(args.workers)]
    started, kills = args.workers, 0
    clean = False
    stop = threading.Event()
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60, trust_env=False,
                              headers={"Authorization": f"Bearer {KEY}"})
        deadline = time.monotonic() + 60
        while True:
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the API did not answer; its log is in {logdir}")
            time.sleep(0.1)
        time.sleep(2)  # the workers' start-up writes (Celery bindings) are part of the baseline
        base_bytes, base_keys = namespace_memory(r, namespace)
        baseline = {raw for raw in r.scan_iter(f"{namespace}:*", count=1000)}

        body = {"graph": SEED, "data": SEED_DATA, "optimizer": {"name": "sgd", "lr": 0.5}, "steps": STEPS,
                "batch_size": 16, "report_every": 1}
        t0 = time.monotonic()
        ids: list[str | None] = [None] * n_jobs

        local = threading.local()  # a client per submitting thread: httpx clients are not shared across threads here

        def one(i: int) -> None:
            if not hasattr(local, "client"):
                local.client = httpx.Client(base_url=client.base_url, timeout=60, trust_env=False,
                                            headers={"Authorization": f"Bearer {KEY}"})
            ids[i] = submit(local.client, body, f"soak-{i}", stop)
        pool = ThreadPoolExecutor(max_workers=args.clients)
        futures = [pool.submit(one, i) for i in range(n_jobs)]
        next_kill = time.monotonic() + rng.expovariate(1 / kill_every)
        peak = (base_bytes, base_keys)
        last_peak_check = 0.0
        checked: dict[str, str] = {}  # job id -> "ok", "lost" or "bad steps", judged as it ends (before it expires)
        while time.monotonic() - t0 < timeout:
            submitted_all = all(f.done() for f in futures)
            pending = [j for j in ids if j is not None and j not in checked]
            if submitted_all and not pending:
                break
            pipe = r.pipeline(transaction=False)
            for job_id in pending:
                pipe.hget(f"{namespace}:job:{job_id}", "state")
            ended = []
            for job_id, state in zip(pending, pipe.execute()):
                if state is None:
                    checked[job_id] = "vanished"  # gone before it was seen to end
                elif state.decode() in TERMINAL:
                    ended.append((job_id, state.decode()))
            checked.update(check(r, namespace, ended))
            if time.monotonic() >= next_kill:
                victim = rng.randrange(len(workers))
                kill(workers[victim])
                kills += 1
                workers[victim] = start_worker(env, logdir, started)
                started += 1
                next_kill = time.monotonic() + rng.expovariate(1 / kill_every)
            if time.monotonic() - last_peak_check > 15:
                peak = max(peak, namespace_memory(r, namespace))
                last_peak_check = time.monotonic()
            time.sleep(0.2)
        elapsed = time.monotonic() - t0
        stop.set()
        pool.shutdown(wait=True)
        for f in futures:
            f.result()  # a submission that failed for good raises here

        accepted = [j for j in ids if j is not None]
        verdicts = [checked.get(j, "unfinished") for j in accepted]
        succeeded, bad_steps = verdicts.count("ok"), verdicts.count("bad steps")
        lost = len(verdicts) - succeeded - bad_steps  # failed, vanished or never finished
        reasons = {v: verdicts.count(v) for v in ("failed", "vanished", "unfinished") if v in verdicts}
        duplicates = len(accepted) - len(set(accepted))
        print(f"soak: {n_jobs} jobs through the API ({args.clients} clients), {args.workers} workers, "
              f"{kills} SIGKILLs in {elapsed:.0f} s ({len(accepted) / elapsed:.1f} jobs/s end to end)")
        print(f"  accepted {len(accepted)} (the same job twice: {duplicates}), succeeded {succeeded}, "
              f"lost {lost}{f' {reasons}' if reasons else ''}, with missing or duplicated steps {bad_steps}")

        # Retention: every job finished; its keys expire retention_s after it ended, and the
        # recovery loop prunes the index and byte counts.
        t1 = time.monotonic()
        after = namespace_memory(r, namespace)
        left = per_item_keys(r, namespace)
        while time.monotonic() - t1 < retention + 120 and left:
            time.sleep(1)
            left = per_item_keys(r, namespace)
        after = namespace_memory(r, namespace)
        # back: nothing per job or graph is left. What may stay is a few keys whatever the load: the
        # tenant's totals and counters, and the recovery loop's short-lived markers (listed below)
        back = not left
        print(f"  namespace memory: {base_bytes / 1024:.0f} KiB in {base_keys} keys before, "
              f"{peak[0] / 2**20:.1f} MiB in {peak[1]} keys at the peak seen, "
              f"{after[0] / 1024:.0f} KiB in {after[1]} keys {time.monotonic() - t1:.0f} s after the last job "
              f"(retention {retention} s): {'back to the baseline' if back else 'NOT back to the baseline'}")
        if left:
            print(f"  left after retention: {len(left)} keys of jobs or graphs, e.g. {left[:5]}")
        added = sorted((r.memory_usage(k, samples=0) or 0, k.decode()[len(namespace) + 1:])
                       for k in set(r.scan_iter(f"{namespace}:*", count=1000)) - baseline)
        print(f"  keys added since the baseline: {len(added)}, "
              + ", ".join(f"{name} ({size} B)" for size, name in reversed(added[-12:])))
        clean = lost == bad_steps == duplicates == 0 and back and len(accepted) == n_jobs
        if args.json:
            Path(args.json).write_text(json.dumps({
                "script": "soak.py", "date": datetime.datetime.now().isoformat(timespec="seconds"),
                "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                            "platform": platform.platform()},
                "jobs": n_jobs, "workers": args.workers, "clients": args.clients, "kills": kills,
                "elapsed_s": elapsed, "accepted": len(accepted), "duplicates": duplicates,
                "succeeded": succeeded, "lost": lost, "lost_reasons": reasons, "bad_steps": bad_steps, "retention_s": retention,
                "memory": {"baseline": {"bytes": base_bytes, "keys": base_keys},
                           "peak_seen": {"bytes": peak[0], "keys": peak[1]},
                           "after_retention": {"bytes": after[0], "keys": after[1]}},
                "back_to_baseline": back, "clean": clean,
            }, indent=2) + "\n")
        return 0 if clean else 1
    finally:
        stop.set()
        for proc in [*workers, api]:
            kill(proc)
        for key in list(r.scan_iter(f"{namespace}:*", count=1000)):
            r.delete(key)
        r.close()
        if clean:
            shutil.rmtree(logdir, ignore_errors=True)
        else:
            print(f"  logs kept in {logdir}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
