"""Smoke tests of every script in bench/: each runs as a user would run it (``python bench/X.py``)
at its smallest size, exits 0 and prints/writes its figures as finite numbers.

No timing assertions: timing lives in bench/, never in the suite. A script added to bench/
without an entry in SMOKE fails ``test_every_bench_script_has_a_smoke_test``, so none can rot
unnoticed (reporting_overhead.py crashed after the lease-fencing change while bench/README.md
quoted its figures).

Scripts that need Redis get a real one (the configured one, else a private redis-server,
as the integration tests do); they work in a namespace of their own and delete only its
keys. chaos.py and service_bench.py start real worker (and API) processes themselves.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
TIMEOUT_S = 120  # a smoke run takes seconds; this only bounds a hung one


def finite_positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


# -- the checks, one per script -----------------------------------------------------------------
def check_reporting_overhead(report: dict, stdout: str, stderr: str) -> None:
    assert set(report["workloads"]) == {"seed logreg B=16", "small MLP B=32"}
    for name, rows in report["workloads"].items():
        assert set(rows) == {"bare trainer", "report every 10", "report every 1", "every 1, full grads",
                             "every 1, worker metrics"}, name
        for variant, row in rows.items():
            assert finite_positive(row["median_us"]) and finite_positive(row["ratio"]), (name, variant, row)
            assert len(row["runs_us"]) == report["rounds"]
        assert rows["bare trainer"]["ratio"] == 1.0
        assert f"{name}: {report['steps']} steps" in stdout
    assert stdout.count("us/step") == 10


def check_service_bench(report: dict, stdout: str, stderr: str) -> None:
    # the four figures of issue #19 item 6, each with its goal and a verdict (figures, not assertions)
    submissions = report["submissions"]
    assert report["latency_ms"].keys() == {"events", "poll"}  # the goal's way of watching, and polling
    for latency in report["latency_ms"].values():
        assert latency["jobs"] == 3 and len(latency["all"]) == 3
        assert all(finite_positive(v) for v in (latency["p50"], latency["p90"], *latency["all"]))
        assert latency["parts_p50"].keys() == {"post", "created_to_started", "started_to_first_step",
                                               "first_step_to_visible"}
        assert all(math.isfinite(v) for v in latency["parts_p50"].values())
    latency = report["latency_ms"]["events"]
    assert submissions["count"] == 20
    assert finite_positive(submissions["per_s"]) and finite_positive(submissions["ms_per_post"])
    throughput = report["throughput"]
    assert throughput["jobs"] == 10
    assert all(finite_positive(throughput[k]) for k in ("jobs_per_s", "elapsed_s", "submitted_per_s"))
    assert finite_positive(throughput["run_ms"]["median"])
    overhead = report["reporting_overhead"]
    assert overhead["workload"] == "W2 MLP B=128" and overhead["rounds"] == 2
    assert finite_positive(overhead["bare_us"]) and finite_positive(overhead["reporting_us"])
    assert math.isfinite(overhead["overhead"])
    for part in (latency, submissions, throughput, overhead):
        assert isinstance(part["met"], bool)
    assert report["api_processes"] == 2 and report["worker_processes"] == 2
    for line in ("d. submit -> first step visible, watching its event stream: p50",
                 "d. submit -> first step visible, polling GET /steps every 2 ms: p50", "b. 10 jobs", "jobs/s end to end",
                 "a. submissions:", "c. reporting every step"):
        assert line in stdout, line


def check_chaos(report: dict, stdout: str, stderr: str) -> None:
    # exit status 0 already says nothing was lost or differs; the figures must be there too
    assert report["jobs"] == 4 and report["completed"] == 4
    assert report["lost"] == report["bad_steps"] == report["bad_params"] == 0
    assert sum(report["kills"].values()) >= 1, "the smoke run killed no worker"
    assert finite_positive(report["elapsed_s"])
    assert "completed 4, lost 0, with missing or duplicated steps 0" in stdout


def check_step_bench(report: dict, stdout: str, stderr: str) -> None:
    expected = {"chainrule", "controls", "interp", "hand"} | ({"torch"} if torch_available() else set())
    if not torch_available():  # the bench extra is optional: the torch column is skipped, and said so
        assert "torch is not installed" in stderr
    for wl in ("W1_b1", "W5_cnn"):
        cells = report["results"][wl]
        assert set(cells) == expected, wl
        for impl, cell in cells.items():
            assert finite_positive(cell["median_us"]) and finite_positive(cell["ratio_vs_hand"]), (wl, impl, cell)
            if torch_available():  # every cell's ratio to torch, measured in the same run
                assert finite_positive(cell["ratio_vs_torch"]), (wl, impl, cell)
            if impl != "hand":  # the reference the others' gradients are checked against
                assert report["grad_check"][wl][impl]["ok"] is True, (wl, impl, report["grad_check"])
        assert finite_positive(report["setup"][wl]["chainrule"]["compile_ms"])
        assert finite_positive(report["memory"][wl]["chainrule"]["peak_bytes"])
        verdict = report["verdicts"][wl]  # chainrule's ratio to the target's reference, when that ran
        if verdict["vs"] in cells:
            assert finite_positive(verdict["ratio"]) and verdict["met"] == (verdict["ratio"] <= verdict["target"])
        else:
            assert verdict["ratio"] is None and verdict["met"] is None
        assert f"| {wl} |" in stdout
    assert report["verdicts"]["W5_cnn"]["vs"] == "torch"


def check_soak(report: dict, stdout: str, stderr: str) -> None:
    assert report["clean"] is True, report
    assert report["accepted"] == report["succeeded"] == report["jobs"] > 0
    assert report["lost"] == report["bad_steps"] == report["duplicates"] == 0
    assert report["back_to_baseline"] is True, report["memory"]
    assert "lost 0" in stdout and "back to the baseline" in stdout


def check_http_ceiling(report: dict, stdout: str, stderr: str) -> None:
    assert set(report["variants"]) == {"starlette", "fastapi_async", "fastapi"}
    for variant, row in report["variants"].items():
        assert row["count"] == report["submissions"] == 40, variant
        assert finite_positive(row["per_s"]) and finite_positive(row["server_cpu_ms_per_post"]), (variant, row)
        assert isinstance(row["met"], bool)
        assert stdout.count(f"{variant} ") >= 1
    assert "submissions/s" in stdout


# script -> (arguments of its smallest run, needs Redis, the check of its --json report)
SMOKE: dict[str, tuple[list[str], bool, Callable[[dict, str, str], None]]] = {
    "reporting_overhead.py": (["--quick"], True, check_reporting_overhead),
    "service_bench.py": (["--quick"], True, check_service_bench),
    "chaos.py": (["--quick"], True, check_chaos),
    "soak.py": (["--quick"], True, check_soak),
    "http_ceiling.py": (["--quick"], False, check_http_ceiling),
    # every implementation, torch included: without the bench extra it must skip that column
    # (tests/test_step_bench.py runs it with an explicit implementation list)
    "step_bench.py": (["--quick", "--workloads", "W1_b1,W5_cnn"], False, check_step_bench),
}


def test_every_bench_script_has_a_smoke_test():
    scripts = sorted(path.name for path in BENCH.glob("*.py"))
    assert scripts, "no scripts found in bench/"
    assert scripts == sorted(SMOKE), ("every bench/*.py needs an entry in SMOKE (tests/test_bench_scripts.py); "
                                      f"missing: {sorted(set(scripts) - set(SMOKE))}, "
                                      f"stale: {sorted(set(SMOKE) - set(scripts))}")


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """The configured Redis (default 127.0.0.1:6379) when it answers, else a private redis-server."""
    from integration.redis_server import answering_redis

    with answering_redis() as url:
        yield url


def run_script(script: str, args: list[str]) -> subprocess.CompletedProcess:
    """``python bench/<script> <args>`` with a clean configuration; a hung run is stopped with
    SIGTERM first, so the script stops the workers it started and deletes its keys."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAINRULE_") and k != "REDIS_URL"}
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen([sys.executable, str(BENCH / script), *args], cwd=ROOT, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            stdout, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        pytest.fail(f"bench/{script} did not finish within {TIMEOUT_S} s\nstdout:\n{stdout[-3000:]}\n"
                    f"stderr:\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.parametrize("script", sorted(SMOKE))
def test_bench_script_smoke(script, request, tmp_path):
    args, needs_redis, check = SMOKE[script]
    out = tmp_path / "report.json"
    args = [*args, "--json", str(out)]
    if needs_redis:
        args += ["--redis-url", request.getfixturevalue("redis_url")]
    proc = run_script(script, args)
    assert proc.returncode == 0, f"bench/{script} exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\n" \
                                 f"stderr:\n{proc.stderr[-5000:]}"
    check(json.loads(out.read_text()), proc.stdout, proc.stderr)
