"""Real-browser testing: Debian's Chromium driven by Playwright for Python, and the app served for it.

Registered as a plugin by tests/conftest.py (``pytest_plugins``), so any test module can use:

* ``browser`` (session): a headless Chromium (``/usr/bin/chromium``, else ``chromium`` on PATH).
  When it is missing and the tests run as root on Debian/Ubuntu, it is installed once per session
  (``apt-get update``, ``apt-get install -y --no-install-recommends chromium``, logged); otherwise
  the test fails saying how to install it. Playwright's own browser download is never used
  (``playwright install`` needs a CDN this project does not rely on).
* ``offline_page`` (per test): a fresh browser context and page in which every request to a host
  other than loopback or ``APP_HOST`` is aborted and recorded in ``offline_page.blocked``, so a
  test asserts that a page needs nothing from the internet (and that it rendered without it).
  Loads the page's Content-Security-Policy refused (never requested) are in ``.refused``.
* ``live_server(env)``: a context manager running ``uvicorn service.app:app`` in a subprocess on
  127.0.0.1 with the given environment, yielding its base URL once ``/healthz`` answers.

``APP_HOST`` (``chainrule.test``) resolves to 127.0.0.1 inside the browser only: loading the app
by that name instead of 127.0.0.1 exercises code that behaves differently on localhost (Swagger
UI, for one, skips its online validator badge for localhost specs).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent

CHROMIUM_PATHS = ("/usr/bin/chromium",)
CHROMIUM_NAMES = ("chromium", "chromium-browser")
APT_PACKAGE = "chromium"
INSTALL_HINT = ("install Debian's Chromium as root: apt-get update && "
                f"apt-get install -y --no-install-recommends {APT_PACKAGE}")
APT_TIMEOUT_S = 1800

APP_HOST = "chainrule.test"
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]", APP_HOST})
SERVER_READY_TIMEOUT_S = 60.0


# -- Chromium ---------------------------------------------------------------------------------
def find_chromium() -> str | None:
    for path in CHROMIUM_PATHS:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _say(config: pytest.Config, message: str) -> None:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"[tests/browser.py] {message}")
    else:
        print(f"[tests/browser.py] {message}", file=sys.stderr)


def install_chromium(config: pytest.Config) -> str:
    """apt-get update + install Chromium (root only); the path of the installed binary."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.fail(f"Chromium not found (looked for {', '.join(CHROMIUM_PATHS + CHROMIUM_NAMES)}); "
                    f"{INSTALL_HINT}", pytrace=False)
    log_path = Path(tempfile.gettempdir()) / "chainrule-tests-apt-chromium.log"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with log_path.open("ab") as log:
        for cmd in (["apt-get", "update"],
                    ["apt-get", "install", "-y", "--no-install-recommends", APT_PACKAGE]):
            _say(config, f"Chromium missing: running {' '.join(cmd)} (output in {log_path})")
            log.write(f"\n$ {' '.join(cmd)}\n".encode())
            log.flush()
            result = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=APT_TIMEOUT_S)
            if result.returncode != 0:
                pytest.fail(f"`{' '.join(cmd)}` failed (exit {result.returncode}); see {log_path}. "
                            f"To install by hand: {INSTALL_HINT}", pytrace=False)
    path = find_chromium()
    if path is None:
        pytest.fail(f"apt-get installed {APT_PACKAGE} but no Chromium binary is on PATH; see {log_path}",
                    pytrace=False)
    _say(config, f"installed {path}")
    return path


def chromium_executable(config: pytest.Config) -> str:
    return find_chromium() or install_chromium(config)


@pytest.fixture(scope="module")
def browser(pytestconfig: pytest.Config) -> Iterator[Any]:
    """A headless Chromium (playwright.sync_api.Browser), shared by a test module.

    Module scope, not session: Playwright's sync API keeps an asyncio loop running in the
    main thread while it is started, and any later test that runs its own loop there
    (``anyio.run``) would fail with "Already running asyncio in this thread"."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser tests need Playwright for Python: pip install -e '.[test]' "
                    "(only the pip package: the browser is Debian's chromium, never `playwright install`)",
                    pytrace=False)
    executable = chromium_executable(pytestconfig)
    args = [f"--host-resolver-rules=MAP {APP_HOST} 127.0.0.1"]
    if os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium's sandbox cannot run as root
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=executable, headless=True, args=args)
        try:
            yield instance
        finally:
            instance.close()


# -- pages that may not reach the internet ---------------------------------------------------
@dataclass
class OfflinePage:
    page: Any  # playwright.sync_api.Page
    blocked: list[str] = field(default_factory=list)         # requests to other hosts, aborted
    requests: list[str] = field(default_factory=list)        # every request the page made
    refused: list[str] = field(default_factory=list)         # "directive URL" the page's CSP refused
    errors: list[str] = field(default_factory=list)          # uncaught exceptions in the page
    console_errors: list[str] = field(default_factory=list)  # console.error messages

    def external_resources_in_dom(self) -> list[str]:
        """URLs of resources the rendered DOM loads (scripts, styles, icons, images, frames) that
        point at another host; links a user may click (``<a href>``) are not resources."""
        urls = self.page.evaluate("""() => {
            const out = [];
            const pick = (selector, attr) => document.querySelectorAll(selector).forEach(
                el => { const v = el.getAttribute(attr); if (v) out.push(new URL(v, document.baseURI).href); });
            pick('script[src]', 'src'); pick('link[href]', 'href'); pick('img[src]', 'src');
            pick('iframe[src]', 'src'); pick('source[src]', 'src'); pick('embed[src]', 'src');
            pick('object[data]', 'data'); pick('image[href]', 'href'); pick('use[href]', 'href');
            return out;
        }""")
        return [u for u in urls if not is_local(u)]


def is_local(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about", "javascript"):
        return True
    return (parts.hostname or "") in LOCAL_HOSTS


@pytest.fixture
def offline_page(browser) -> Iterator[OfflinePage]:
    """A page whose requests to any non-local host are aborted and recorded (``.blocked``)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")
    page = context.new_page()
    state = OfflinePage(page)

    def guard(route) -> None:
        url = route.request.url
        if is_local(url):
            route.continue_()
        else:
            state.blocked.append(url)
            route.abort("blockedbyclient")

    context.route("**/*", guard)
    # A Content-Security-Policy stops a load in the browser, before any request exists to guard.
    context.expose_function("__recordCspViolation", lambda line: state.refused.append(line))
    context.add_init_script("document.addEventListener('securitypolicyviolation', "
                            "e => window.__recordCspViolation(`${e.effectiveDirective} ${e.blockedURI}`));")
    context.on("request", lambda request: state.requests.append(request.url))
    page.on("websocket", lambda ws: None if is_local(ws.url) else state.blocked.append(ws.url))
    page.on("pageerror", lambda exc: state.errors.append(str(exc)))
    page.on("console", lambda msg: state.console_errors.append(msg.text) if msg.type == "error" else None)
    try:
        yield state
    finally:
        context.close()


# -- the app, served for the browser ------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def live_server(env: dict[str, str], *, extra_args: tuple[str, ...] = ()) -> Iterator[str]:
    """``uvicorn service.app:app`` on 127.0.0.1 in a subprocess; yields ``http://127.0.0.1:PORT``."""
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "service.app:app", "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "warning", *extra_args]
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

        def output() -> str:
            log.seek(0)
            return log.read().decode(errors="replace")[-4000:]

        try:
            deadline = time.monotonic() + SERVER_READY_TIMEOUT_S
            while True:
                if proc.poll() is not None:
                    raise AssertionError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{output()}")
                try:
                    if httpx.get(f"{base}/healthz", timeout=2.0).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"the app did not answer /healthz within {SERVER_READY_TIMEOUT_S} s:\n"
                                         f"{output()}")
                time.sleep(0.1)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
