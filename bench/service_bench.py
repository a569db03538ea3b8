"""Service figures: submit-to-first-step latency and job submissions per second.

    python bench/service_bench.py [--redis-url redis://127.0.0.1:6379/0] [--jobs 30] [--submissions 200]
    python bench/service_bench.py --quick        # a smoke run: 3 jobs, 20 submissions

Starts a real worker (`chainrule worker`, solo pool) and API (`chainrule api`) as
subprocesses in a fresh namespace of the given Redis (on a free port unless --port is
given), waits until both answer (one warm-up job, not counted, goes through the worker),
then measures through HTTP:
  * latency from POST /v1/jobs to the first step visible in GET /v1/jobs/{id}/steps
    (seed graph, report_every 1), median and p90 over --jobs sequential jobs;
  * submissions per second: POST /v1/jobs back to back from one client (the jobs queue up).
Everything it started is stopped and its keys (that namespace's only) deleted at the end;
the subprocesses' output is in a temporary directory, shown when something fails.
``--json PATH`` also writes the figures. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
WAIT_S = 60.0  # for the stack to answer, and for any one job


class Stack:
    def __init__(self, procs: dict[str, subprocess.Popen], logdir: Path):
        self.procs, self.logdir = procs, logdir

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                self.fail(f"the {name} exited with status {proc.returncode}")

    def fail(self, message: str) -> None:
        logs = "".join(f"\n--- {path.name} (last 40 lines)\n" + "\n".join(
            path.read_text(errors="replace").splitlines()[-40:]) for path in sorted(self.logdir.glob("*.log")))
        raise SystemExit(f"service_bench: {message}{logs}")


def wait(stack: Stack, what: str, predicate, timeout: float = WAIT_S, interval: float = 0.002):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        stack.check_alive()
        if time.monotonic() > deadline:
            stack.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def ready(client: httpx.Client) -> bool:
    try:
        return client.get("/readyz").status_code == 200
    except httpx.TransportError:
        return False


def finished(state: str) -> str | None:
    return state if state in ("succeeded", "failed", "cancelled") else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--jobs", type=int, default=None, help="sequential latency jobs (default 30; --quick 3)")
    parser.add_argument("--submissions", type=int, default=None, help="back-to-back POSTs (default 200; --quick 20)")
    parser.add_argument("--port", type=int, default=0, help="API port (default: a free one)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 jobs, 20 submissions")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    n_jobs = args.jobs or (3 if args.quick else 30)
    n_submissions = args.submissions or (20 if args.quick else 200)
    port = args.port or free_port()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below when terminated
    namespace = "crbench-" + uuid.uuid4().hex[:8]
    # Only this run's configuration: a CHAINRULE_* of the caller's must not redirect it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAINRULE_")}
    env.update(REDIS_URL=args.redis_url, CHAINRULE_REDIS_URL=args.redis_url, CHAINRULE_NAMESPACE=namespace,
               CHAINRULE_API_KEYS="bench:bench", PYTHONUNBUFFERED="1")
    logdir = Path(tempfile.mkdtemp(prefix="chainrule-service-bench-"))
    procs: dict[str, subprocess.Popen] = {}
    try:
        for name, cmd in [("worker", ["worker", "--pool", "solo", "--hostname", f"bench-{namespace}@localhost",
                                      "--log-level", "warning"]),
                          ("API", ["api", "--port", str(port), "--log-level", "warning"])]:
            with open(logdir / f"{name.lower()}.log", "wb") as log:
                procs[name] = subprocess.Popen([sys.executable, "-m", "service.cli", *cmd], env=env, cwd=ROOT,
                                               stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True)
        stack = Stack(procs, logdir)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": "Bearer bench"},
                              timeout=30)
        wait(stack, "the API to answer /readyz", lambda: ready(client), interval=0.1)
        graph = json.loads((ROOT / "examples" / "logistic_regression.json").read_text())
        reply = client.post("/v1/graphs", json=graph)
        if reply.status_code >= 300:
            stack.fail(f"POST /v1/graphs answered {reply.status_code}: {reply.text[:500]}")
        graph_id = reply.json()["id"]
        data = json.loads((ROOT / "examples" / "data" / "seed_data.json").read_text())
        body = {"graph_id": graph_id, "data": data, "optimizer": {"name": "sgd", "lr": 0.5}, "steps": 20,
                "batch_size": 16, "report_every": 1}

        def run_job() -> float:
            start = time.perf_counter()
            reply = client.post("/v1/jobs", json=body)
            if reply.status_code != 202:
                stack.fail(f"POST /v1/jobs answered {reply.status_code}: {reply.text[:500]}")
            job_id = reply.json()["id"]
            wait(stack, f"the first step of {job_id}",
                 lambda: client.get(f"/v1/jobs/{job_id}/steps", params={"limit": 1}).json()["steps"])
            latency = (time.perf_counter() - start) * 1000
            state = wait(stack, f"{job_id} to finish",
                         lambda: finished(client.get(f"/v1/jobs/{job_id}").json()["state"]), interval=0.005)
            if state != "succeeded":
                stack.fail(f"job {job_id} ended {state}")
            return latency

        run_job()  # warm-up: the worker is up and has run a job
        latencies = sorted(run_job() for _ in range(n_jobs))
        median, p90 = statistics.median(latencies), latencies[int(0.9 * (len(latencies) - 1))]
        print(f"submit -> first step visible: median {median:.1f} ms, p90 {p90:.1f} ms over {len(latencies)} jobs")
        start = time.perf_counter()
        for _ in range(n_submissions):
            reply = client.post("/v1/jobs", json=body)
            if reply.status_code != 202:
                stack.fail(f"POST /v1/jobs answered {reply.status_code}: {reply.text[:500]}")
        elapsed = time.perf_counter() - start
        body_bytes = len(json.dumps(body))
        print(f"submissions: {n_submissions / elapsed:.0f} jobs/s from one client "
              f"({elapsed / n_submissions * 1000:.1f} ms per POST, {body_bytes} byte bodies)")
        if args.json:
            Path(args.json).write_text(json.dumps({
                "script": "service_bench.py", "date": datetime.datetime.now().isoformat(timespec="seconds"),
                "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                            "platform": platform.platform()},
                "latency_ms": {"median": median, "p90": p90, "jobs": len(latencies), "all": latencies},
                "submissions": {"per_s": n_submissions / elapsed, "ms_per_post": elapsed / n_submissions * 1000,
                                "count": n_submissions, "body_bytes": body_bytes},
            }, indent=2) + "\n")
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # it, or whatever it left behind in its session
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
        shutil.rmtree(logdir, ignore_errors=True)
        r = redis.Redis.from_url(args.redis_url)
        for key in r.scan_iter(f"{namespace}:*", count=1000):
            r.delete(key)
        r.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
