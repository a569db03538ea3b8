"""The dashboard's jobs page in a real browser: live rows, sparklines, filter, paging, selection.

Also the helpers the job and compare page tests share (jobs submitted through the API, and
"fake trainer" jobs whose step entries a test writes itself under the job's lease, so a test
decides how fast a job reports and how long its history is).
"""

from __future__ import annotations

import time
import uuid

import pytest

import graphspec
import runtime
from worker.store import StepRecord, encode_tensors

from .conftest import EXAMPLES
from .test_api import get_job, wait_job as api_wait_job  # noqa: F401 (get_job: for test_ui_job)
from .ui_support import assert_clean, dashboard, open_dashboard, ui_url  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

SEED = EXAMPLES / "logistic_regression.json"
SEED_DOC = graphspec.load(SEED)
SEED_JSON = __import__("json").loads(SEED.read_text())
SEED_DATA_JSON = __import__("json").loads((EXAMPLES / "data" / "seed_data.json").read_text())
TERMINAL = {"succeeded", "failed", "cancelled"}


# -- helpers shared with test_ui_job.py and test_ui_compare.py -----------------------------------
def submit(api, tenant: str = "tenant-a", **overrides) -> dict:
    """A job submitted through the API (the session's real worker trains it)."""
    body = {"graph": SEED_JSON, "data": SEED_DATA_JSON, "optimizer": {"name": "sgd", "lr": 0.5}, "steps": 60,
            "batch_size": 16, "report_every": 5}
    body.update(overrides)
    resp = api.post("/v1/jobs", json=body, tenant=tenant)
    assert resp.status_code == 202, resp.text
    return resp.json()


def wait_job(api, job_id: str, states=TERMINAL, timeout: float = 30.0, tenant: str = "tenant-a") -> dict:
    return api_wait_job(api, job_id, states, timeout=timeout, tenant=tenant)


def all_steps(api, job_id: str, tenant: str = "tenant-a") -> list[dict]:
    out, after = [], 0
    while True:
        page = api.get(f"/v1/jobs/{job_id}/steps?after={after}&limit=1000", tenant=tenant).json()
        out += page["steps"]
        if not page["steps"] or page["next_after"] is None or len(page["steps"]) < 1000:
            return out
        after = page["next_after"]


class FakeTrainer:
    """A job stored as the API stores one and taken as a worker takes it (its lease held), whose
    step entries the test writes: ``report(step, loss, ...)``, then ``finish()``."""

    def __init__(self, store, tenant: str = "tenant-a", *, steps: int = 1000, report_every: int = 1,
                 lr: float = 0.5):
        self.store = store
        self.token = f"test-{uuid.uuid4().hex[:8]}"
        graph_id = store.put_graph(tenant, SEED_DOC)
        spec = {"optimizer": {"name": "sgd", "lr": lr}, "steps": steps, "epochs": None, "batch_size": 16,
                "seed": 0, "shuffle": True, "report_every": report_every, "gradients": "norms",
                "checkpoint_every": None, "eval_every": None, "time_limit_s": 600, "total_steps": steps,
                "examples": 64}
        data = encode_tensors(runtime.load_tensors(EXAMPLES / "data" / "seed_data.json"))
        self.job_id, _ = store.create_job(tenant, graph_id, spec, data)
        store.mark_sent(self.job_id)
        assert store.acquire_lease(self.job_id, self.token)
        assert store.transition(self.job_id, ["queued"], "running", token=self.token, worker="fake@test",
                                lease=self.token)[0]

    @staticmethod
    def record(step: int, loss: float | None = None, eval_loss: float | None = None) -> StepRecord:
        loss = 1.0 / (1 + step / 50) if loss is None else loss
        return StepRecord(step=step, loss=loss, grad_norms={"w1": loss / 2, "w2": loss / 3, "b": loss / 5},
                          time=time.time(), eval_loss=eval_loss)

    def report(self, records: list[StepRecord]) -> str:
        last = records[-1]
        _, state = self.store.report_steps(self.job_id, self.token, records,
                                           {"step": last.step, "loss": repr(last.loss)})
        return state

    def finish(self, state: str = "succeeded") -> None:
        self.store.transition(self.job_id, ["running", "cancelling"], state, token=self.token)
        self.store.release_lease(self.job_id, self.token)


# -- the jobs page -----------------------------------------------------------------------------
def row_state(page, job_id: str) -> str | None:
    return page.evaluate("id => document.querySelector(`tr[data-job='${id}']`)?.dataset.state ?? null", job_id)


def test_a_submitted_job_appears_without_reload_and_its_state_changes_live(dashboard, offline_page, api, store):
    page = open_dashboard(offline_page, dashboard, "#/jobs", wait_for=".jobs-table")
    fake = FakeTrainer(store, steps=40)
    job = submit(api, steps=400, report_every=10)
    # both appear without a reload (the page polls every 2 s)
    page.wait_for_selector(f"tr[data-job='{job['id']}']", timeout=8000)
    page.wait_for_selector(f"tr[data-job='{fake.job_id}'][data-state='running']", timeout=8000)
    fake.report([fake.record(s) for s in range(1, 21)])
    page.wait_for_selector(f"tr[data-job='{fake.job_id}'] .progress-text:text-is('20/40')", timeout=8000)
    fake.report([fake.record(s) for s in range(21, 41)])
    fake.finish()
    page.wait_for_selector(f"tr[data-job='{fake.job_id}'][data-state='succeeded']", timeout=8000)
    final = wait_job(api, job["id"])
    page.wait_for_selector(f"tr[data-job='{job['id']}'][data-state='{final['state']}']", timeout=8000)
    # the sparklines are drawn from the job's history
    for job_id, points in ((fake.job_id, 40), (job["id"], 40)):
        page.wait_for_function(
            "([id, n]) => { const s = document.querySelector(`tr[data-job='${id}'] svg.sparkline`);"
            " return s && Number(s.dataset.points) === n && s.querySelector('polyline'); }",
            arg=[job_id, points], timeout=8000)
    row = page.locator(f"tr[data-job='{fake.job_id}']")
    assert row.locator(".col-loss").inner_text() == "0.5556"  # 1 / (1 + 40/50)
    assert row.locator(".col-best").inner_text() == "0.5556"  # the job resource's best_loss
    assert row.locator(".col-id a").get_attribute("href") == f"#/jobs/{fake.job_id}"
    assert_clean(offline_page)


def test_filter_paging_and_compare_selection(dashboard, offline_page, api, store):
    # 55 cancelled jobs of tenant-b: more than a page
    ids = []
    for _ in range(55):
        job_id, _ = store.create_job("tenant-b", store.put_graph("tenant-b", SEED_DOC), {"steps": 10}, b"")
        store.mark_sent(job_id)
        store.transition(job_id, ["queued"], "cancelled")
        ids.append(job_id)
    page = open_dashboard(offline_page, dashboard, "#/jobs?state=cancelled", tenant="tenant-b",
                          wait_for=".jobs-table tbody tr")
    assert page.input_value("#jobs-state") == "cancelled"
    first = page.eval_on_selector_all(".jobs-table tbody tr", "rows => rows.map(r => r.dataset.job)")
    assert len(first) == 50 and set(first) <= set(ids)
    assert page.is_disabled("#jobs-newer") and not page.is_disabled("#jobs-older")
    page.keyboard.press("n")  # the key for "Older"
    page.wait_for_selector(".jobs-page-label[data-page='2']")
    second = page.eval_on_selector_all(".jobs-table tbody tr", "rows => rows.map(r => r.dataset.job)")
    assert set(first) | set(second) >= set(ids) and not set(first) & set(second)
    page.click("#jobs-newer")
    page.wait_for_selector(".jobs-page-label[data-page='1']")
    assert page.eval_on_selector_all(".jobs-table tbody tr", "rows => rows.map(r => r.dataset.job)") == first
    # select two jobs, compare them
    page.check(f"tr[data-job='{first[0]}'] input.job-select")
    assert page.is_disabled("#compare-selected")
    page.check(f"tr[data-job='{first[1]}'] input.job-select")
    page.click("#compare-selected")
    page.wait_for_selector("main .page-compare")
    assert page.evaluate("location.hash") == f"#/compare?ids={first[0]},{first[1]}"
    # the filter is in the URL: choosing "all states" changes it
    page.goto(dashboard + "#/jobs?state=cancelled")
    page.wait_for_selector(".jobs-table tbody tr")
    page.select_option("#jobs-state", "")
    page.wait_for_function("() => location.hash === '#/jobs'")
    assert_clean(offline_page)


def test_the_jobs_page_is_readable_at_390_px(dashboard, offline_page, api):
    submit(api, steps=20, report_every=5)
    page = offline_page.page
    page.set_viewport_size({"width": 390, "height": 800})
    open_dashboard(offline_page, dashboard, "#/jobs", wait_for=".jobs-table tbody tr")
    assert not page.is_visible(".jobs-table td.col-created >> nth=0")  # less important columns hide
    assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1
    assert_clean(offline_page)


# -- measurement (a figure for docs/ui.md, not an assertion) -------------------------------------
def test_measure_paging_with_10000_jobs(dashboard, offline_page, store):
    """Tenant-b gets 10,000 more (cancelled) jobs; how long the first page, "Older" and a state
    filter take to show. Runs last: the other tests count tenant-b's jobs."""
    from .test_ui_job import record_metrics

    graph_id = store.put_graph("tenant-b", SEED_DOC)
    started = time.perf_counter()
    for _ in range(10_000):
        job_id, _ = store.create_job("tenant-b", graph_id, {"steps": 10}, b"")
        store.mark_sent(job_id)
        store.transition(job_id, ["queued"], "cancelled")
    created_s = time.perf_counter() - started
    page = open_dashboard(offline_page, dashboard, "#/jobs", tenant="tenant-b", wait_for=".jobs-table tbody tr")
    page.wait_for_function("() => window.__chainrule_metrics && window.__chainrule_metrics['jobs.rendered']")
    m = page.evaluate("() => window.__chainrule_metrics")
    figures = {"jobs": 10_000 + 55, "create_s": round(created_s, 1),
               "navigation_to_first_page_ms": round(m["jobs.rendered"], 1),
               "mount_to_first_page_ms": round(m["jobs.rendered"] - m["jobs.mount"], 1)}
    older = []
    for n in range(2, 22):
        t0 = time.perf_counter()
        page.click("#jobs-older")
        page.wait_for_selector(f".jobs-page-label[data-page='{n}']")
        older.append((time.perf_counter() - t0) * 1000)
    older.sort()
    figures["older_page_ms_median"] = round(older[len(older) // 2], 1)
    figures["older_page_ms_max"] = round(older[-1], 1)
    for state in ("cancelled", "running"):
        t0 = time.perf_counter()
        page.select_option("#jobs-state", state)
        page.wait_for_function("s => location.hash === `#/jobs?state=${s}` && window.__chainrule_metrics"
                               " && window.__chainrule_metrics['jobs.rendered'] > window.__chainrule_metrics['jobs.mount']",
                               arg=state)
        figures[f"filter_{state}_ms"] = round((time.perf_counter() - t0) * 1000, 1)
    record_metrics("jobs_paging_10000", figures)
    assert_clean(offline_page)
