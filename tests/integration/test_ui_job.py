"""The dashboard's job page in a real browser: live curves, cancel, downloads, tenancy; and the
figures docs/ui.md reports (a 1,000,000-step history drawn, 10 steps/s live), measured not asserted."""

from __future__ import annotations

import csv
import io
import json
import math
import threading
import time
from pathlib import Path

import pytest

from worker.store import JobStore

from .conftest import wait_for
from .test_ui_jobs import FakeTrainer, all_steps, get_job, submit, wait_job
from .ui_support import assert_clean, dashboard, open_dashboard, ui_url  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

METRICS_FILE = Path("/tmp/chainrule-ui-metrics.json")


def points(page) -> int:
    return int(page.get_attribute("#loss-chart", "data-points") or 0)


def received(page) -> int:
    return int(page.get_attribute("#loss-chart", "data-received") or 0)


def heap_mb(page) -> float:
    """The page's used JS heap after a garbage collection (Chromium's DevTools protocol), in MiB."""
    cdp = page.context.new_cdp_session(page)
    try:
        cdp.send("HeapProfiler.collectGarbage")
        return round(cdp.send("Runtime.getHeapUsage")["usedSize"] / 2**20, 2)
    finally:
        cdp.detach()


def record_metrics(name: str, figures: dict) -> None:
    data = json.loads(METRICS_FILE.read_text()) if METRICS_FILE.exists() else {}
    data[name] = figures
    METRICS_FILE.write_text(json.dumps(data, indent=2))
    print(f"\n[ui metrics] {name}: {json.dumps(figures)}")


def x_range(page, chart: str = "#loss-chart") -> tuple[float, float]:
    el = page.locator(chart)
    return float(el.get_attribute("data-x-min")), float(el.get_attribute("data-x-max"))


def test_the_curve_fills_live_and_the_final_loss_is_the_apis(dashboard, offline_page, store, api):
    fake = FakeTrainer(store, steps=400)
    fake.report([fake.record(s) for s in range(1, 11)])
    page = open_dashboard(offline_page, dashboard, f"#/jobs/{fake.job_id}", wait_for="#loss-chart")
    page.wait_for_function("() => Number(document.querySelector('#loss-chart').dataset.points) === 10")
    seen = [points(page)]
    for start, end in ((11, 110), (111, 210), (211, 300)):
        fake.report([fake.record(s, eval_loss=0.3 if s % 50 == 0 else None) for s in range(start, end + 1)])
        page.wait_for_function("n => Number(document.querySelector('#loss-chart').dataset.points) === n", arg=end)
        seen.append(points(page))
    assert seen == [10, 110, 210, 300]  # grows as the job reports
    assert page.get_attribute("#norms-chart", "data-points") == "300"
    # a zoom (drag) holds while steps stream in; a double-click shows everything again
    box = page.locator("#loss-chart .u-over").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.25, box["y"] + 40)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + 40, steps=5)
    page.mouse.up()
    page.wait_for_function("() => Number(document.querySelector('#loss-chart').dataset.xMax) < 200")
    zoomed = x_range(page)
    fake.report([fake.record(s) for s in range(301, 401)])
    page.wait_for_function("() => Number(document.querySelector('#loss-chart').dataset.points) === 400")
    page.wait_for_timeout(300)
    assert x_range(page) == zoomed
    page.locator("#loss-chart .u-over").dblclick()
    page.wait_for_function("() => Number(document.querySelector('#loss-chart').dataset.xMax) === 400")
    fake.finish()
    page.wait_for_selector("#job-state .state-succeeded", timeout=8000)
    api_job = get_job(api, fake.job_id)
    shown = page.get_attribute("[data-field='loss']", "data-value")
    assert float(shown) == api_job["loss"]
    assert page.is_disabled("#cancel-job")
    # the chart's other controls: smoothing, raw on/off, log scale, theme
    page.fill("#smoothing", "0.9")
    page.click("#show-raw")
    page.click("#log-scale")
    page.click("#theme")
    page.wait_for_timeout(100)
    assert "400" in page.inner_text("#chart-note")
    assert_clean(offline_page)


def test_a_real_job_fills_live_and_is_cancelled_from_its_page(dashboard, offline_page, api):
    # long enough to be running when the page's cancel lands, however fast the machine
    job = submit(api, steps=500_000, report_every=100)
    page = open_dashboard(offline_page, dashboard, f"#/jobs/{job['id']}", wait_for="#loss-chart")
    wait_job(api, job["id"], {"running"}, timeout=20)
    page.wait_for_function("() => Number(document.querySelector('#loss-chart').dataset.received) > 0",
                           timeout=10000)
    first = received(page)
    page.wait_for_function("n => Number(document.querySelector('#loss-chart').dataset.received) > n",
                           arg=first, timeout=10000)
    assert points(page) > 0
    page.click("#cancel-job")
    final = wait_job(api, job["id"], timeout=20)
    assert final["state"] == "cancelled"
    page.wait_for_selector("#job-state .state-cancelled", timeout=8000)
    assert page.is_disabled("#cancel-job")
    assert_clean(offline_page)


def test_downloads_hold_every_step(dashboard, offline_page, api):
    job = submit(api, steps=2500, report_every=1, batch_size=8)
    wait_job(api, job["id"], {"succeeded"})
    expected = all_steps(api, job["id"])
    assert len(expected) == 2500
    page = open_dashboard(offline_page, dashboard, f"#/jobs/{job['id']}", wait_for="#download-json")
    page.wait_for_selector("#job-state .state-succeeded")

    def fetch(button: str) -> tuple[str, str]:
        with page.expect_download() as info:
            page.click(button)
        download = info.value
        return download.suggested_filename, Path(download.path()).read_text()

    name, text = fetch("#download-json")
    assert name == f"{job['id']}-steps.json"
    assert json.loads(text) == expected

    name, text = fetch("#download-csv")
    assert name == f"{job['id']}-steps.csv"
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [int(r["step"]) for r in rows] == [s["step"] for s in expected]
    for row, step in zip(rows, expected):
        assert math.isclose(float(row["loss"]), step["loss"], rel_tol=1e-12)
        for name_, norm in step["grad_norms"].items():
            assert math.isclose(float(row[f"grad_norm:{name_}"]), norm, rel_tol=1e-12)

    name, text = fetch("#download-result")
    assert name == f"{job['id']}-result.json"
    assert json.loads(text) == api.get(f"/v1/jobs/{job['id']}/result").json()
    assert_clean(offline_page)


def test_another_tenants_job_is_not_found(dashboard, offline_page, api):
    job = submit(api, tenant="tenant-a", steps=10)
    page = open_dashboard(offline_page, dashboard, f"#/jobs/{job['id']}", tenant="tenant-b", wait_for="main .page")
    page.wait_for_selector(".job-not-found")
    assert "not found" in page.inner_text("main h1").lower()
    assert page.query_selector("#loss-chart") is None and page.query_selector("#job-details") is None
    assert job["graph_id"] not in page.inner_text("main")
    assert_clean(offline_page, allowed_console=("404",))


def test_a_failed_jobs_error_links_its_node(dashboard, offline_page, store):
    fake = FakeTrainer(store, steps=100)
    fake.report([fake.record(s) for s in range(1, 6)])
    fake.store.transition(fake.job_id, ["running"], "failed", token=fake.token, error_type="NonFiniteLoss",
                          error_message="loss became NaN at step 6", error_node="L")
    page = open_dashboard(offline_page, dashboard, f"#/jobs/{fake.job_id}", wait_for="#job-error .banner")
    assert "NonFiniteLoss" in page.inner_text("#job-error")
    href = page.get_attribute("#job-error a.error-node", "href")
    assert href == f"#/graphs/{store.get_job(fake.job_id).graph_id}?job={fake.job_id}&node=L"
    assert page.is_disabled("#cancel-job") and page.is_disabled("#download-result")
    assert_clean(offline_page)


def test_memory_stays_bounded_however_many_steps_stream_in(dashboard, offline_page, store, settings):
    """30,000 entries stream in (the cap is 4,000 points): the points kept stay under the cap, a
    spike survives the decimation; the heap after GC at every 10,000 entries is recorded."""
    big = JobStore(store._r, settings.model_copy(update={"stream_maxlen": 100_000}))
    fake = FakeTrainer(big, steps=30_000)
    page = open_dashboard(offline_page, dashboard, f"#/jobs/{fake.job_id}", wait_for="#loss-chart")
    page.wait_for_function("() => document.querySelector('#chart-note').textContent.includes('points')")
    page.click("#log-scale")  # an empty chart on a log scale, and back
    page.click("#log-scale")
    heap = {"0": heap_mb(page)}
    kept = []
    for checkpoint in (10_000, 20_000, 30_000):
        for start in range(checkpoint - 9_999, checkpoint + 1, 2000):
            fake.report([fake.record(s, loss=(100.0 if s == 4321 else None))
                         for s in range(start, min(start + 2000, checkpoint + 1))])
        page.wait_for_function("n => Number(document.querySelector('#loss-chart').dataset.received) === n",
                               arg=checkpoint, timeout=30000)
        page.wait_for_function("n => Number(document.querySelector('#loss-chart').dataset.lastStep) === n",
                               arg=checkpoint)
        kept.append(points(page))
        heap[str(checkpoint)] = heap_mb(page)
    assert all(0 < k <= 4000 for k in kept), kept
    # the spike survived the decimations
    assert float(page.get_attribute("#loss-chart", "data-max-loss")) == 100.0
    record_metrics("stream_30000_entries", {"points_kept": kept, "cap": 4000, "heap_after_gc_mb_by_entries": heap})
    fake.finish()
    assert_clean(offline_page)


# -- measurements (figures for docs/ui.md, not assertions) ---------------------------------------
def test_measure_drawing_a_million_step_history(dashboard, offline_page, store, settings):
    big = JobStore(store._r, settings.model_copy(update={"stream_maxlen": 200_000}))
    fake = FakeTrainer(big, steps=1_000_000, report_every=10)
    started = time.perf_counter()
    batch = []
    for step in range(10, 1_000_001, 10):
        batch.append(fake.record(step, loss=1.0 / (1 + step / 5000) + (0.5 if step == 654_320 else 0.0)))
        if len(batch) == 5000:
            fake.report(batch)
            batch = []
    if batch:
        fake.report(batch)
    fake.finish()
    written_s = time.perf_counter() - started
    page = open_dashboard(offline_page, dashboard, f"#/jobs/{fake.job_id}", wait_for="#loss-chart")
    page.wait_for_function("() => window.__chainrule_metrics && window.__chainrule_metrics['job.drawn']",
                           timeout=30000)
    m = page.evaluate("() => window.__chainrule_metrics")
    nav = page.evaluate("() => performance.getEntriesByType('navigation')[0]?.domContentLoadedEventEnd ?? null")
    figures = {
        "entries": 100_000, "steps": 1_000_000, "write_s": round(written_s, 2),
        "navigation_to_drawn_ms": round(m["job.drawn"], 1),
        "mount_to_drawn_ms": round(m["job.drawn"] - m["job.mount"], 1),
        "history_request_ms": round(m["job.history"] - m["job.mount"], 1),
        "dom_content_loaded_ms": None if nav is None else round(nav, 1),
        "points_plotted": m.get("job.historyPoints"),
    }
    # the same again, the page already loaded (a route change, as when clicking a job in the list)
    page.evaluate("() => { delete window.__chainrule_metrics['job.drawn']; location.hash = '#/jobs'; }")
    page.wait_for_selector(".jobs-table")
    page.evaluate(f"() => {{ location.hash = '#/jobs/{fake.job_id}'; }}")
    page.wait_for_function("() => window.__chainrule_metrics['job.drawn']", timeout=30000)
    m = page.evaluate("() => window.__chainrule_metrics")
    figures["route_change_mount_to_drawn_ms"] = round(m["job.drawn"] - m["job.mount"], 1)
    assert int(page.get_attribute("#loss-chart", "data-last-step")) == 1_000_000
    record_metrics("million_step_history", figures)
    assert_clean(offline_page)


def test_measure_smoothness_at_10_steps_per_second(dashboard, offline_page, store):
    fake = FakeTrainer(store, steps=5000)
    fake.report([fake.record(s) for s in range(1, 2001)])
    offline_page.page.context.add_init_script("""
        window.__perf = { longTasks: [], frames: [] };
        try { new PerformanceObserver((list) => { for (const e of list.getEntries())
              window.__perf.longTasks.push(e.duration); }).observe({ entryTypes: ['longtask'] }); } catch (e) {}
        let last = 0;
        const tick = (t) => { if (last) window.__perf.frames.push(t - last); last = t; requestAnimationFrame(tick); };
        requestAnimationFrame(tick);
    """)
    page = open_dashboard(offline_page, dashboard, f"#/jobs/{fake.job_id}", wait_for="#loss-chart")
    page.wait_for_function("() => Number(document.querySelector('#loss-chart').dataset.received) === 2000")
    page.evaluate("() => { window.__perf.longTasks = []; window.__perf.frames = []; }")
    heap_start = page.evaluate("() => performance.memory ? performance.memory.usedJSHeapSize : null")
    gc_start = heap_mb(page)
    draws_start = int(page.get_attribute("#loss-chart", "data-draws") or 0)

    stop = threading.Event()

    def report():
        step = 2000
        next_at = time.perf_counter()
        while not stop.is_set() and step < 2100:
            step += 1
            fake.report([fake.record(step)])
            next_at += 0.1
            time.sleep(max(0.0, next_at - time.perf_counter()))

    writer = threading.Thread(target=report, daemon=True)
    started = time.perf_counter()
    writer.start()
    writer.join(30)
    stop.set()
    elapsed = time.perf_counter() - started
    page.wait_for_function("() => Number(document.querySelector('#loss-chart').dataset.received) === 2100",
                           timeout=10000)
    perf = page.evaluate("() => window.__perf")
    heap_end = page.evaluate("() => performance.memory ? performance.memory.usedJSHeapSize : null")
    gc_end = heap_mb(page)
    draws = int(page.get_attribute("#loss-chart", "data-draws") or 0) - draws_start
    frames = sorted(perf["frames"])
    pct = lambda p: round(frames[min(len(frames) - 1, int(p * len(frames)))], 1) if frames else None  # noqa: E731
    figures = {
        "steps_reported": 100, "seconds": round(elapsed, 2), "rate_steps_per_s": round(100 / elapsed, 1),
        "chart_redraws": draws, "long_tasks": len(perf["longTasks"]),
        "long_task_max_ms": round(max(perf["longTasks"]), 1) if perf["longTasks"] else 0,
        "frames": len(frames), "frame_ms_p50": pct(0.5), "frame_ms_p99": pct(0.99),
        "frame_ms_max": round(frames[-1], 1) if frames else None,
        "heap_start_mb": None if heap_start is None else round(heap_start / 2**20, 2),
        "heap_end_mb": None if heap_end is None else round(heap_end / 2**20, 2),
        "heap_after_gc_start_mb": gc_start, "heap_after_gc_end_mb": gc_end,
    }
    fake.finish()
    record_metrics("live_10_steps_per_s", figures)
    assert_clean(offline_page)


def test_without_max_points_the_page_reads_every_page_instead(dashboard, offline_page, api):
    """A server without `max_points` (422): the job page falls back to plain paging (decimated in
    the page), the jobs page's sparkline to the last 64 entries."""
    job = submit(api, steps=1500, report_every=1, batch_size=8)
    wait_job(api, job["id"], {"succeeded"})
    page = offline_page.page
    problem = json.dumps({"type": "about:blank", "title": "Unprocessable Content", "status": 422,
                          "detail": "max_points: unknown"})
    page.route("**/steps?max_points=*", lambda route: route.fulfill(
        status=422, body=problem, headers={"Content-Type": "application/problem+json"}))
    open_dashboard(offline_page, dashboard, f"#/jobs/{job['id']}", wait_for="#loss-chart")
    page.wait_for_function("() => Number(document.querySelector('#loss-chart').dataset.received) === 1500")
    assert points(page) == 1500 and page.get_attribute("#loss-chart", "data-last-step") == "1500"
    page.goto(dashboard + "#/jobs")
    page.wait_for_function(
        "id => Number(document.querySelector(`tr[data-job='${id}'] svg.sparkline`)?.dataset.points) === 64",
        arg=job["id"])
    assert any("max_points" in url for url in offline_page.requests)
    assert_clean(offline_page, allowed_console=("422",))


def test_accuracy_and_a_moving_learning_rate_are_drawn(dashboard, offline_page, api):
    """A classification job (the seed graph's bce) with a schedule: the metrics chart draws its
    accuracy and eval accuracy, the learning-rate chart its warmup and decay; a constant rate
    shows no rate chart; the details say why the job stopped."""
    from .test_api import SEED_DATA

    eval_data = {name: {**t, "shape": [20], "data": t["data"][:20]} for name, t in SEED_DATA.items()}
    job = submit(api, steps=60, report_every=1, schedule="cosine", warmup_steps=10, eval_data=eval_data,
                 eval_every=20)
    wait_job(api, job["id"], {"succeeded"})
    page = open_dashboard(offline_page, dashboard, f"#/jobs/{job['id']}", wait_for="#loss-chart")
    page.wait_for_function("() => Number(document.querySelector('#metrics-chart').dataset.points) === 60",
                           timeout=10000)
    assert page.is_visible("#metrics-chart") and page.is_visible("#lr-chart")
    assert page.get_attribute("#lr-chart", "data-points") == "60"
    legend = page.inner_text("#metrics-card")
    assert "accuracy" in legend and "eval_accuracy" in legend
    assert "it ran the steps asked for" in page.inner_text("#job-details")
    constant = submit(api, steps=20, report_every=1)
    wait_job(api, constant["id"], {"succeeded"})
    page = open_dashboard(offline_page, dashboard, f"#/jobs/{constant['id']}", wait_for="#loss-chart")
    page.wait_for_function("() => Number(document.querySelector('#metrics-chart').dataset.points) === 20",
                           timeout=10000)
    assert not page.is_visible("#lr-chart")
    assert_clean(offline_page)
