"""The dashboard's compare page in a real browser: overlaid curves, the settings table's differences."""

from __future__ import annotations

import pytest

from .test_ui_jobs import submit, wait_job
from .ui_support import assert_clean, dashboard, open_dashboard, ui_url  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def two_runs(api):
    jobs = [submit(api, steps=200, report_every=5, optimizer={"name": "sgd", "lr": lr}) for lr in (0.5, 0.05)]
    return [wait_job(api, job["id"], {"succeeded"}) for job in jobs]


def test_two_runs_overlay_and_the_differing_setting_is_highlighted(dashboard, offline_page, two_runs):
    a, b = two_runs
    page = open_dashboard(offline_page, dashboard, f"#/compare?ids={a['id']},{b['id']}", wait_for="#compare-table")
    page.wait_for_function("() => Number(document.querySelector('#compare-chart').dataset.points) > 0")
    assert page.get_attribute("#compare-chart", "data-series") == "2"
    assert page.get_attribute("#compare-chart", "data-points") == "40"  # steps 5..200 of both, aligned
    # the legend names both jobs, each with its own colour
    legend = page.inner_text(".compare-legend")
    assert a["id"] in legend and b["id"] in legend
    colours = page.eval_on_selector_all(".compare-legend .swatch", "s => s.map(e => getComputedStyle(e).backgroundColor)")
    assert len(set(colours)) == 2
    # the learning rate differs: its cells are highlighted; the step count is the same: not highlighted
    lr = page.locator("#compare-table tr[data-key='optimizer.lr']")  # from the job resource's `settings`
    assert lr.get_attribute("data-differs") == "true"
    assert lr.locator("td.differs").count() == 2
    assert [c.strip() for c in lr.locator("td").all_inner_texts()] == ["0.5", "0.05"]
    steps = page.locator("#compare-table tr[data-key='steps']")
    assert steps.get_attribute("data-differs") == "false" and steps.locator("td.differs").count() == 0
    # "only differences" hides the equal settings
    page.check("#compare-only-diff")
    assert not steps.is_visible() and lr.is_visible()
    final = page.locator("#compare-table tr[data-key='final loss'] td")
    assert final.count() == 2
    best = page.locator("#compare-table tr[data-key='best loss'] td").all_inner_texts()
    assert [float(t) for t in best] == pytest.approx([a["best_loss"], b["best_loss"]], rel=1e-5)
    # smoothing, log scale and the theme redraw without errors
    page.fill("#compare-smoothing", "0.8")
    page.click("#compare-log")
    page.click("#theme")
    assert_clean(offline_page)


def test_the_picker_lists_recent_jobs_and_compares_the_checked_ones(dashboard, offline_page, two_runs):
    a, b = two_runs
    page = open_dashboard(offline_page, dashboard, "#/compare", wait_for="#compare-pick li")
    assert page.locator(".compare-empty").is_visible()
    page.check(f"#pick-{a['id']}")
    page.check(f"#pick-{b['id']}")
    page.click("#compare-go")
    page.wait_for_selector("#compare-table")
    assert page.evaluate("location.hash") == f"#/compare?ids={a['id']},{b['id']}"
    assert_clean(offline_page)


def test_a_job_that_is_not_there_is_said_so(dashboard, offline_page, two_runs):
    a, _ = two_runs
    missing = "job_" + "0" * 32
    page = open_dashboard(offline_page, dashboard, f"#/compare?ids={a['id']},{missing}", tenant="tenant-b",
                          wait_for=".compare-problems .banner")
    # tenant-b sees neither tenant-a's job nor a job that does not exist
    assert page.locator(".compare-problems .banner").count() == 2
    assert page.inner_text(".compare-problems").count("was not found") == 2
    assert page.query_selector("#compare-chart") is None
    assert_clean(offline_page, allowed_console=("404",))
