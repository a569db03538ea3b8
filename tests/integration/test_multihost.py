"""A worker needs nothing but REDIS_URL to join a deployment, even from another host.

Two network namespaces stand for two machines, joined by a veth pair on a private /30 that
exists only inside them (no route anywhere else, no interface in the root namespace):

    namespace A  10.203.0.1/30   redis-server (password required), `chainrule api`, the client
    namespace B  10.203.0.2/30   `chainrule worker`, whose environment is REDIS_URL
                                 (redis://:PASSWORD@10.203.0.1:6379/0) and the deployment's
                                 namespace

The seed graph is trained through the API in A, by the worker in B. Needs root (``ip netns``)
and ``redis-server``; skipped, saying why, without them. Everything it creates (processes,
namespaces, the veth pair) is removed at the end, whatever happened (netns.py).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from .conftest import EXAMPLES, ROOT
from .netns import ADDR_A, PREFIX, NetnsPair, Proc, base_env, ip, netns_pair  # noqa: F401 (netns_pair: the fixture)

REDIS_PORT, API_PORT = 6379, 8000  # the namespaces are private: fixed ports cannot collide
API_KEY, TENANT = "multihost-key", "multihost"
DEADLINE_S = 40.0  # readiness + the job, from the client's start (the whole test stays < 60 s)


# The HTTP client, run inside namespace A: waits until the API is ready (Redis and a worker
# answer), posts the seed graph, submits the job, polls it to its end and reads the result and
# the job's hash in Redis. Prints one JSON report.
CLIENT = r"""
import json, sys, time, urllib.error, urllib.request
import redis

api, redis_url, ns, key, graph_path, data_path, deadline_s = sys.argv[1:]
deadline = time.monotonic() + float(deadline_s)
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
report = {}

def call(method, path, body=None):
    req = urllib.request.Request(api + path, method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with opener.open(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")

def done(ok):
    print(json.dumps(report))
    sys.exit(0 if ok else 1)

while True:
    try:
        report["ready"] = call("GET", "/readyz")
        if report["ready"][0] == 200:
            break
    except OSError as exc:
        report["ready"] = repr(exc)
    if time.monotonic() > deadline:
        done(False)
    time.sleep(0.2)

status, graph = call("POST", "/v1/graphs", json.load(open(graph_path)))
report["graph"] = [status, graph]
if status not in (200, 201):
    done(False)
status, job = call("POST", "/v1/jobs", {"graph_id": graph["id"], "data": json.load(open(data_path)),
                                        "optimizer": {"name": "sgd", "lr": 0.5}, "steps": 100,
                                        "batch_size": 16, "seed": 0, "report_every": 10})
report["submit"] = [status, job]
if status != 202:
    done(False)
while True:
    report["job"] = call("GET", f"/v1/jobs/{job['id']}")[1]
    if report["job"]["state"] in ("succeeded", "failed", "cancelled"):
        break
    if time.monotonic() > deadline:
        done(False)
    time.sleep(0.1)
report["result"] = call("GET", f"/v1/jobs/{job['id']}/result")
r = redis.Redis.from_url(redis_url, decode_responses=True)
report["job_hash"] = r.hgetall(f"{ns}:job:{job['id']}")
report["celery_keys"] = sorted(r.scan_iter(match=f"{ns}:celery:*", count=1000))
try:
    redis.Redis(host=r.connection_pool.connection_kwargs["host"], port=r.connection_pool.connection_kwargs["port"],
                socket_timeout=2).ping()
    report["without_password"] = "answered"
except redis.RedisError as exc:
    report["without_password"] = type(exc).__name__
done(report["job"]["state"] == "succeeded")
"""

# Run inside namespace B: what a process there can reach.
PROBE_B = r"""
import errno, json, socket
out = {}
try:
    socket.create_connection(("127.0.0.1", 6379), timeout=2).close()
    out["loopback_6379"] = "connected"
except OSError as exc:
    out["loopback_6379"] = errno.errorcode.get(exc.errno, repr(exc))
print(json.dumps(out))
"""


def test_worker_on_another_host_joins_with_only_redis_url(netns_pair: NetnsPair, tmp_path: Path):
    started = time.monotonic()
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        pytest.skip("needs `redis-server` on PATH (e.g. apt-get install redis-server)")
    a, b = netns_pair.a, netns_pair.b
    namespace = f"crtest-mh-{uuid.uuid4().hex[:10]}"
    # Redis across a network wants a password (it refuses remote clients without one: protected
    # mode); it travels in REDIS_URL, as docs/deploy.md tells.
    password = uuid.uuid4().hex
    redis_url = f"redis://:{password}@{ADDR_A}:{REDIS_PORT}/0"
    worker_name = f"celery@{b}"

    # The API's environment: a deployment's settings.
    api_env = {**base_env(), "REDIS_URL": redis_url, "CHAINRULE_NAMESPACE": namespace,
               "CHAINRULE_API_KEYS": f"{API_KEY}:{TENANT}"}
    # The worker's: REDIS_URL pointing across the veth, and the deployment's namespace (the queue
    # is the default one; every key, Celery's too, is under the namespace). Nothing else.
    worker_env = {**base_env(), "REDIS_URL": redis_url, "CHAINRULE_NAMESPACE": namespace}
    assert {k for k in worker_env if k.startswith("CHAINRULE_") or "REDIS" in k} == {"REDIS_URL",
                                                                                     "CHAINRULE_NAMESPACE"}

    procs: list[Proc] = []

    def logs() -> str:
        return "\n".join(p.log() for p in procs)

    try:
        procs.append(Proc("redis-server", a, [redis_server, "--bind", ADDR_A, "--port", str(REDIS_PORT),
                                              "--requirepass", password, "--save", "", "--appendonly", "no",
                                              "--dir", str(tmp_path),
                                              "--daemonize", "no"], base_env(), tmp_path / "redis.log"))
        procs.append(Proc("api", a, [sys.executable, "-m", "service.cli", "api", "--host", ADDR_A,
                                     "--port", str(API_PORT), "--log-level", "warning"],
                          api_env, tmp_path / "api.log"))
        procs.append(Proc("worker", b, [sys.executable, "-m", "service.cli", "worker", "--pool", "solo",
                                        "--hostname", worker_name], worker_env, tmp_path / "worker.log"))

        client = subprocess.run(
            ["ip", "netns", "exec", a, sys.executable, "-c", CLIENT, f"http://{ADDR_A}:{API_PORT}", redis_url,
             namespace, API_KEY, str(EXAMPLES / "logistic_regression.json"),
             str(EXAMPLES / "data" / "seed_data.json"), str(DEADLINE_S)],
            capture_output=True, text=True, cwd=ROOT, env=base_env(), timeout=DEADLINE_S + 10)
        try:
            report = json.loads(client.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            report = None
        assert client.returncode == 0 and report, (
            f"the job did not succeed through the API; client exit {client.returncode}\n"
            f"stdout: {client.stdout[-3000:]}\nstderr: {client.stderr[-3000:]}\n{logs()}")

        # Trained by the worker in B, recorded under the deployment's namespace.
        job = report["job"]
        assert job["state"] == "succeeded" and job["step"] == 100, job
        assert job["worker"] == worker_name, job
        assert report["job_hash"]["worker"] == worker_name and report["job_hash"]["tenant"] == TENANT
        assert report["celery_keys"], "Celery's keys should be under the namespace too"
        assert report["without_password"] == "AuthenticationError", report["without_password"]
        status, result = report["result"]
        assert status == 200 and result["steps"] == 100, result
        assert math.isfinite(result["loss"]) and result["loss"] < math.log(2) / 2, result  # it learned
        assert report["ready"][1]["checks"] == {"redis": "ok", "workers": "ok"}, report["ready"]

        # Each process ran where it should have.
        for proc, ns in zip(procs, (a, a, b)):
            assert proc.proc.poll() is None, f"{proc.name} exited early\n{logs()}"
            assert ip("netns", "identify", str(proc.proc.pid)).stdout.strip() == ns, proc.name
        assert f"{ADDR_A}:{REDIS_PORT}" in procs[2].log_path.read_text(errors="replace")

        # And the worker could reach nothing but A over the veth: no route beyond the /30 ...
        routes = ip("-n", b, "-4", "route", "show", "table", "all").stdout.splitlines()
        routes = [r for r in routes if not r.startswith(("local ", "broadcast "))]
        assert routes and all(r.startswith(f"10.203.0.0/{PREFIX} ") for r in routes), routes
        assert "default" not in ip("-n", b, "-6", "route", "show").stdout
        # ... and no Redis on its own loopback (the host's 127.0.0.1:6379, if any, is not B's).
        probe = subprocess.run(["ip", "netns", "exec", b, sys.executable, "-c", PROBE_B], capture_output=True,
                               text=True, env=base_env(), timeout=20)
        assert probe.returncode == 0, probe.stderr
        assert json.loads(probe.stdout)["loopback_6379"] == "ECONNREFUSED", probe.stdout
    finally:
        for proc in reversed(procs):
            proc.stop()
    assert time.monotonic() - started < 60
