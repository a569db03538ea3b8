"""Service figures: submit-to-first-step latency and job submissions per second.

    python bench/service_bench.py [--redis-url redis://127.0.0.1:6379/0] [--jobs 30] [--submissions 200]

Starts a real worker (`chainrule worker`) and API (`chainrule api`) as subprocesses in a
fresh namespace of the given Redis, then measures through HTTP:
  * latency from POST /v1/jobs to the first step visible in GET /v1/jobs/{id}/steps
    (seed graph, report_every 1), median and p90 over --jobs sequential jobs;
  * submissions per second: POST /v1/jobs back to back from one client (the jobs queue up).
Everything it started is stopped and its keys deleted at the end. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent


def wait_ready(client: httpx.Client, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("the stack did not become ready")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--jobs", type=int, default=30)
    parser.add_argument("--submissions", type=int, default=200)
    parser.add_argument("--port", type=int, default=8799)
    args = parser.parse_args()
    namespace = "crbench-" + uuid.uuid4().hex[:8]
    env = {**os.environ, "REDIS_URL": args.redis_url, "CHAINRULE_NAMESPACE": namespace,
           "CHAINRULE_API_KEYS": "bench:bench"}
    procs = [subprocess.Popen([sys.executable, "-m", "service.cli", "worker", "--pool", "solo"], env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
             subprocess.Popen([sys.executable, "-m", "service.cli", "api", "--port", str(args.port),
                               "--log-level", "warning"], env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{args.port}", headers={"Authorization": "Bearer bench"},
                              timeout=30)
        wait_ready(client)
        graph = json.loads((ROOT / "examples" / "logistic_regression.json").read_text())
        graph_id = client.post("/v1/graphs", json=graph).json()["id"]
        data = json.loads((ROOT / "examples" / "data" / "seed_data.json").read_text())
        body = {"graph_id": graph_id, "data": data, "optimizer": {"name": "sgd", "lr": 0.5}, "steps": 20,
                "batch_size": 16, "report_every": 1}
        latencies = []
        for _ in range(args.jobs):
            start = time.perf_counter()
            job = client.post("/v1/jobs", json=body).json()
            while not client.get(f"/v1/jobs/{job['id']}/steps", params={"limit": 1}).json()["steps"]:
                time.sleep(0.002)
            latencies.append((time.perf_counter() - start) * 1000)
            while client.get(f"/v1/jobs/{job['id']}").json()["state"] not in ("succeeded", "failed"):
                time.sleep(0.005)
        latencies.sort()
        print(f"submit -> first step visible: median {statistics.median(latencies):.1f} ms, "
              f"p90 {latencies[int(0.9 * (len(latencies) - 1))]:.1f} ms over {len(latencies)} jobs")
        start = time.perf_counter()
        for _ in range(args.submissions):
            assert client.post("/v1/jobs", json=body).status_code == 202
        elapsed = time.perf_counter() - start
        print(f"submissions: {args.submissions / elapsed:.0f} jobs/s from one client "
              f"({elapsed / args.submissions * 1000:.1f} ms per POST, {len(json.dumps(body))} byte bodies)")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        r = redis.Redis.from_url(args.redis_url)
        for key in r.scan_iter(f"{namespace}:*", count=1000):
            r.delete(key)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
