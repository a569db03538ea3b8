"""The security review (docs/security.md) checked against the code and a running system.

* The limits table and the routes table of docs/security.md are compared with the code
  (``ApiSettings`` and ``graphspec.Limits`` defaults, the app's OpenAPI operations), so the
  document cannot drift; every ``ApiSettings.max_*`` field must be documented.
* API keys never reach the logs: a real ``chainrule api`` process (at uvicorn's most verbose
  level) gets authenticated, wrongly authenticated and failing requests and trains a job on
  the session's worker; no key appears in its output nor in the worker's log.
* Tenant isolation of the job listing and of idempotency keys (what test_api.py's
  test_tenant_isolation does not cover).
* ``chainrule serve`` never exposes an unauthenticated API beyond loopback by default.
* Nothing in the packages can unpickle.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import uuid

import httpx
import pytest

import graphspec
from service.settings import ApiSettings, key_digest

from .conftest import API_KEYS, EXAMPLES, ROOT, stop_process, wait_for
from .redis_server import free_port

pytestmark = pytest.mark.integration

SECURITY_DOC = ROOT / "docs" / "security.md"
SEED_DOC = json.loads((EXAMPLES / "logistic_regression.json").read_text())
SEED_DATA = json.loads((EXAMPLES / "data" / "seed_data.json").read_text())
TERMINAL = {"succeeded", "failed", "cancelled"}


def job_body(**overrides) -> dict:
    body = {"graph": SEED_DOC, "data": SEED_DATA, "optimizer": {"name": "sgd", "lr": 0.5}, "steps": 5,
            "batch_size": 16, "report_every": 5}
    body.update(overrides)
    return body


# -- the document's tables -----------------------------------------------------------------
def section(title: str) -> str:
    """The text of the '## title' section of docs/security.md."""
    text = SECURITY_DOC.read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert match, f"docs/security.md has no '## {title}' section"
    return match.group(1)


def table_rows(text: str, first_header: str) -> list[list[str]]:
    """The body rows (cells stripped) of the markdown table whose first header cell is ``first_header``."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_header:
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                rows.append([c.strip() for c in row.strip().strip("|").split("|")])
            return rows
    raise AssertionError(f"no table with a '{first_header}' column in the section")


def documented_limits() -> dict[str, tuple[int, str, list[str]]]:
    """name -> (documented default, environment variable or '', the row) from the limits table."""
    out = {}
    for row in table_rows(section("Limits"), "limit"):
        assert len(row) == 5, f"a limits row needs 5 cells: {row}"
        names = re.findall(r"`([^`]+)`", row[1])
        assert names, f"no setting named in {row}"
        default = re.match(r"(\d+)\b|unset\b", row[2])
        assert default, f"the default of {names[0]} must start with an integer or 'unset': {row[2]!r}"
        assert names[0] not in out, f"{names[0]} is documented twice"
        out[names[0]] = (None if default.group(1) is None else int(default.group(1)),
                         names[1] if len(names) > 1 else "", row)
    return out


def test_limits_table_matches_settings_and_graphspec_limits():
    documented = documented_limits()
    fields = ApiSettings.model_fields
    loader = graphspec.Limits()
    for name, (default, env_var, row) in documented.items():
        if name.startswith("Limits."):
            attr = name.removeprefix("Limits.")
            assert hasattr(loader, attr), f"graphspec.Limits has no field {attr!r} (documented: {row})"
            assert getattr(loader, attr) == default, f"{name}: documented {default}, code {getattr(loader, attr)}"
        else:
            assert name in fields, f"{name!r} in docs/security.md is not an ApiSettings field"
            actual = fields[name].default
            assert actual == default, f"{name}: documented default {default}, ApiSettings has {actual}"
            assert env_var == f"CHAINRULE_{name.upper()}", f"{name}: documented variable {env_var!r}"
    # Every limit of the code is in the table.
    missing = sorted(f for f in fields if f.startswith("max_") and f not in documented)
    assert not missing, f"ApiSettings limits missing from the docs/security.md limits table: {missing}"
    missing = sorted(f"Limits.{f}" for f in graphspec.Limits.__dataclass_fields__
                     if f"Limits.{f}" not in documented)
    assert not missing, f"graphspec.Limits fields missing from the limits table: {missing}"


def test_documented_environment_variables_are_the_ones_read(monkeypatch):
    """Each documented CHAINRULE_ variable really sets its limit (not silently ignored)."""
    given = {name: (default or 10**9) + 1 for name, (default, _, _) in documented_limits().items()
             if not name.startswith("Limits.")}  # an unset default: any number
    for name, value in given.items():
        monkeypatch.setenv(documented_limits()[name][1], str(value))
    monkeypatch.setenv("CHAINRULE_VISIBILITY_TIMEOUT_S", str(10**10))  # keeps the time-limit check satisfied
    settings = ApiSettings()
    for name, value in given.items():
        assert getattr(settings, name) == value, name


def test_request_body_depth_in_the_doc_is_the_code():
    from service.limits import body_limits, graph_limits

    defaults = ApiSettings.model_construct()
    graph_depth, body_depth = graph_limits(defaults).max_depth, body_limits(defaults).max_depth
    row = documented_limits()["Limits.max_depth"][2]
    assert graph_depth == graphspec.Limits().max_depth
    assert f"{graph_depth} + {body_depth - graph_depth} = {body_depth}" in row[4], row


def test_routes_table_lists_every_route(settings):
    from service.app import create_app

    from starlette.routing import Mount

    app = create_app(settings)
    openapi = app.openapi()
    operations = {f"{method.upper()} {path}" for path, ops in openapi["paths"].items() for method in ops}
    documented = set()
    for row in table_rows(section("Tenant isolation"), "route"):
        documented.update(re.findall(r"`((?:GET|POST|PUT|PATCH|DELETE) /[^`]*)`", row[0]))
    # routes outside the OpenAPI document (its own page, the API reference pages, static files)
    hidden = {f"GET {r.path}/..." if isinstance(r, Mount) else f"GET {r.path}"
              for r in app.routes if not getattr(r, "include_in_schema", True) or isinstance(r, Mount)}
    assert operations - documented == set(), "routes missing from docs/security.md"
    assert hidden - documented == set(), "routes outside the OpenAPI document missing from docs/security.md"
    assert documented - operations - hidden == set(), "docs/security.md lists routes that do not exist"


def _concrete(path: str) -> str:
    return path.replace("{job_id}", "job_" + "0" * 32).replace("{graph_id}", "sha256:" + "0" * 64)


def test_every_v1_route_requires_a_key(api, settings):
    """Every documented /v1 operation (from the OpenAPI document, so a new route is covered)
    answers 401 without a key and with a wrong one, before looking at the request."""
    from service.app import create_app

    openapi = create_app(settings).openapi()
    checked = 0
    for path, ops in openapi["paths"].items():
        for method in ops:
            url = _concrete(path)
            for headers in ({}, {"Authorization": f"Bearer wrong-{uuid.uuid4().hex}"}):
                resp = api.request(method.upper(), url, tenant=None, headers=headers,
                                   json={} if method == "post" else None)
                if path.startswith("/v1/"):
                    assert resp.status_code == 401, (method, path, resp.status_code, resp.text[:300])
                    assert resp.headers.get("www-authenticate") == "Bearer"
                    checked += 1
                else:
                    assert path in ("/healthz", "/readyz"), f"{path} is neither /v1 nor a probe"
    assert checked >= 2 * 11


# -- API keys never reach the logs ---------------------------------------------------------
@pytest.mark.parametrize("log_format", ["console", "json"])
def test_api_keys_never_reach_the_logs(env, settings, celery_worker, tmp_path, log_format):
    marker = uuid.uuid4().hex
    good = f"sk-good-{marker}"          # tenant-a
    other = f"sk-other-{marker}"        # tenant-b
    wrong = f"sk-wrong-{marker}"        # not configured
    secrets = [good, other, wrong]

    api_env = dict(env)
    api_env["CHAINRULE_API_KEYS"] = f"{good}:tenant-a,{other}:tenant-b"
    port = free_port()
    out_path, err_path = tmp_path / "api.out", tmp_path / "api.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        # The production command, at uvicorn's most verbose level.
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", "api", "--host", "127.0.0.1", "--port",
                                 str(port), "--log-level", "trace", "--log-format", log_format], cwd=ROOT, env=api_env,
                                stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err, start_new_session=True)

    def logs() -> str:
        return out_path.read_text(errors="replace") + err_path.read_text(errors="replace")

    responses = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30.0, trust_env=False) as client:
            def up():
                assert proc.poll() is None, f"the API exited with {proc.returncode}:\n{logs()}"
                try:
                    return client.get("/healthz").status_code == 200
                except httpx.TransportError:
                    return False

            wait_for(up, timeout=30, interval=0.1, message="the API to answer /healthz")

            def call(method, url, key=None, scheme="Bearer", expect=None, **kwargs):
                headers = dict(kwargs.pop("headers", {}))
                if key is not None:
                    headers["Authorization"] = f"{scheme} {key}"
                resp = client.request(method, url, headers=headers, **kwargs)
                responses.append(resp)
                if expect is not None:
                    statuses = (expect,) if isinstance(expect, int) else expect
                    assert resp.status_code in statuses, (method, url, resp.status_code, resp.text[:500])
                return resp

            # Authenticated: store a graph, train a job through the session's worker, read it all.
            graph_id = call("POST", "/v1/graphs", good, json=SEED_DOC, expect=201).json()["id"]
            job = call("POST", "/v1/jobs", good, json=job_body(graph=None, graph_id=graph_id),
                       headers={"Idempotency-Key": f"idem-{marker}"}, expect=202).json()

            def finished():
                state = call("GET", f"/v1/jobs/{job['id']}", good, expect=200).json()
                return state if state["state"] in TERMINAL else None

            done = wait_for(finished, timeout=30, interval=0.1, message=f"job {job['id']} to finish")
            assert done["state"] == "succeeded", done
            assert done["worker"] == celery_worker.hostname  # the worker whose log is checked below
            call("GET", f"/v1/jobs/{job['id']}/steps", good, expect=200)
            call("GET", f"/v1/jobs/{job['id']}/events", good, expect=200)
            call("GET", f"/v1/jobs/{job['id']}/result", good, expect=200)
            call("GET", "/v1/jobs", good, expect=200, params={"limit": 5})

            # Wrongly authenticated: an unknown key, a valid key with another scheme or mangled,
            # tenant-b's key (valid) on tenant-a's job.
            for key, scheme in ((wrong, "Bearer"), (good, "Basic"), (good, "Token"), (good + "x", "Bearer"),
                                (good.upper(), "Bearer")):
                resp = call("GET", "/v1/jobs", key, scheme=scheme, expect=401)
                assert not any(s in resp.text for s in secrets + [good + "x", good.upper()])
            call("POST", "/v1/jobs", wrong, json=job_body(), expect=401)
            call("GET", f"/v1/jobs/{job['id']}", other, expect=404)
            call("GET", f"/v1/jobs/{job['id']}/result", other, expect=404)

            # Failing requests, authenticated.
            call("GET", "/v1/jobs/job_" + "0" * 32, good, expect=404)
            call("GET", "/v1/graphs/sha256:" + "0" * 64, good, expect=404)
            call("POST", "/v1/jobs", good, json=job_body(steps=0), expect=422)
            call("POST", "/v1/graphs", good, json={"nodes": "nope"}, expect=422)
            call("POST", "/v1/jobs", good, content=b"{not json", headers={"Content-Type": "application/json"},
                 expect=400)
            call("POST", "/v1/jobs", good, content=b"x" * (settings.max_body_bytes + 1),  # Content-Length
                 headers={"Content-Type": "application/json"}, expect=413)

            def chunks():
                for _ in range(settings.max_body_bytes // 65536 + 2):
                    yield b" " * 65536

            call("POST", "/v1/graphs", good, content=chunks(), headers={"Content-Type": "application/json"},
                 expect=413)
            # A job id with a key suffix must not reach the job's other keys (it once answered 500).
            call("GET", f"/v1/jobs/{job['id']}:data", good, expect=404)
    finally:
        stop_process(proc)

    text = logs()
    if log_format == "json":  # every line is one JSON object; the checks below read their events
        lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        assert lines and all({"time", "level", "logger", "event"} <= set(line) for line in lines)
        text = text + "\n" + "\n".join(f'{line["level"].upper()} {line["event"]}' for line in lines)
    # The capture works: the access log has the requests, including the refused ones.
    assert '"GET /v1/jobs HTTP/1.1" 401' in text, text[-3000:]
    assert '"POST /v1/jobs HTTP/1.1" 413' in text, text[-3000:]
    assert "TRACE" in text  # the most verbose level really was on
    for secret in secrets:
        assert secret not in text, f"an API key reached the API's log:\n{text[-3000:]}"
        assert marker not in text.replace(f"idem-{marker}", ""), "part of a key reached the API's log"
    for resp in responses:
        assert not any(s in resp.text for s in secrets), (resp.request.url, resp.text[:300])

    # The worker trained the job: its log has neither these keys nor the keys of its own environment.
    worker_log = celery_worker.log()
    assert re.search(r"Task chainrule\.train\[[^\]]+\] received", worker_log), worker_log[-2000:]
    for secret in secrets + list(API_KEYS.values()) + [env["CHAINRULE_API_KEYS"]]:
        assert secret not in worker_log, f"an API key reached the worker's log: {secret}"


# -- tenant isolation: listing and idempotency keys ------------------------------------------
def _wait_all(api, jobs: dict[str, str]) -> None:
    """Wait until every job (id -> tenant) has finished."""
    def done():
        return all(api.get(f"/v1/jobs/{j}", tenant=t).json()["state"] in TERMINAL for j, t in jobs.items())

    wait_for(done, timeout=60, interval=0.05, message="the jobs to finish")


def _list_all(api, tenant: str, **params) -> list[dict]:
    """Every job a tenant's listing shows, following cursors."""
    out, cursor = [], None
    while True:
        query = dict(params, limit=2, **({"cursor": cursor} if cursor else {}))
        resp = api.get("/v1/jobs", params=query, tenant=tenant)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        out.extend(page["jobs"])
        cursor = page["next_cursor"]
        if cursor is None:
            return out


def test_listing_never_shows_another_tenants_jobs(api):
    a_jobs = [api.post("/v1/jobs", json=job_body(seed=i), tenant="tenant-a").json()["id"] for i in range(3)]
    b_jobs = [api.post("/v1/jobs", json=job_body(seed=10), tenant="tenant-b").json()["id"]]
    cancelled = api.post("/v1/jobs", json=job_body(steps=100_000, report_every=1000), tenant="tenant-a").json()["id"]
    assert api.post(f"/v1/jobs/{cancelled}/cancel", tenant="tenant-a").status_code == 202
    a_jobs.append(cancelled)
    _wait_all(api, {**{j: "tenant-a" for j in a_jobs}, **{j: "tenant-b" for j in b_jobs}})
    assert api.get(f"/v1/jobs/{cancelled}", tenant="tenant-a").json()["state"] == "cancelled"

    a_listed = {j["id"] for j in _list_all(api, "tenant-a")}
    b_listed = {j["id"] for j in _list_all(api, "tenant-b")}
    assert set(a_jobs) <= a_listed and set(b_jobs) <= b_listed
    assert not a_listed & b_listed, "a job is listed for both tenants"
    for state in ("succeeded", "cancelled", "queued", "running", "failed"):
        b_state = {j["id"] for j in _list_all(api, "tenant-b", state=state)}
        assert not b_state & set(a_jobs), state
        assert not {j["id"] for j in _list_all(api, "tenant-a", state=state)} & set(b_jobs), state
    # A cursor from tenant-a's listing does not open tenant-a's jobs to tenant-b.
    page = api.get("/v1/jobs", params={"limit": 1}, tenant="tenant-a").json()
    assert page["next_cursor"] is not None
    resp = api.get("/v1/jobs", params={"limit": 1000, "cursor": page["next_cursor"]}, tenant="tenant-b")
    assert resp.status_code == 200 and not {j["id"] for j in resp.json()["jobs"]} & set(a_jobs)


def test_idempotency_keys_are_per_tenant(api, store, settings):
    key = f"shared-{uuid.uuid4().hex}"
    first = api.post("/v1/jobs", json=job_body(steps=5), headers={"Idempotency-Key": key}, tenant="tenant-a")
    assert first.status_code == 202, first.text
    a_job = first.json()["id"]

    # tenant-b, same key, a different body: a new job. Were keys global, this would be a 422
    # naming tenant-a's job id (idempotency-key-reused).
    other = api.post("/v1/jobs", json=job_body(steps=7), headers={"Idempotency-Key": key}, tenant="tenant-b")
    assert other.status_code == 202, other.text
    b_job = other.json()["id"]
    assert b_job != a_job and a_job not in other.text
    # tenant-b replaying its own request gets its own job back; tenant-a's is untouched.
    again = api.post("/v1/jobs", json=job_body(steps=7), headers={"Idempotency-Key": key}, tenant="tenant-b")
    assert again.status_code == 200 and again.json()["id"] == b_job and a_job not in again.text
    replay = api.post("/v1/jobs", json=job_body(steps=5), headers={"Idempotency-Key": key}, tenant="tenant-a")
    assert replay.status_code == 200 and replay.json()["id"] == a_job
    # tenant-b's request that differs from its own first one is refused naming ITS job only.
    reused = api.post("/v1/jobs", json=job_body(steps=5), headers={"Idempotency-Key": key}, tenant="tenant-b")
    assert reused.status_code == 422 and reused.json()["job_id"] == b_job and a_job not in reused.text

    # In Redis: one key per tenant, each naming its tenant's job.
    for tenant, job_id in (("tenant-a", a_job), ("tenant-b", b_job)):
        value = store._r.get(f"{settings.namespace}:tenant:{tenant}:idem:{key}")
        assert value is not None and job_id in value.decode()
        assert store.get_job(job_id).tenant == tenant
    _wait_all(api, {a_job: "tenant-a", b_job: "tenant-b"})


# -- chainrule serve: no unauthenticated API beyond loopback ---------------------------------
@pytest.mark.parametrize("host", ["0.0.0.0", "", "10.0.0.5", "::"])
def test_serve_refuses_to_expose_an_unauthenticated_api(host, monkeypatch, capsys):
    from service.cli import children, main, stack
    from service.cli.access import auth_exposure_problem

    def configured(**values) -> ApiSettings:  # these values, the defaults for the rest
        return ApiSettings.model_construct(**values)

    assert auth_exposure_problem(host, configured()) is not None
    assert auth_exposure_problem(host, configured(api_keys="  ")) is not None
    assert auth_exposure_problem(host, configured(api_keys="k:t")) is None
    assert auth_exposure_problem(host, configured(auth_disabled=True)) is None  # explicit
    for loopback in ("127.0.0.1", "localhost", "::1"):
        assert auth_exposure_problem(loopback, configured()) is None  # local development, as before

    # The whole command: refused before anything is started.
    for name in ("CHAINRULE_API_KEYS", "CHAINRULE_AUTH_DISABLED"):
        monkeypatch.delenv(name, raising=False)

    def no_child(*args, **kwargs):
        raise AssertionError(f"serve started a process: {args}")

    monkeypatch.setattr(children.subprocess, "Popen", no_child)
    monkeypatch.setattr(stack.tempfile, "mkdtemp", lambda *a, **k: pytest.fail("serve created its directory"))
    assert main(["serve", "--host", host, "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert "refusing to serve without authentication" in err and "CHAINRULE_API_KEYS" in err


# -- serialization: nothing can unpickle -------------------------------------------------------
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "cloudpickle", "dill", "joblib", "yaml"}


def test_no_pickle_anywhere_in_the_packages():
    problems = []
    for package in ("graphspec", "runtime", "worker", "service"):
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            where = path.relative_to(ROOT)
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [a.name.split(".")[0] for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = [(node.module or "").split(".")[0]]
                else:
                    names = []
                problems += [f"{where}:{node.lineno} imports {n}" for n in names if n in UNSAFE_MODULES]
                # numpy.load must never be allowed to unpickle.
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                        and isinstance(node.func.value, ast.Name) and node.func.value.id in ("np", "numpy"):
                    flags = {k.arg: k.value for k in node.keywords}
                    if not (isinstance(flags.get("allow_pickle"), ast.Constant)
                            and flags["allow_pickle"].value is False):
                        problems.append(f"{where}:{node.lineno} calls numpy.load without allow_pickle=False")
    assert not problems, problems


def test_celery_accepts_json_only(celery_app):
    conf = celery_app.conf
    assert list(conf.accept_content) == ["json"]
    assert conf.task_serializer == conf.result_serializer == conf.event_serializer == "json"


@pytest.mark.parametrize("suffix", [":data", ":checkpoint", ":result", ":steps", ":lease", "x", ""])
def test_a_job_id_with_a_key_suffix_is_a_plain_404(api, suffix):
    """Only ids of the form job_<32 hex> reach Redis: "job_x:data" must not read job_x's data key
    (WRONGTYPE, a 500 and a traceback) nor tell another tenant's existing job from a missing one."""
    job = api.post("/v1/jobs", json=job_body()).json()
    for tenant in ("tenant-a", "tenant-b"):
        for method, path in (("GET", ""), ("GET", "/steps"), ("GET", "/result"), ("POST", "/cancel")):
            resp = api.request(method, f"/v1/jobs/{job['id']}{suffix}{path}", tenant=tenant)
            if suffix == "" and tenant == "tenant-a":
                continue
            assert resp.status_code == 404, (tenant, method, path, resp.status_code, resp.text[:300])


def test_tenant_names_that_could_alias_redis_keys_are_refused():
    with pytest.raises(ValueError, match="tenant name"):
        ApiSettings(api_keys="key-1:team:a")
    with pytest.raises(ValueError, match="tenant name"):
        ApiSettings(api_keys="key-1:a b")
    assert ApiSettings(api_keys="key-1:team-a,key-2:team_b.eu").tenants_by_key() == {
        key_digest("key-1"): "team-a", key_digest("key-2"): "team_b.eu"}  # plain keys are compared as digests


def test_api_keys_can_be_stored_as_their_sha256_and_plain_ones_are_warned_about(settings, celery_worker, caplog):
    """Keys at rest (issue #19): CHAINRULE_API_KEYS may hold sha256:<digest>:tenant, so the key itself is
    nowhere in the configuration; the key still authenticates, a wrong one does not, and a deployment
    that still lists plain keys is told at startup."""
    import logging
    import subprocess

    from service.app import create_app

    from .conftest import starlette_test_client

    key = f"sk-{uuid.uuid4().hex}"
    printed = subprocess.run([sys.executable, "-m", "service.cli", "hash-key"], input=key + "\n", capture_output=True,
                             text=True, cwd=ROOT, timeout=60)
    assert printed.returncode == 0 and printed.stdout.strip() == f"sha256:{key_digest(key)}"
    hashed = settings.model_copy(update={"api_keys": f"{printed.stdout.strip()}:tenant-a,plain-key:tenant-b"})
    assert hashed.tenants_by_key()[key_digest(key)] == "tenant-a" and hashed.plain_keys() == 1
    with caplog.at_level(logging.WARNING, logger="service"):
        app = create_app(hashed)
    assert "holds 1 plain API key" in caplog.text and key not in caplog.text and "plain-key" not in caplog.text
    with starlette_test_client()(app) as client:
        assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {key_digest(key)}"}).status_code == 401
        assert client.get("/v1/jobs", headers={"Authorization": "Bearer plain-key"}).status_code == 200
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="service"):
        create_app(settings.model_copy(update={"api_keys": f"sha256:{key_digest(key)}:tenant-a"}))
    assert "plain API key" not in caplog.text
