"""Network namespaces standing for hosts, for the tests that need more than one machine.

Two namespaces, ``a`` and ``b``, joined by a veth pair on a private /30 that exists only inside
them (no route anywhere else, no interface in the root namespace)::

    namespace a  10.203.0.1/30
    namespace b  10.203.0.2/30

The namespaces are private, so fixed addresses and ports cannot collide with anything, even
when two tests use them at once. Needs root (``ip netns``); the ``netns_pair`` fixture skips,
saying why, where network namespaces are not permitted. Everything it creates (processes,
namespaces, the veth pair) is removed at the end, whatever happened.

Used by test_multihost.py (a worker on another host) and test_partition.py (a worker cut off
from Redis). A test module uses the fixture by importing it::

    from .netns import netns_pair  # noqa: F401 (the fixture)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from .conftest import ROOT

ADDR_A, ADDR_B, PREFIX = "10.203.0.1", "10.203.0.2", 30


# -- namespaces ----------------------------------------------------------------------------
@dataclass
class NetnsPair:
    a: str
    b: str
    veth_a: str
    veth_b: str


def ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=15)


def check(result: subprocess.CompletedProcess) -> None:
    if result.returncode != 0:
        raise RuntimeError(f"`{' '.join(result.args)}` failed: {result.stderr.strip()}")


def _kill_everything_in(ns: str) -> None:
    """Processes still inside a namespace this test made (all of them its own children)."""
    for pid in ip("netns", "pids", ns).stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


@pytest.fixture
def netns_pair() -> Iterator[NetnsPair]:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network namespaces with `ip netns`")
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2's `ip` to create network namespaces")
    tag = uuid.uuid4().hex[:8]
    pair = NetnsPair(a=f"crt-{tag}-a", b=f"crt-{tag}-b", veth_a=f"crt{tag}a", veth_b=f"crt{tag}b")
    created: list[str] = []
    try:
        for ns in (pair.a, pair.b):
            added = ip("netns", "add", ns)
            if added.returncode != 0:
                pytest.skip(f"`ip netns add` is not permitted here: {added.stderr.strip()}")
            created.append(ns)
        # Both ends are created inside the namespaces: nothing ever appears in the root namespace.
        veth = ip("link", "add", pair.veth_a, "netns", pair.a, "type", "veth",
                  "peer", "name", pair.veth_b, "netns", pair.b)
        if veth.returncode != 0:
            pytest.skip(f"cannot create a veth pair here: {veth.stderr.strip()}")
        for ns, dev, addr in ((pair.a, pair.veth_a, ADDR_A), (pair.b, pair.veth_b, ADDR_B)):
            check(ip("-n", ns, "addr", "add", f"{addr}/{PREFIX}", "dev", dev))
            check(ip("-n", ns, "link", "set", dev, "up"))
            check(ip("-n", ns, "link", "set", "lo", "up"))
        yield pair
    finally:
        for ns in created:
            _kill_everything_in(ns)
        if created:
            ip("-n", pair.a, "link", "del", pair.veth_a)  # deleting either end removes both
        for ns in created:
            ip("netns", "del", ns)
        left = [ns for ns in created if ns in ip("netns", "list").stdout.split()]
        assert not left, f"network namespaces left behind: {left}"


# -- processes -----------------------------------------------------------------------------
class Proc:
    def __init__(self, name: str, ns: str, cmd: list[str], env: dict[str, str], log: Path):
        self.name, self.ns, self.log_path = name, ns, log
        with open(log, "wb") as out:
            # `ip netns exec` execs the command: the pid is the command's own.
            self.proc = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], cwd=ROOT, env=env,
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def log(self, tail: int = 4000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return f"--- {self.name} (namespace {self.ns}, exit {self.proc.poll()}) ---\n{text[-tail:]}"

    def stop(self) -> None:
        """SIGTERM (warm shutdown, graceful uvicorn), then SIGKILL to its whole process group."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=8)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def base_env() -> dict[str, str]:
    """What any process needs to run (no proxies, no CHAINRULE_*/REDIS_URL from the shell)."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def set_link(ns: str, dev: str, up: bool) -> None:
    """Bring a namespace's interface down (a cut cable: its route goes with it, and every
    packet its processes send, established connections' included, goes nowhere) or back up."""
    check(ip("-n", ns, "link", "set", dev, "up" if up else "down"))
