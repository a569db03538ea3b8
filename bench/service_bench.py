"""Service figures (issue #19 item 6): submissions/s, jobs/s end to end, reporting overhead, submit latency.

    python bench/service_bench.py [--redis-url redis://127.0.0.1:6379/0] [--json PATH]
    python bench/service_bench.py --quick        # a smoke run: every part, tiny counts
    python bench/service_bench.py --pool prefork # the workers as one prefork node of 2 processes
    python bench/service_bench.py --parts db     # only d and b (any of the letters d, b, a, c)

Starts a real API (`chainrule api --workers 2`: two uvicorn processes) and 2 worker processes
(default: two `chainrule worker --pool solo` nodes; ``--pool prefork``: one node with a prefork
pool of 2) as subprocesses in a fresh namespace of the given Redis (the API on a free port unless
--port is given), waits until both answer (warm-up jobs, not counted, go through each worker
process and API process), then measures through HTTP, in this order:
  d. latency from POST /v1/jobs to the first step visible in GET /v1/jobs/{id}/steps
     (seed graph, 20 steps, report_every 1), p50 and p90 over --jobs sequential jobs;
  b. --throughput-jobs of those tiny jobs submitted by --clients client processes at once (httpx,
     keep-alive) and trained by the 2 workers: jobs/s from the first POST to the last job's
     ``finished`` time (read from the job hashes), with each job's queue wait and run time;
  a. the workers stopped, --submissions POSTs of the same job from --clients client processes:
     submissions/s the 2 API processes accept (202s only; the jobs queue up and are deleted);
  c. the stack stopped, reporting_overhead.py's measurement of the worker's reporting, every
     step reported (gradient norms, as a default job), on the compiled engine for a W2-sized
     job (784-256-256-10, float32, batch 128), as a ratio to the bare trainer, interleaved rounds.
Each figure is printed with its goal and whether it was met. Everything it started is stopped and
its keys (that namespace's only) deleted at the end; the subprocesses' output is in a temporary
directory, shown when something fails. ``--json PATH`` also writes the figures. Figures, not
assertions: on a shared 2-core machine the client processes, the API, the workers and Redis all
compete for the same cores, so run it more than once and read the spread.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import multiprocessing
import json
import math
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
# issue #19 item 6's goals
GOALS = {"submissions_per_s": 1000.0, "jobs_per_s": 100.0, "reporting_overhead": 0.03, "latency_p50_ms": 10.0}
API_WORKERS = 2
WORKER_PROCESSES = 2


class Stack:
    def __init__(self, procs: dict[str, subprocess.Popen], logdir: Path):
        self.procs, self.logdir = procs, logdir

    def stop(self, names: list[str]) -> None:
        """Stop these processes (SIGTERM: a worker's warm shutdown) and forget them."""
        for name in names:
            stop(self.procs.pop(name))

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


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # it, or whatever it left behind in its session
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def post_jobs(base_url: str, body: bytes, count: int, start_at: float) -> dict:
    """One client process: ``count`` POST /v1/jobs on one keep-alive connection, starting at
    ``start_at`` (time.time(), so all clients start together). Returns the job ids, the first
    request's start and the last one's end (time.time()), and the refused requests."""
    client = httpx.Client(base_url=base_url, timeout=30,
                          headers={"Authorization": "Bearer bench", "Content-Type": "application/json"})
    client.get("/readyz")  # the connection is open before the clock starts
    time.sleep(max(0.0, start_at - time.time()))
    ids, errors = [], []
    first = time.time()
    for _ in range(count):
        reply = client.post("/v1/jobs", content=body)
        if reply.status_code == 202:
            ids.append(reply.json()["id"])
        else:
            errors.append(f"{reply.status_code}: {reply.text[:200]}")
    last = time.time()
    client.close()
    return {"ids": ids, "first": first, "last": last, "errors": errors}


def submit_concurrently(pool: concurrent.futures.Executor, clients: int, base_url: str, body: bytes,
                        total: int) -> dict:
    """``total`` POSTs split over ``clients`` processes started together; the pool's processes
    already exist, so process start-up is never in the figure."""
    start_at = time.time() + 0.5
    shares = [total // clients + (i < total % clients) for i in range(clients)]
    parts = list(pool.map(post_jobs, [base_url] * clients, [body] * clients, shares, [start_at] * clients))
    first, last = min(p["first"] for p in parts), max(p["last"] for p in parts)
    return {"ids": [i for p in parts for i in p["ids"]], "errors": [e for p in parts for e in p["errors"]],
            "first": first, "last": last, "elapsed_s": last - first}


def session_cpu_s(sessions: list[int]) -> float:
    """CPU seconds (user + system) used so far by every live process of these sessions (each
    subprocess here starts its own: an API's uvicorn children, a prefork pool's are in it). CPU
    time, unlike wall time, says what each part costs even while other work shares the cores."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[3]) in sessions:  # the session id; utime and stime follow at 11 and 12
            total += int(fields[11]) + int(fields[12])
    return total / tick


def verdict(met: bool) -> str:
    return "goal met" if met else "goal NOT met"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]


def job_times(r: redis.Redis, namespace: str, ids: list[str]) -> list[tuple[str, float, float, float]]:
    """(state, created, started, finished) of each job, from its hash (one pipelined round trip)."""
    pipe = r.pipeline(transaction=False)
    for job_id in ids:
        pipe.hmget(f"{namespace}:job:{job_id}", "state", "created", "started", "finished")
    return [((state or b"?").decode(), *(float(v) if v else math.nan for v in (created, started, finished)))
            for state, created, started, finished in pipe.execute()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--jobs", type=int, default=None, help="sequential latency jobs (default 30; --quick 3)")
    parser.add_argument("--throughput-jobs", type=int, default=None,
                        help="tiny jobs through the workers (default 1000; --quick 10)")
    parser.add_argument("--submissions", type=int, default=None,
                        help="POSTs with the workers stopped (default 2000; --quick 20)")
    parser.add_argument("--clients", type=int, default=None, help="client processes (default 4; --quick 2)")
    parser.add_argument("--pool", choices=("solo", "prefork"), default="solo",
                        help="two solo worker nodes (default), or one prefork node of concurrency 2")
    parser.add_argument("--overhead-steps", type=int, default=None,
                        help="W2 steps per reporting-overhead run (default 500; --quick 10)")
    parser.add_argument("--overhead-rounds", type=int, default=None,
                        help="interleaved reporting-overhead rounds (default 7; --quick 2)")
    parser.add_argument("--task-events", choices=("on", "off"), default="on",
                        help="Celery's task events (CHAINRULE_TASK_EVENTS: on by default, for Flower)")
    parser.add_argument("--port", type=int, default=0, help="API port (default: a free one)")
    parser.add_argument("--parts", default="dbac", help="which figures: any of the letters d, b, a, c (default "
                                                        "all, measured in that order; e.g. --parts db for a "
                                                        "before/after of the job path alone)")
    parser.add_argument("--quick", action="store_true", help="smoke run: every part with tiny counts")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    wanted = set(args.parts)
    if not wanted or wanted - set("dbac"):
        parser.error("--parts takes some of the letters d, b, a, c")
    n_jobs = args.jobs or (3 if args.quick else 30)
    n_throughput = args.throughput_jobs or (10 if args.quick else 1000)
    n_submissions = args.submissions or (20 if args.quick else 2000)
    n_clients = args.clients or (2 if args.quick else 4)
    overhead_steps = args.overhead_steps or (10 if args.quick else 500)
    overhead_rounds = args.overhead_rounds or (2 if args.quick else 7)
    port = args.port or free_port()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below when terminated
    namespace = "crbench-" + uuid.uuid4().hex[:8]
    # Only this run's configuration: a CHAINRULE_* of the caller's must not redirect it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAINRULE_")}
    env.update(REDIS_URL=args.redis_url, CHAINRULE_REDIS_URL=args.redis_url, CHAINRULE_NAMESPACE=namespace,
               CHAINRULE_API_KEYS="bench:bench", PYTHONUNBUFFERED="1",
               # the per-tenant limits (service/quotas.py) still checked on every request, never reached:
               # the bench measures the service's capacity, not a quota
               CHAINRULE_REQUESTS_PER_SECOND="1000000", CHAINRULE_REQUEST_BURST="1000000",
               CHAINRULE_MAX_QUEUED_JOBS="1000000",
               CHAINRULE_TASK_EVENTS="true" if args.task_events == "on" else "false")
    logdir = Path(tempfile.mkdtemp(prefix="chainrule-service-bench-"))
    procs: dict[str, subprocess.Popen] = {}
    if args.pool == "solo":  # each node takes its own messages from Redis: no parent process in between
        workers = {f"worker {i + 1}": ["worker", "--pool", "solo", "--hostname", f"bench{i + 1}-{namespace}@localhost",
                                       "--log-level", "warning"] for i in range(WORKER_PROCESSES)}
    else:
        workers = {"worker": ["worker", "--pool", "prefork", "--concurrency", str(WORKER_PROCESSES),
                              "--hostname", f"bench-{namespace}@localhost", "--log-level", "warning"]}
    # the client processes exist before anything is timed (forked now: no threads yet, no connections)
    pool = concurrent.futures.ProcessPoolExecutor(n_clients, mp_context=multiprocessing.get_context("fork"))
    r = redis.Redis.from_url(args.redis_url)
    report: dict = {"script": "service_bench.py", "date": datetime.datetime.now().isoformat(timespec="seconds"),
                    "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                "platform": platform.platform(), "redis": r.info("server").get("redis_version"),
                                "load_average_at_start": list(os.getloadavg())},
                    "goals": GOALS, "api_processes": API_WORKERS, "worker_processes": WORKER_PROCESSES,
                    "worker_pool": args.pool, "clients": n_clients, "task_events": args.task_events == "on"}
    try:
        for name, cmd in [*workers.items(),
                          ("API", ["api", "--port", str(port), "--workers", str(API_WORKERS),
                                   "--log-level", "warning"])]:
            with open(logdir / f"{name.lower().replace(' ', '')}.log", "wb") as log:
                procs[name] = subprocess.Popen([sys.executable, "-m", "service.cli", *cmd], env=env, cwd=ROOT,
                                               stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True)
        stack = Stack(procs, logdir)
        base_url = f"http://127.0.0.1:{port}"
        client = httpx.Client(base_url=base_url, headers={"Authorization": "Bearer bench"}, timeout=30)
        wait(stack, "the API to answer /readyz", lambda: ready(client), interval=0.1)
        graph = json.loads((ROOT / "examples" / "logistic_regression.json").read_text())
        reply = client.post("/v1/graphs", json=graph)
        if reply.status_code >= 300:
            stack.fail(f"POST /v1/graphs answered {reply.status_code}: {reply.text[:500]}")
        graph_id = reply.json()["id"]
        data = json.loads((ROOT / "examples" / "data" / "seed_data.json").read_text())
        body = {"graph_id": graph_id, "data": data, "optimizer": {"name": "sgd", "lr": 0.5}, "steps": 20,
                "batch_size": 16, "report_every": 1}
        body_bytes = json.dumps(body).encode()

        def first_step_event(job_id: str) -> float:
            """Follow the job's event stream to its end, as ``chainrule submit --watch``,
            Client.follow and the dashboard do; returns when (perf_counter) the first step came."""
            first = None
            with client.stream("GET", f"/v1/jobs/{job_id}/events", headers={"Accept": "text/event-stream"},
                               timeout=WAIT_S) as stream:
                for line in stream.iter_lines():
                    if first is None and line.strip() == "event: step":
                        first = time.perf_counter()
                    if line.strip() in ("event: end", "event: error"):
                        break
            if first is None:
                stack.fail(f"the event stream of {job_id} ended without a step")
            return first

        def run_job(watch: str = "events") -> tuple[float, dict[str, float]]:
            """The latency from POST to the first step visible, and where it went (ms): the POST's
            round trip, then from the job's ``created`` time (the API's clock, the same machine's)
            to ``started`` (the Celery message's way to a worker), to the first step's own time
            (the worker reading the job, building the trainer, lowering the tape, the step), and
            the rest until the client saw it (the reporter's write, then: ``events``, the job's
            event stream delivering it; ``poll``, a GET /steps every 2 ms showing it)."""
            wall, start = time.time(), time.perf_counter()
            reply = client.post("/v1/jobs", json=body)
            posted = time.perf_counter()
            if reply.status_code != 202:
                stack.fail(f"POST /v1/jobs answered {reply.status_code}: {reply.text[:500]}")
            job_id = reply.json()["id"]
            if watch == "events":
                seen = first_step_event(job_id)
            else:
                wait(stack, f"the first step of {job_id}",
                     lambda: client.get(f"/v1/jobs/{job_id}/steps", params={"limit": 1}).json()["steps"])
                seen = time.perf_counter()
            latency = (seen - start) * 1000
            state = wait(stack, f"{job_id} to finish",
                         lambda: finished(client.get(f"/v1/jobs/{job_id}").json()["state"]), interval=0.005)
            if state != "succeeded":
                stack.fail(f"job {job_id} ended {state}")
            _, created, started, _ = job_times(r, namespace, [job_id])[0]
            (_, first), = r.xrange(f"{namespace}:job:{job_id}:steps", count=1)
            stepped = float(first[b"t"])
            parts = {"post": (posted - start) * 1000, "created_to_started": (started - created) * 1000,
                     "started_to_first_step": (stepped - started) * 1000,
                     "first_step_to_visible": latency - (stepped - wall) * 1000}
            return latency, parts

        # warm-up, not counted: every worker process has run jobs, and both API processes have
        # answered (each connection lands on one of them; the client processes' ones too)
        warm = submit_concurrently(pool, n_clients, base_url, body_bytes, 2 * n_clients)
        for _ in range(WORKER_PROCESSES):
            run_job("events")
            run_job("poll")
        wait(stack, "the warm-up jobs", lambda: all(t[0] == "succeeded" for t in job_times(r, namespace, warm["ids"])),
             interval=0.05)

        # d. submit -> first step visible
        # (alternating how the client watches: the event stream, the goal's figure, and polling)
        runs = {"events": [], "poll": []}
        for _ in range(n_jobs if "d" in wanted else 0):
            for watch, kept in runs.items():
                kept.append(run_job(watch))
        if runs["events"]:
            report_latency(report, runs)

        # b. tiny jobs end to end through the workers
        if "b" in wanted:
            report["throughput"] = tiny_jobs(stack, pool, r, namespace, procs, workers, base_url, body_bytes,
                                             n_clients, n_throughput, args.pool)

        # a. submissions/s, the API alone (workers stopped: their jobs would compete for the cores)
        stack.stop(list(workers))
        if "a" in wanted:
            report["submissions"] = submissions(stack, pool, procs, base_url, body_bytes, n_clients, n_submissions)
        client.close()
        stack.stop(list(stack.procs))
    finally:
        pool.shutdown()
        for proc in procs.values():
            stop(proc)
        shutil.rmtree(logdir, ignore_errors=True)
        for key in r.scan_iter(f"{namespace}:*", count=1000):
            r.delete(key)

    # c. reporting overhead on a W2-sized job: reporting_overhead.py's measurement, the cores now idle
    if "c" in wanted:
        report["reporting_overhead"] = overhead = reporting_overhead_w2(args.redis_url, overhead_steps, overhead_rounds)
        print(f"c. reporting every step (gradient norms) on the compiled engine, {overhead['workload']}: "
              f"{overhead['bare_us']:.0f} -> {overhead['reporting_us']:.0f} us/step, overhead "
              f"{overhead['overhead'] * 100:+.1f}% (rounds' paired range {overhead['range'][0] * 100:+.1f}% to "
              f"{overhead['range'][1] * 100:+.1f}%; goal <= {GOALS['reporting_overhead'] * 100:.0f}%: "
              f"{verdict(overhead['met'])})")
    r.close()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def report_latency(report: dict, runs: dict[str, list[tuple[float, dict[str, float]]]]) -> None:
    """d's figures: p50/p90 and the parts' medians for each way of watching; the goal is judged
    on the event stream's (how chainrule's own clients watch a job)."""
    report["latency_ms"] = {}
    for watch, label in (("events", "watching its event stream"), ("poll", "polling GET /steps every 2 ms")):
        latencies = [latency for latency, _ in runs[watch]]
        p50, p90 = statistics.median(latencies), percentile(latencies, 0.9)
        parts = {part: statistics.median(p[part] for _, p in runs[watch]) for part in runs[watch][0][1]}
        met = p50 <= GOALS["latency_p50_ms"]
        report["latency_ms"][watch] = {"median": p50, "p50": p50, "p90": p90, "jobs": len(latencies),
                                       "all": latencies, "parts_p50": parts, "goal_p50": GOALS["latency_p50_ms"],
                                       **({"met": met} if watch == "events" else {})}
        goal = (f" (goal p50 <= {GOALS['latency_p50_ms']:.0f} ms: {verdict(met)})" if watch == "events"
                else " (for comparison)")
        print(f"d. submit -> first step visible, {label}: p50 {p50:.1f} ms, p90 {p90:.1f} ms over "
              f"{len(latencies)} sequential jobs{goal}")
        print("   where it went (medians, ms): " + ", ".join(f"{k.replace('_', ' ')} {v:.1f}"
                                                            for k, v in parts.items()))


def tiny_jobs(stack: Stack, pool, r: redis.Redis, namespace: str, procs: dict, workers: dict, base_url: str,
              body_bytes: bytes, n_clients: int, n_throughput: int, pool_kind: str) -> dict:
    """b: tiny jobs submitted by the clients at once and trained by the workers, end to end."""
    worker_sessions = [procs[name].pid for name in workers]
    cpu_before = session_cpu_s(worker_sessions), session_cpu_s([procs["API"].pid])
    sent = submit_concurrently(pool, n_clients, base_url, body_bytes, n_throughput)
    if sent["errors"]:
        stack.fail(f"{len(sent['errors'])} of {n_throughput} POSTs refused, e.g. {sent['errors'][0]}")
    ids = sent["ids"]
    wait(stack, f"{len(ids)} jobs to finish",
         lambda: all(finished(t[0]) for t in job_times(r, namespace, ids)), timeout=WAIT_S + n_throughput,
         interval=0.05)
    worker_cpu_ms = (session_cpu_s(worker_sessions) - cpu_before[0]) / len(ids) * 1000
    api_cpu_ms = (session_cpu_s([procs["API"].pid]) - cpu_before[1]) / len(ids) * 1000
    times = job_times(r, namespace, ids)
    bad = [t[0] for t in times if t[0] != "succeeded"]
    if bad:
        stack.fail(f"{len(bad)} of {len(ids)} jobs did not succeed: {sorted(set(bad))}")
    end_to_end = max(t[3] for t in times) - sent["first"]
    jobs_per_s = len(ids) / end_to_end
    waits = [t[2] - t[1] for t in times]
    runs = [t[3] - t[2] for t in times]
    figures = {
        "jobs": len(ids), "elapsed_s": end_to_end, "jobs_per_s": jobs_per_s,
        "submitting_s": sent["elapsed_s"], "submitted_per_s": len(ids) / sent["elapsed_s"],
        "run_ms": {"median": statistics.median(runs) * 1000, "p90": percentile(runs, 0.9) * 1000},
        "queue_wait_ms": {"median": statistics.median(waits) * 1000, "p90": percentile(waits, 0.9) * 1000},
        "worker_cpu_ms_per_job": worker_cpu_ms, "api_cpu_ms_per_job": api_cpu_ms,
        "goal": GOALS["jobs_per_s"], "met": jobs_per_s >= GOALS["jobs_per_s"]}
    print(f"b. {len(ids)} jobs (seed graph, 20 steps) through {WORKER_PROCESSES} workers ({pool_kind}): "
          f"{jobs_per_s:.0f} jobs/s end to end, {end_to_end:.2f} s from the first POST to the last job "
          f"succeeded (goal >= {GOALS['jobs_per_s']:.0f}/s: {verdict(jobs_per_s >= GOALS['jobs_per_s'])}); "
          f"submitted in {sent['elapsed_s']:.2f} s; per job: started -> finished median "
          f"{statistics.median(runs) * 1000:.1f} ms, queue wait median {statistics.median(waits) * 1000:.0f} ms; "
          f"CPU per job: workers {worker_cpu_ms:.1f} ms, API {api_cpu_ms:.1f} ms")
    return figures


def submissions(stack: Stack, pool, procs: dict, base_url: str, body_bytes: bytes, n_clients: int,
                n_submissions: int) -> dict:
    """a: POSTs from the clients at once to the API alone (the workers stopped)."""
    api_cpu_before = session_cpu_s([procs["API"].pid])
    sent = submit_concurrently(pool, n_clients, base_url, body_bytes, n_submissions)
    api_cpu_ms = (session_cpu_s([procs["API"].pid]) - api_cpu_before) / n_submissions * 1000
    if sent["errors"]:
        stack.fail(f"{len(sent['errors'])} of {n_submissions} POSTs refused, e.g. {sent['errors'][0]}")
    per_s = n_submissions / sent["elapsed_s"]
    figures = {"per_s": per_s, "ms_per_post": sent["elapsed_s"] / n_submissions * 1000,
               "count": n_submissions, "body_bytes": len(body_bytes), "elapsed_s": sent["elapsed_s"],
               "api_cpu_ms_per_post": api_cpu_ms,
               "goal": GOALS["submissions_per_s"], "met": per_s >= GOALS["submissions_per_s"]}
    print(f"a. submissions: {per_s:.0f} jobs/s accepted by {API_WORKERS} API processes from {n_clients} "
          f"client processes ({n_submissions} POSTs of {len(body_bytes)} bytes in {sent['elapsed_s']:.2f} s; "
          f"goal >= {GOALS['submissions_per_s']:.0f}/s: {verdict(per_s >= GOALS['submissions_per_s'])}); "
          f"API CPU {api_cpu_ms:.2f} ms per POST")
    return figures


def reporting_overhead_w2(redis_url: str, steps: int, rounds: int) -> dict:
    """bench/reporting_overhead.py's measurement (the worker's _Reporter writing to Redis under a
    real lease, against the bare runtime.Trainer) for its W2 workload, report_every 1."""
    sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
    import reporting_overhead as ro
    from worker.settings import Settings
    from worker.store import JobStore

    name, graph, data, batch = ro.w2_workload()
    store = JobStore.connect(Settings(redis_url=redis_url, namespace="crbench-" + uuid.uuid4().hex[:8]))
    try:
        rows = ro.measure(store, graph, data, batch, steps, rounds,
                          {"bare trainer": None, "report every 1": {"report_every": 1}})
    finally:
        store.delete_namespace()
        store.close()
    row = rows["report every 1"]
    overhead = row["paired_ratio_median"] - 1
    return {"workload": name, "steps": steps, "rounds": rounds, "bare_us": rows["bare trainer"]["median_us"],
            "reporting_us": row["median_us"], "overhead": overhead,
            "range": [x - 1 for x in row["paired_ratio_range"]], "rows": rows,
            "goal": GOALS["reporting_overhead"], "met": overhead <= GOALS["reporting_overhead"]}


if __name__ == "__main__":
    raise SystemExit(main())
