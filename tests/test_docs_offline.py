"""The API reference (/docs: Swagger UI, /redoc: ReDoc) works without internet access.

Its scripts, styles and favicon are vendored in service/static/vendor (pinned npm releases,
scripts/vendor_frontend.py) and served by the app itself. Checked here:

* over HTTP, against the real app (uvicorn in a subprocess): every URL the pages reference is a
  path on the app, answers 200 with the right content type and serves the vendored bytes, also
  behind a path prefix (``--root-path``);
* the vendored files are the manifest's pinned versions (SHA256SUMS, version strings);
* the pages carry a Content-Security-Policy admitting nothing from another origin;
* in Chromium (Playwright), with every request to another host aborted and recorded: both pages
  render the API (every operation; /v1/jobs in detail), with the pinned library versions, and
  send no external request (the one load the policy refuses, ReDoc's logo, is named). A canary
  shows the same check catches FastAPI's stock CDN page.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
import redis
from browser import APP_HOST, live_server
from conftest import ROOT

VENDOR = ROOT / "service" / "static" / "vendor"
MANIFEST = json.loads((VENDOR / "manifest.json").read_text())
PACKAGES = MANIFEST["packages"]
PAGES = ("/docs", "/redoc")
CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png", ".json": "application/json"}
RENDER_TIMEOUT_MS = 30_000
SCREENSHOTS = Path("/tmp")


def load_vendor_script():
    spec = importlib.util.spec_from_file_location("vendor_frontend", ROOT / "scripts" / "vendor_frontend.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


vendor_frontend = load_vendor_script()


# -- the app ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def app_env() -> Iterator[dict[str, str]]:
    """The app's environment: the configured Redis (the pages never use it: its client connects
    lazily), a namespace and API key of this module's own; keys under the namespace are deleted."""
    from integration.redis_server import configured_url

    namespace = f"crtest-docs-{uuid.uuid4().hex[:12]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAINRULE_") and k != "REDIS_URL"}
    env.update(CHAINRULE_REDIS_URL=configured_url(), CHAINRULE_NAMESPACE=namespace,
               CHAINRULE_QUEUE=f"{namespace}.train", CHAINRULE_API_KEYS=f"docs-{uuid.uuid4().hex}:docs",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    yield env
    client = redis.Redis.from_url(env["CHAINRULE_REDIS_URL"], socket_connect_timeout=2)
    try:
        keys = list(client.scan_iter(match=f"{namespace}:*"))
        if keys:
            client.delete(*keys)
    except (redis.ConnectionError, redis.TimeoutError):
        pass  # no Redis answered, so nothing was written
    finally:
        client.close()


@pytest.fixture(scope="module")
def app_url(app_env):
    with live_server(app_env) as url:
        yield url


@pytest.fixture(scope="module")
def prefixed_app_url(app_env):
    """The app as a reverse proxy that strips ``/api`` reaches it: ``uvicorn --root-path /api``."""
    with live_server(app_env, extra_args=("--root-path", "/api")) as url:
        yield url


def referenced_urls(html: str) -> list[str]:
    """Every URL a docs page makes the browser fetch: src/href attributes, Swagger UI's ``url:``
    and ReDoc's ``spec-url``."""
    urls = re.findall(r"""\b(?:src|href|spec-url)\s*=\s*["']([^"']*)["']""", html)
    urls += re.findall(r"""^\s*url:\s*'([^']*)'""", html, flags=re.M)
    return urls


# -- the vendored files ---------------------------------------------------------------------------
def test_vendored_files_are_the_pinned_versions():
    """SHA256SUMS covers exactly the manifest's files and matches them, each bundle names its
    pinned version, the README table is the manifest's (``vendor_frontend.py --check --offline``)."""
    assert vendor_frontend.local_problems() == []
    # the majors FastAPI's page templates are written for (ReDoc 3 is an ES module)
    assert PACKAGES["swagger-ui-dist"]["version"].startswith("5.")
    assert PACKAGES["redoc"]["version"].startswith("2.")
    for name, entry in PACKAGES.items():
        assert entry["licenses"] and all((VENDOR / name / rel).is_file() for rel in entry["licenses"])
        assert re.fullmatch(r"sha512-[A-Za-z0-9+/]{86}==", entry["integrity"]), name


def test_the_offline_check_catches_a_changed_or_stray_file(tmp_path):
    copy = tmp_path / "vendor"
    shutil.copytree(VENDOR, copy)
    assert vendor_frontend.local_problems(copy) == []
    version = PACKAGES["redoc"]["version"]
    bundle = copy / "redoc" / "bundles" / "redoc.standalone.js"
    bundle.write_bytes(bundle.read_bytes().replace(f'"{version}"'.encode(), b'"0.0.0"'))
    (copy / "swagger-ui-dist" / "extra.js").write_text("//")
    problems = vendor_frontend.local_problems(copy)
    assert "redoc/bundles/redoc.standalone.js does not match its SHA256SUMS entry" in problems
    assert f"redoc/bundles/redoc.standalone.js does not name version {version}" in problems
    assert "not in manifest.json: swagger-ui-dist/extra.js" in problems


def test_the_script_cli_check_offline_passes():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "vendor_frontend.py"), "--check", "--offline"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "swagger-ui-dist@" in result.stdout and "redoc@" in result.stdout


# -- over HTTP --------------------------------------------------------------------------------------
@pytest.mark.parametrize("page", PAGES)
def test_docs_pages_load_only_local_assets(app_url, page):
    resp = httpx.get(app_url + page)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    html = resp.text
    assert not re.findall(r"(?:https?:)?//[\w.-]+", html.replace(app_url, "")), "an absolute URL in the page"
    assert "fonts.googleapis" not in html and "cdn." not in html
    urls = referenced_urls(html)
    assert urls and all(u.startswith("/") and not u.startswith("//") for u in urls), urls
    assets = [u for u in urls if u.startswith("/static/vendor/")]
    assert len(assets) == (3 if page == "/docs" else 2), urls  # js (+ css) + favicon
    assert "/openapi.json" in urls
    for url in urls:
        asset = httpx.get(app_url + url)
        assert asset.status_code == 200, url
        expected = CONTENT_TYPES[Path(url).suffix]
        assert asset.headers["content-type"].split(";")[0] == expected, (url, asset.headers["content-type"])
        if url.startswith("/static/vendor/"):
            assert asset.content == (VENDOR / url.removeprefix("/static/vendor/")).read_bytes(), url


def test_swagger_ui_asks_for_no_online_validator(app_url):
    """Swagger UI's online-validator badge (not in the BaseLayout the page uses) would load an
    image from validator.swagger.io: configured off all the same."""
    html = httpx.get(app_url + "/docs").text
    assert re.search(r'"validatorUrl":\s*null', html), html


@pytest.mark.parametrize("page", (*PAGES, "/docs/oauth2-redirect"))
def test_docs_pages_forbid_other_origins(app_url, page):
    """A Content-Security-Policy: the browser itself refuses anything from another origin."""
    csp = httpx.get(app_url + page).headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'"
    for name, sources in directives.items():
        assert not re.search(r"https?:|\*|'unsafe-eval'", sources), (name, sources)
    assert "'unsafe-inline'" not in directives["script-src"]


def test_oauth2_redirect_page_is_local(app_url):
    resp = httpx.get(app_url + "/docs/oauth2-redirect")
    assert resp.status_code == 200 and "swaggerUIRedirectOauth2" in resp.text
    assert not re.findall(r"\b(?:src|href)\s*=", resp.text)


def test_docs_routes_stay_out_of_the_openapi_document(app_url):
    paths = httpx.get(app_url + "/openapi.json").json()["paths"]
    assert paths and not [p for p in paths if p.startswith(("/docs", "/redoc", "/static"))]


@pytest.mark.parametrize("path", ["/static/vendor/nothing.js", "/static/../app.py", "/static/%2e%2e/app.py",
                                  "/static/vendor/../../app.py", "/static/..%2fapp.py"])
def test_static_files_stay_inside_their_directory(app_url, path):
    """service/app.py is next to service/static: not reachable (the path is sent as is, unnormalised)."""
    parts = urlsplit(app_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    assert resp.status == 404, path
    assert b"create_app" not in body


@pytest.mark.parametrize("page", PAGES)
def test_docs_pages_work_behind_a_path_prefix(prefixed_app_url, page):
    """Behind a proxy serving the app under /api (and stripping it), every URL carries the prefix,
    and what the proxy forwards for it is served."""
    html = httpx.get(prefixed_app_url + page).text
    urls = referenced_urls(html)
    assert urls and all(u.startswith("/api/") for u in urls), urls
    for url in urls:
        assert httpx.get(prefixed_app_url + url.removeprefix("/api")).status_code == 200, url


# -- in Chromium ------------------------------------------------------------------------------------
def local_url(app_url: str, path: str) -> str:
    """The app by the name APP_HOST (mapped to 127.0.0.1 in the browser), not a loopback name."""
    return f"http://{APP_HOST}:{urlsplit(app_url).port}{path}"


def operations(app_url: str) -> dict[tuple[str, str], dict]:
    """(method, path) -> operation, from the app's OpenAPI document."""
    paths = httpx.get(app_url + "/openapi.json").json()["paths"]
    return {(method, path): op for path, ops in paths.items() for method, op in ops.items()}


# ReDoc 2 puts an <img src="https://cdn.redoc.ly/redoc/logo-mini.svg"> in its sidebar; the page's
# Content-Security-Policy refuses it, so the browser never requests it. Nothing else may be refused.
REDOC_LOGO = "img-src https://cdn.redoc.ly/redoc/logo-mini.svg"


def assert_offline(offline_page, refused: tuple[str, ...] = ()) -> None:
    assert offline_page.blocked == [], f"external requests attempted: {offline_page.blocked}"
    assert sorted(set(offline_page.refused)) == sorted(refused), offline_page.refused
    assert offline_page.external_resources_in_dom() == []
    assert offline_page.errors == [], offline_page.errors


def test_swagger_ui_renders_offline(app_url, offline_page):
    page = offline_page.page
    resp = page.goto(local_url(app_url, "/docs"))
    assert resp is not None and resp.status == 200
    jobs_ops = page.locator('.opblock-summary-path[data-path="/v1/jobs"]')
    jobs_ops.first.wait_for(timeout=RENDER_TIMEOUT_MS)
    page.wait_for_load_state("networkidle")
    assert jobs_ops.count() == 2  # GET (list) and POST (submit)
    methods = {m.strip().lower() for m in page.locator(
        '.opblock:has(.opblock-summary-path[data-path="/v1/jobs"]) .opblock-summary-method').all_inner_texts()}
    assert methods == {"get", "post"}
    assert "chainrule" in page.locator(".information-container .title").inner_text()
    assert page.locator(".opblock").count() == len(operations(app_url))
    # the styles applied: Swagger UI's stylesheet colours a POST block's method label
    post_label = page.locator(".opblock-post .opblock-summary-method").first
    assert post_label.evaluate("el => getComputedStyle(el).backgroundColor") == "rgb(73, 204, 144)"
    assert page.evaluate("() => window.versions.swaggerUI.version") == PACKAGES["swagger-ui-dist"]["version"]
    page.screenshot(path=str(SCREENSHOTS / "chainrule-docs-swagger.png"), full_page=False)
    # "Try it out" reaches the app (the page's policy allows its own origin)
    healthz = page.locator('.opblock:has(.opblock-summary-path[data-path="/healthz"])')
    healthz.locator(".opblock-summary").click()
    healthz.get_by_role("button", name="Try it out").click()
    healthz.get_by_role("button", name="Execute").click()
    status = healthz.locator(".live-responses-table tbody .response-col_status").first
    status.wait_for(timeout=RENDER_TIMEOUT_MS)
    assert status.inner_text().strip() == "200"
    body = healthz.locator(".live-responses-table tbody .response-col_description").first
    assert '"status": "ok"' in body.inner_text()
    assert any(u.endswith("/openapi.json") for u in offline_page.requests)
    assert_offline(offline_page)


def test_redoc_renders_offline(app_url, offline_page):
    page = offline_page.page
    resp = page.goto(local_url(app_url, "/redoc"))
    assert resp is not None and resp.status == 200
    title = page.locator("h1", has_text="chainrule")
    title.wait_for(timeout=RENDER_TIMEOUT_MS)
    page.wait_for_load_state("networkidle")
    assert "chainrule" in title.inner_text()
    # every operation rendered, POST /v1/jobs with its summary, method and path
    ops = operations(app_url)
    assert page.locator('[data-section-id^="tag/"][data-section-id*="/operation/"]').count() == len(ops)
    submit = ops[("post", "/v1/jobs")]
    section = page.locator(f'[data-section-id="tag/jobs/operation/{submit["operationId"]}"]')
    section.wait_for(timeout=RENDER_TIMEOUT_MS)
    assert section.locator("h2").inner_text().strip() == submit["summary"]
    endpoint = section.locator(".http-verb").first
    assert endpoint.inner_text().strip().lower() == "post"
    assert "/v1/jobs" in endpoint.locator("xpath=..").inner_text()
    assert page.locator("text=Something went wrong").count() == 0
    assert page.evaluate("() => window.Redoc.version") == PACKAGES["redoc"]["version"]
    page.screenshot(path=str(SCREENSHOTS / "chainrule-docs-redoc.png"), full_page=False)
    assert_offline(offline_page, refused=(REDOC_LOGO,))


def test_the_guard_catches_fastapis_stock_cdn_page(offline_page):
    """The canary: FastAPI's own /docs page (from a CDN) attempts external requests, the guard
    records them, and nothing renders: the checks above can fail."""
    from fastapi.openapi.docs import get_swagger_ui_html

    stock = get_swagger_ui_html(openapi_url="/openapi.json", title="stock").body.decode()
    offline_page.page.set_content(stock, wait_until="load")
    blocked_hosts = {urlsplit(u).hostname for u in offline_page.blocked}
    assert "cdn.jsdelivr.net" in blocked_hosts, offline_page.blocked
    assert offline_page.page.locator(".opblock").count() == 0
    assert offline_page.external_resources_in_dom()


def test_missing_chromium_fails_saying_how_to_install_it(monkeypatch, pytestconfig):
    """Not root (or no apt-get): no install attempt, a failure naming the command instead."""
    import browser as browser_module

    monkeypatch.setattr(browser_module, "find_chromium", lambda: None)
    monkeypatch.setattr(browser_module.os, "geteuid", lambda: 1000)
    ran: list = []
    monkeypatch.setattr(browser_module.subprocess, "run", lambda *args, **kwargs: ran.append(args))
    with pytest.raises(pytest.fail.Exception) as failure:
        browser_module.chromium_executable(pytestconfig)
    assert ran == []
    assert "apt-get install -y --no-install-recommends chromium" in str(failure.value)


# -- packaging ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_wheel_ships_the_vendored_files(tmp_path):
    """``pip wheel`` of a copy of the sources (not in the tree: other builds may share it)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for package in ("graphspec", "runtime", "worker", "service"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                             "--disable-pip-version-check", "-w", str(tmp_path / "wheel"), str(src)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "wheel").glob("chainrule-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        shipped = {n: hashlib.sha256(zf.read(n)).hexdigest() for n in zf.namelist() if n.startswith("service/static/")}
    expected = {f"service/static/vendor/{rel}": digest
                for rel, digest in vendor_frontend.read_sums(VENDOR).items()}
    assert expected.items() <= shipped.items(), sorted(set(expected) - set(shipped))
    assert "service/static/vendor/manifest.json" in shipped
