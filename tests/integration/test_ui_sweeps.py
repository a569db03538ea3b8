"""The dashboard's sweeps pages in a real browser: the list, a sweep's trials with the best marked and
links to their jobs, comparing the trials' curves, cancelling a running sweep."""

from __future__ import annotations

import pytest

from .conftest import wait_for
from .test_api import SEED_DATA, SEED_DOC
from .ui_support import assert_clean, dashboard, open_dashboard, screenshots, ui_url  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration


def start(api, **overrides) -> dict:
    body = {"base": {"graph": SEED_DOC, "data": SEED_DATA, "optimizer": {"name": "sgd", "lr": 0.5}, "steps": 100,
                     "batch_size": 16, "report_every": 5},
            "space": {"optimizer.lr": {"values": [0.01, 1.0, 0.1]}}, "method": "grid", "max_trials": 3,
            "max_concurrent": 2}
    body.update(overrides)
    resp = api.post("/v1/sweeps", json=body)
    assert resp.status_code == 202, resp.text
    return resp.json()


def finished(api, sweep_id: str) -> dict:
    return wait_for(lambda: (s := api.get(f"/v1/sweeps/{sweep_id}").json())["state"] in ("succeeded", "cancelled")
                    and s, timeout=60, message=f"sweep {sweep_id} to finish")


def test_a_sweep_s_trials_are_listed_with_the_best_marked_and_compared(dashboard, offline_page, api):
    sweep = finished(api, start(api)["id"])
    page = open_dashboard(offline_page, dashboard, "#/sweeps", wait_for="#sweeps-table")
    row = page.locator(f"tr[data-sweep='{sweep['id']}']")
    assert "succeeded" in row.inner_text() and "3/3" in row.inner_text()
    row.locator("a").click()
    page.wait_for_selector("#sweep-trials tbody tr")
    assert page.get_attribute(".job-head", "data-state") == "succeeded"
    assert page.locator("#sweep-trials tbody tr").count() == 3
    best = page.locator("#sweep-trials tr.best")
    assert best.count() == 1 and best.get_attribute("data-trial") == str(sweep["best"]["index"])
    assert "optimizer.lr=1" in best.inner_text()
    assert page.is_disabled("#cancel-sweep")
    screenshots(page, "sweep")
    # the trials' curves side by side on the compare page
    page.click("#sweep-compare")
    page.wait_for_function("() => Number(document.querySelector('#compare-chart')?.dataset.series) === 3")
    # and a trial's own job page
    page.go_back()
    page.wait_for_selector("#sweep-trials tbody tr")
    page.locator("#sweep-trials tbody tr").first.locator("a").click()
    page.wait_for_selector("#loss-chart")
    assert_clean(offline_page)


def test_a_running_sweep_is_cancelled_from_its_page(dashboard, offline_page, api):
    sweep = start(api, base={"graph": SEED_DOC, "data": SEED_DATA, "optimizer": {"name": "sgd", "lr": 0.5},
                             "steps": 400_000, "batch_size": 16, "report_every": 1000}, max_concurrent=1)
    page = open_dashboard(offline_page, dashboard, f"#/sweeps/{sweep['id']}", wait_for="#sweep-trials")
    page.click("#cancel-sweep")
    page.wait_for_function("() => document.querySelector('.job-head').dataset.state === 'cancelled'", timeout=20000)
    done = api.get(f"/v1/sweeps/{sweep['id']}").json()
    assert done["state"] == "cancelled" and all(t["state"] == "cancelled" for t in done["trials"])
    assert_clean(offline_page)
