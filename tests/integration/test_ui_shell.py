"""The dashboard's shell in a real browser: where it lives, the key prompt, routes, themes."""

from __future__ import annotations

import httpx
import pytest

from .ui_support import assert_clean, dashboard, open_dashboard, ui_url  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

PAGES = ["#/jobs", "#/compare", "#/submit"]


def test_root_redirects_to_the_dashboard_and_the_page_is_local(ui_url):
    response = httpx.get(ui_url + "/", follow_redirects=False)
    assert response.status_code == 307 and response.headers["location"] == "/ui/"
    page = httpx.get(ui_url + "/ui/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "http://" not in page.text and "https://" not in page.text


def test_with_keys_the_page_asks_for_one_and_says_when_it_is_wrong(dashboard, offline_page):
    page = open_dashboard(offline_page, dashboard, tenant=None, wait_for="#key-dialog[open]")
    page.fill("#key-input", "not-a-key")
    page.press("#key-input", "Enter")
    page.wait_for_selector("#key-error:not([hidden])")
    assert "refused this key" in page.inner_text("#key-error")
    assert page.evaluate("sessionStorage.getItem('chainrule.api-key')") is None  # a bad key is not kept
    page.fill("#key-input", "key-a")
    page.press("#key-input", "Enter")
    page.wait_for_selector("main .page-jobs")
    assert not page.is_visible("#key-dialog")
    assert page.evaluate("sessionStorage.getItem('chainrule.api-key')") == "key-a"
    # the key never travels in a URL
    assert not any("key-a" in url for url in offline_page.requests)
    assert_clean(offline_page, allowed_console=("401",))


@pytest.mark.parametrize("route", PAGES)
def test_every_page_loads_without_errors_in_both_themes(dashboard, offline_page, route):
    page = open_dashboard(offline_page, dashboard, route)
    for _ in range(2):
        page.click("#theme")
        page.wait_for_timeout(50)
    assert page.evaluate("document.documentElement.dataset.theme") in ("light", "dark")
    assert_clean(offline_page)


def test_keyboard_reaches_the_navigation(dashboard, offline_page):
    page = open_dashboard(offline_page, dashboard)
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip-link"
    for _ in range(3):
        page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.getAttribute('href')") == "#/compare"
    page.keyboard.press("Enter")
    page.wait_for_selector("main .page-compare")
    assert_clean(offline_page)
