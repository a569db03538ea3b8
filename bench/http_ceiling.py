"""What the HTTP stack alone can accept: the ceiling under issue #19's submissions/s figure (a).

    python bench/http_ceiling.py --json out.json      # 2,000 POSTs per variant
    python bench/http_ceiling.py --quick              # smoke run

``service_bench.py``'s figure a POSTs a 3 KB seed-graph job to ``chainrule api --workers 2``
from 4 client processes. This script runs the same clients (its ``post_jobs``, the same body)
against the same server (uvicorn, 2 processes, the same options as ``chainrule api``) serving
apps that do *nothing* with a job, so the figure is what the 2 cores give before chainrule
does any work:

* ``starlette``: a bare Starlette route reads the body and answers 202 with an id;
* ``fastapi_async``: a FastAPI ``async`` route whose body is parsed as JSON into a ``dict``
  (FastAPI's request handling and its JSON encoding of the answer, no model, no Redis);
* ``fastapi``: the same as a plain ``def`` route, as chainrule's routes are (FastAPI runs it in
  a worker thread).

Each variant's submissions/s and the server's CPU per POST (its processes' CPU time from /proc,
as service_bench.py reads it). Figures, not assertions.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import multiprocessing
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(1, str(ROOT / "bench"))
from service_bench import (API_WORKERS, GOALS, Stack, free_port, ready, session_cpu_s, stop,  # noqa: E402
                           submit_concurrently, wait)

VARIANTS = ("starlette", "fastapi_async", "fastapi")


# -- the apps (uvicorn imports this module in each of its processes: ``http_ceiling:<variant>``) --
def _starlette_app():
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def create(request):
        await request.body()
        return JSONResponse({"id": uuid.uuid4().hex}, status_code=202)

    async def readyz(request):
        return JSONResponse({"ok": True})

    return Starlette(routes=[Route("/v1/jobs", create, methods=["POST"]), Route("/readyz", readyz)])


def _fastapi_app(asynchronous: bool = False):
    from fastapi import FastAPI

    api = FastAPI()

    if asynchronous:
        @api.post("/v1/jobs", status_code=202)
        async def create(body: dict) -> dict:  # no thread hop
            return {"id": uuid.uuid4().hex, "state": "queued", "fields": len(body)}
    else:
        @api.post("/v1/jobs", status_code=202)
        def create(body: dict) -> dict:  # a sync route, as chainrule's: FastAPI runs it in a thread
            return {"id": uuid.uuid4().hex, "state": "queued", "fields": len(body)}

    @api.get("/readyz")
    def readyz() -> dict:
        return {"ok": True}

    return api


def __getattr__(name: str):  # uvicorn's "http_ceiling:starlette" builds the app in the worker process
    if name == "starlette":
        return _starlette_app()
    if name == "fastapi":
        return _fastapi_app()
    if name == "fastapi_async":
        return _fastapi_app(asynchronous=True)
    raise AttributeError(name)


def seed_job_body() -> bytes:
    """The body service_bench.py POSTs (graph_id stands in for a stored graph's)."""
    data = json.loads((ROOT / "examples" / "data" / "seed_data.json").read_text())
    return json.dumps({"graph_id": "0" * 64, "data": data, "optimizer": {"name": "sgd", "lr": 0.5}, "steps": 20,
                       "batch_size": 16, "report_every": 1}).encode()


def measure(variant: str, pool, clients: int, submissions: int, logdir: Path) -> dict:
    port = free_port()
    # chainrule api's own server options (service/cli: uvicorn with --workers), this module as the app
    cmd = [sys.executable, "-m", "uvicorn", f"http_ceiling:{variant}", "--app-dir", str(ROOT / "bench"),
           "--host", "127.0.0.1", "--port", str(port), "--workers", str(API_WORKERS), "--log-level", "warning"]
    with open(logdir / f"{variant}.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    stack = Stack({variant: proc}, logdir)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            wait(stack, f"the {variant} app to answer /readyz", lambda: ready(client), interval=0.1)
        body = seed_job_body()
        submit_concurrently(pool, clients, f"http://127.0.0.1:{port}", body, 4 * clients)  # warm-up
        cpu_before = session_cpu_s([proc.pid])
        sent = submit_concurrently(pool, clients, f"http://127.0.0.1:{port}", body, submissions)
        cpu_ms = (session_cpu_s([proc.pid]) - cpu_before) / submissions * 1000
        if sent["errors"]:
            stack.fail(f"{len(sent['errors'])} POSTs refused, e.g. {sent['errors'][0]}")
        per_s = len(sent["ids"]) / sent["elapsed_s"]
        return {"per_s": per_s, "server_cpu_ms_per_post": cpu_ms, "count": len(sent["ids"]),
                "elapsed_s": sent["elapsed_s"], "met": per_s >= GOALS["submissions_per_s"]}
    finally:
        stop(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submissions", type=int, default=None, help="POSTs per variant (default 2000; --quick 40)")
    parser.add_argument("--clients", type=int, default=None, help="client processes (default 4; --quick 2)")
    parser.add_argument("--quick", action="store_true", help="smoke run")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    submissions = args.submissions or (40 if args.quick else 2000)
    clients = args.clients or (2 if args.quick else 4)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers below when terminated
    pool = concurrent.futures.ProcessPoolExecutor(clients, mp_context=multiprocessing.get_context("fork"))
    logdir = Path(tempfile.mkdtemp(prefix="chainrule-http-ceiling-"))
    report: dict = {"script": "http_ceiling.py", "date": datetime.datetime.now().isoformat(timespec="seconds"),
                    "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                "platform": platform.platform(), "load_average_at_start": list(os.getloadavg())},
                    "server_processes": API_WORKERS, "clients": clients, "submissions": submissions,
                    "goal_per_s": GOALS["submissions_per_s"], "variants": {}}
    try:
        for variant in VARIANTS:
            row = report["variants"][variant] = measure(variant, pool, clients, submissions, logdir)
            print(f"{variant:<14} {row['per_s']:7.0f} submissions/s   server CPU {row['server_cpu_ms_per_post']:.2f} "
                  f"ms per POST   ({row['count']} POSTs, {clients} clients, {API_WORKERS} server processes)")
            time.sleep(0.2)
    finally:
        pool.shutdown()
    print(f"(issue #19's goal for chainrule api: >= {GOALS['submissions_per_s']:.0f} submissions/s)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
