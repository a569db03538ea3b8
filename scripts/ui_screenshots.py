#!/usr/bin/env python3
"""The screenshots of docs/ui.md, from a real run: the walk-through a new user takes.

    python -m pip install -e ".[test]"          # Playwright for Python (the browser is Debian's chromium)
    python scripts/ui_screenshots.py --out docs/ui

It starts `chainrule serve` (embedded Redis, a real worker, the API; auth off, as on your own
machine), then drives the dashboard in headless Chromium: submits the seed graph through the
Submit page, watches the job's page, trains a second run (lr 0.1, through the API) and compares
the two, and explains the sigmoid built from primitives on the Graph page. Each step is one PNG
in --out; the console of every page must stay clean, or the script fails.
tests/integration/test_ui_screenshots.py runs it, so it cannot rot.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
SEED_GRAPH = EXAMPLES / "logistic_regression.json"
SEED_DATA = EXAMPLES / "data" / "seed_data.json"
SIGMOID = EXAMPLES / "sigmoid_primitives.json"

# name -> what docs/ui.md says under it (the order is the walk-through's)
SHOTS = {
    "1-submit": "Submit: the seed graph and its data dropped in, options from the API's schema, "
                "checked by a dry run before submitting",
    "2-job": "Job: the loss falling (raw, smoothed) and the gradient norms, live over the event stream",
    "3-jobs": "Jobs: live states, progress, losses and a sparkline per job; select two to compare",
    "4-compare": "Compare: the two runs' curves by step and their settings, the difference highlighted",
    "5-graph": "Graph: the sigmoid built from ×−1, exp, +1, 1/x with every node's value (=) and "
               "gradient d(loss)/d(node) (∂) from one explain call",
    "6-job-dark": "The job page in the dark theme",
    "7-jobs-narrow": "The jobs page at 390 px",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def stack() -> Iterator[str]:
    """`chainrule serve` on a free port, as a user starts it; yields the API's URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAINRULE_") and k != "REDIS_URL"}
    workdir = Path(tempfile.mkdtemp(prefix="chainrule-shots-"))
    log = workdir / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port)], cwd=ROOT,
                                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"chainrule serve exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"chainrule serve was not ready within 90 s:\n{log.read_text()}")
            time.sleep(0.3)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def wait_job(api: httpx.Client, job_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = api.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        if time.monotonic() > deadline:
            raise SystemExit(f"job {job_id} still {job['state']} after {timeout} s")
        time.sleep(0.2)


def take(out: Path, chromium: str) -> list[Path]:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    problems: list[str] = []
    with stack() as url, httpx.Client(base_url=url, timeout=30) as api, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1280, "height": 900}, color_scheme="light")
        page = context.new_page()
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))

        def shot(name: str, full_page: bool = True) -> None:
            page.wait_for_timeout(400)  # let the charts' last frame land
            path = out / f"{name}.png"
            page.screenshot(path=str(path), full_page=full_page)
            written.append(path)

        # 1. Submit the seed graph through the Submit page
        page.goto(f"{url}/ui/#/submit")
        page.set_input_files("#sp-file-graph", str(SEED_GRAPH))
        page.wait_for_selector("#sp-zone-graph.sp-filled")
        page.set_input_files("#sp-file-data", str(SEED_DATA))
        page.wait_for_selector("#sp-zone-data.sp-filled")
        for field, value in (("steps", "300"), ("optimizer.lr", "0.5"), ("batch_size", "16")):
            page.fill(f"[name='{field}']", value)
        page.wait_for_selector("#sp-form[data-checked='ok']")
        shot("1-submit")
        page.click("#sp-submit")
        page.wait_for_selector("main .page-job")
        first = page.url.rsplit("/", 1)[-1]

        # 2. Its page, once it has trained
        wait_job(api, first)
        page.reload()
        page.wait_for_selector("#loss-chart canvas")
        shot("2-job")

        # 3-4. A second run at another learning rate, the jobs list, the comparison
        body = {"graph": json.loads(SEED_GRAPH.read_text()), "data": json.loads(SEED_DATA.read_text()),
                "optimizer": {"name": "sgd", "lr": 0.1}, "steps": 300, "batch_size": 16}
        second = api.post("/v1/jobs", json=body).json()["id"]
        wait_job(api, second)
        page.goto(f"{url}/ui/#/jobs")
        page.wait_for_selector(".jobs-table tbody tr svg.sparkline polyline")
        shot("3-jobs")
        page.goto(f"{url}/ui/#/compare?ids={first},{second}")
        page.wait_for_selector("#compare-table")
        page.wait_for_selector(".page-compare canvas")
        shot("4-compare")

        # 5. The sigmoid built from primitives, explained node by node
        graph_id = api.post("/v1/graphs", content=SIGMOID.read_bytes(),
                            headers={"Content-Type": "application/json"}).json()["id"]
        example = json.loads((EXAMPLES / "data" / "seed_one_example.json").read_text())
        params = json.loads((EXAMPLES / "data" / "seed_params.json").read_text())
        page.goto(f"{url}/ui/#/graphs/{graph_id}")
        page.wait_for_selector("svg.gv")
        for name, tensor in example.items():
            page.fill(f"[data-field='input:{name}']", json.dumps(tensor["data"]))
        page.select_option("#gp-param-mode", "typed")
        for name, tensor in params.items():
            page.fill(f"[data-field='param:{name}']", json.dumps(tensor["data"]))
        page.click("#gp-explain")
        page.wait_for_selector(".page-graph[data-explained='yes']")
        shot("5-graph")

        # 6-7. Dark theme, narrow screen
        page.goto(f"{url}/ui/#/jobs/{first}")
        page.wait_for_selector("#loss-chart canvas")
        page.click("#theme")
        page.wait_for_selector("html[data-theme='dark']")
        page.wait_for_selector("#loss-chart canvas")
        shot("6-job-dark")
        page.click("#theme")
        page.set_viewport_size({"width": 390, "height": 844})
        page.goto(f"{url}/ui/#/jobs")
        page.wait_for_selector(".jobs-table tbody tr svg.sparkline polyline")
        shot("7-jobs-narrow")
        browser.close()
    if problems:
        raise SystemExit("the pages logged errors:\n" + "\n".join(problems))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "ui", help="folder for the PNGs (default docs/ui)")
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("needs Debian's chromium: apt-get install -y --no-install-recommends chromium")
    for path in take(args.out, chromium):
        print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
