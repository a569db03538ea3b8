"""Finding a Redis for the integration tests, or starting a private one.

The suite prefers a Redis that already answers (``CHAINRULE_REDIS_URL`` / ``REDIS_URL``,
else ``redis://127.0.0.1:6379/0``). When none answers it starts ``redis-server`` from
PATH on a free port in a temporary directory, with persistence off, and stops it at the
end. ``CHAINRULE_TEST_REDIS=embedded`` forces the embedded server.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from service.cli.redis_launcher import redis_answers

DEFAULT_URL = "redis://127.0.0.1:6379/0"


def answers(url: str, timeout: float = 1.0) -> bool:
    """True when a Redis at ``url`` answers PING (the same probe ``chainrule serve`` uses)."""
    return redis_answers(url, timeout)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EmbeddedRedis:
    """A throwaway ``redis-server`` on 127.0.0.1; use as a context manager."""

    def __init__(self, binary: str | None = None, startup_timeout: float = 10.0, *, appendonly: bool = False):
        self.binary = binary or shutil.which("redis-server")
        if self.binary is None:
            raise RuntimeError(
                "no Redis answers and there is no `redis-server` on PATH to start one: install Redis "
                "(e.g. `apt-get install redis-server`) or point CHAINRULE_REDIS_URL at a running server")
        self.startup_timeout = startup_timeout
        # AOF with fsync on every write, as a durable deployment (docker-compose.yml) runs it:
        # what the fault tests restart must come back with every acknowledged write.
        self.appendonly = appendonly
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.tmpdir: tempfile.TemporaryDirectory | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def log(self) -> str:
        if self.tmpdir is None:
            return ""
        path = Path(self.tmpdir.name) / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> "EmbeddedRedis":
        self.tmpdir = tempfile.TemporaryDirectory(prefix="crtest-redis-")
        last_error = ""
        for _ in range(5):  # a port picked as free can be taken before redis binds it: retry
            self.port = free_port()
            if self._spawn():
                return self
            last_error = self.log()[-2000:]
            self._terminate()
        self.tmpdir.cleanup()
        self.tmpdir = None
        raise RuntimeError(f"could not start {self.binary}; its log:\n{last_error}")

    def _spawn(self) -> bool:
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly else ["--appendonly", "no"]
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *persistence,
             "--dir", self.tmpdir.name, "--logfile", "redis.log", "--daemonize", "no"],
            cwd=self.tmpdir.name, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if answers(self.url, timeout=0.5):
                return True
            time.sleep(0.05)
        return False

    def shutdown(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server, keeping its data directory (SIGTERM: a clean restart; SIGKILL: a crash)."""
        if self.proc is not None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)
            self.proc = None

    def restart_after_shutdown(self) -> None:
        """Start again on the same port and directory: with appendonly, from its AOF."""
        if not self._spawn():
            raise RuntimeError(f"redis did not come back; its log:\n{self.log()[-2000:]}")

    def _terminate(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        self._terminate()
        if self.tmpdir is not None:
            self.tmpdir.cleanup()
            self.tmpdir = None

    def __enter__(self) -> "EmbeddedRedis":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def configured_url() -> str:
    return os.environ.get("CHAINRULE_REDIS_URL") or os.environ.get("REDIS_URL") or DEFAULT_URL


@contextmanager
def answering_redis() -> Iterator[str]:
    """The URL of a Redis that answers: the configured one (default 127.0.0.1:6379), else a
    private ``redis-server`` for as long as the block runs (``CHAINRULE_TEST_REDIS=embedded``
    forces the private one)."""
    url = configured_url()
    if os.environ.get("CHAINRULE_TEST_REDIS") != "embedded" and answers(url):
        yield url
        return
    with EmbeddedRedis() as server:
        yield server.url
