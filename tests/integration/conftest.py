"""Integration fixtures: a real Redis, a real Celery worker process and the HTTP app.

Every session gets its own namespace (``crtest-<random>``) for chainrule's keys and
Celery's (make_celery prefixes Celery's keys with it), so the suite can share a Redis
with anything else; at the end it deletes only the keys under that namespace. When no
Redis answers, a private ``redis-server`` is started (see redis_server.py).

    pytest tests/integration                  # or: pytest -m integration
    CHAINRULE_TEST_REDIS=embedded pytest tests/integration   # force a private redis-server
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest
import redis

from service.settings import ApiSettings
from worker.records import JobRecord

from .redis_server import answering_redis

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
INTEGRATION_DIR = Path(__file__).resolve().parent

API_KEYS = {"tenant-a": "key-a", "tenant-b": "key-b"}
WORKER_START_TIMEOUT_S = 30.0

_worker_log_path: Path | None = None


# -- markers -----------------------------------------------------------------------------
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: needs a real Redis and a real Celery worker process")
    config.addinivalue_line("markers", "faults: kills workers and checks nothing is lost (run alone: -m faults)")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    """A failed test that used the worker shows the tail of the worker's log."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and _worker_log_path is not None and "celery_worker" in getattr(item, "fixturenames", ()):
        report.sections.append(("celery worker log (last 80 lines)", _tail(_worker_log_path, 80)))


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(cannot read {path}: {exc})"


# -- helpers for the test modules --------------------------------------------------------
@pytest.fixture
def fault_env(env, settings):
    """A training queue of the test's own, a 2 s lease and a 0.5 s recovery loop: a worker's orphaned
    job (or sweep) is found within seconds by the next worker on that queue."""
    queue = f"{settings.queue}.faults-{uuid.uuid4().hex[:6]}"
    return queue, {**env, "CHAINRULE_QUEUE": queue, "CHAINRULE_LEASE_TTL_S": "2", "CHAINRULE_SWEEP_INTERVAL_S": "0.5"}


def wait_for(predicate, *, timeout: float, interval: float = 0.02, message: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; that value is returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def wait_for_state(store, job_id: str, states, *, timeout: float = 20.0) -> tuple[JobRecord, list[str]]:
    """Poll a job until its state is in ``states``; returns (its JobRecord, the states seen, in order)."""
    seen: list[str] = []
    states = {states} if isinstance(states, str) else set(states)

    def check():
        job = store.get_job(job_id)
        state = None if job is None else job.state
        if not seen or seen[-1] != state:
            seen.append(state)
        return job if state in states else None

    try:
        job = wait_for(check, timeout=timeout, interval=0.005, message=f"job {job_id} to reach {sorted(states)}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; states seen: {seen}; job now: {store.get_job(job_id)}") from None
    return job, seen


# -- Redis -------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis that answers: the configured one (default 127.0.0.1:6379), else a private redis-server."""
    with answering_redis() as url:
        yield url


@pytest.fixture(scope="session")
def namespace() -> str:
    return f"crtest-{uuid.uuid4().hex[:12]}"


def delete_namespace(url: str, namespace: str) -> int:
    """Delete every key under ``namespace:`` (SCAN + DEL); never touches other keys."""
    client = redis.Redis.from_url(url)
    deleted = 0
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{namespace}:*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += client.delete(*batch)
                batch = []
        if batch:
            deleted += client.delete(*batch)
    finally:
        client.close()
    return deleted


@pytest.fixture(scope="session")
def settings(redis_url: str, namespace: str) -> Iterator[ApiSettings]:
    """The settings of this session: its own namespace and queue, two tenants, small limits."""
    values: dict[str, Any] = dict(
        namespace=namespace,
        queue=f"{namespace}.train",
        api_keys=",".join(f"{key}:{tenant}" for tenant, key in API_KEYS.items()),
        auth_disabled=False,
        max_body_bytes=256 * 1024,
        max_nodes=64,
        max_tensor_elements=20_000,
        max_job_data_bytes=64 * 1024,
        max_steps=500_000,
        max_explain_elements=1_000,
        default_time_limit_s=120,
        max_time_limit_s=600,
        stream_maxlen=10_000,
        retention_s=3600,  # even if the cleanup below never runs, the keys expire
        checkpoint_every_s=1.0,
    )
    s = ApiSettings(redis_url=redis_url, **values)
    # extra="ignore": a field ApiSettings does not take by this name would be dropped silently.
    assert s.redis_url == redis_url and s.namespace == namespace, "ApiSettings ignored the test configuration"
    try:
        yield s
    finally:
        delete_namespace(redis_url, namespace)


@pytest.fixture(scope="session")
def env(settings: ApiSettings) -> dict[str, str]:
    """Environment for subprocesses (worker, CLI): the same configuration as ``settings``."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("CHAINRULE_") and k != "REDIS_URL"}
    for name, value in settings.model_dump().items():
        if value is None:  # unset (an optional port): the default, not the string "None"
            continue
        out[f"CHAINRULE_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    out["REDIS_URL"] = settings.redis_url
    out["PYTHONUNBUFFERED"] = "1"
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return out


# -- Celery ------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def celery_app(settings: ApiSettings):
    from worker.celery_app import make_celery

    app = make_celery(settings)
    try:
        yield app
    finally:
        app.close()


class WorkerProcess:
    def __init__(self, proc: subprocess.Popen, hostname: str, log_path: Path):
        self.proc, self.hostname, self.log_path = proc, hostname, log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc.poll() is None


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM (a worker's warm shutdown), then SIGKILL to the process's own group (it was
    started in a new session: that is it and whatever it started, e.g. a worker's pool)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # leftovers it started, if any
    except (ProcessLookupError, PermissionError):
        pass


@contextmanager
def run_worker(celery_app, env: dict[str, str], *, queue: str, hostname: str, log_path: Path, pool: str = "solo",
               concurrency: int = 1, timeout: float = WORKER_START_TIMEOUT_S) -> Iterator[WorkerProcess]:
    """A ``celery worker`` subprocess consuming ``queue``, from its first answered ping to its stop."""
    cmd = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", f"--pool={pool}",
           f"--concurrency={concurrency}", "-Q", queue, "-n", hostname, "--without-gossip", "--without-mingle",
           "--without-heartbeat", "--loglevel=INFO"]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log_file,
                                stderr=subprocess.STDOUT, start_new_session=True)
    worker = WorkerProcess(proc, hostname, log_path)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if not worker.alive():
                raise RuntimeError(f"the celery worker exited with {proc.returncode} during startup; its log:\n"
                                   + worker.log())
            if celery_app.control.ping(destination=[hostname], timeout=1):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the celery worker did not answer a ping within {timeout:.0f} s; its log:\n"
                                   + worker.log())
        yield worker
    finally:
        stop_process(proc)
        if proc.returncode not in (0, -signal.SIGTERM, -signal.SIGKILL):
            sys.stderr.write(f"\ncelery worker {hostname} exited with {proc.returncode}; its log:\n{worker.log()}\n")


@pytest.fixture(scope="session")
def celery_worker(settings: ApiSettings, env: dict[str, str], celery_app, tmp_path_factory) -> Iterator[WorkerProcess]:
    """A real ``celery worker --pool=solo`` subprocess on this session's queue, answering pings."""
    global _worker_log_path
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    _worker_log_path = log_path
    try:
        with run_worker(celery_app, env, queue=settings.queue, hostname=f"{settings.namespace}@localhost",
                        log_path=log_path) as worker:
            yield worker
    finally:
        _worker_log_path = None


# -- Redis job model ---------------------------------------------------------------------
@pytest.fixture(scope="session")
def store(settings: ApiSettings):
    from worker.store import JobStore

    s = JobStore.connect(settings)
    try:
        yield s
    finally:
        s.close()


# -- HTTP API ----------------------------------------------------------------------------
class Api:
    """The FastAPI app under a TestClient, with auth per tenant.

    ``api.get("/v1/jobs/x")`` authenticates as tenant-a; ``tenant="tenant-b"`` as the other
    tenant; ``tenant=None`` sends no Authorization header.
    """

    def __init__(self, client):
        self.client = client

    @staticmethod
    def headers(tenant: str | None = "tenant-a", **extra: str) -> dict[str, str]:
        out = dict(extra)
        if tenant is not None:
            out["Authorization"] = f"Bearer {API_KEYS[tenant]}"
        return out

    def request(self, method: str, url: str, *, tenant: str | None = "tenant-a",
                headers: dict[str, str] | None = None, **kwargs):
        return self.client.request(method, url, headers={**self.headers(tenant), **(headers or {})}, **kwargs)

    def get(self, url: str, **kwargs):
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs):
        return self.request("POST", url, **kwargs)

    def stream(self, method: str, url: str, *, tenant: str | None = "tenant-a",
               headers: dict[str, str] | None = None, **kwargs):
        return self.client.stream(method, url, headers={**self.headers(tenant), **(headers or {})}, **kwargs)


def starlette_test_client():
    """fastapi.testclient.TestClient. Starlette >= 1.x warns that it wants ``httpx2`` instead of
    ``httpx`` (what is installed); with warnings as errors that import would fail, so only
    that one warning is silenced, here."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette\.testclient` is deprecated")
        from fastapi.testclient import TestClient
    return TestClient


@pytest.fixture(scope="session")
def api(settings: ApiSettings, celery_worker) -> Iterator[Api]:
    """The API with a live worker behind it: every test that submits a job gets it trained,
    whichever tests run before it (or alone, with -k)."""
    from service.app import create_app

    with starlette_test_client()(create_app(settings)) as client:
        yield Api(client)
