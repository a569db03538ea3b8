"""Fixtures and helpers for the dashboard's browser tests (tests/integration/test_ui_*.py).

The dashboard runs as a user runs it: ``uvicorn service.app:app`` in a subprocess with this
session's configuration (auth on, two tenants; see conftest.py), the session's real Celery
worker behind it and Debian's Chromium driven by Playwright in front (tests/browser.py).

    from .ui_support import dashboard, open_dashboard, assert_clean, ui_url  # noqa: F401 (fixtures)

    def test_x(dashboard, offline_page):
        page = open_dashboard(offline_page, dashboard, "#/jobs", tenant="tenant-a")
        ...
        assert_clean(offline_page)
"""

from __future__ import annotations

import os
from typing import Iterator

import pytest

from browser import OfflinePage, live_server

from .conftest import API_KEYS

KEY_STORAGE = "chainrule.api-key"  # service/static/ui/js/api.js


@pytest.fixture(scope="module")
def ui_url(env, celery_worker) -> Iterator[str]:
    """The API (and so the dashboard) in a uvicorn subprocess, with a worker behind it."""
    with live_server(env) as url:
        yield url


@pytest.fixture(scope="module")
def dashboard(ui_url: str) -> str:
    """The dashboard's URL (``<api>/ui/``)."""
    return f"{ui_url}/ui/"


def open_dashboard(offline_page: OfflinePage, dashboard: str, route: str = "#/jobs", *,
                   tenant: str | None = "tenant-a", wait_for: str = "main .page"):
    """Open ``route`` with ``tenant``'s key already in this tab's sessionStorage (as after
    the prompt); ``tenant=None`` opens it without a key. Returns the Playwright page."""
    page = offline_page.page
    if tenant is not None:
        key = API_KEYS[tenant]
        page.context.add_init_script(f"sessionStorage.setItem({KEY_STORAGE!r}, {key!r});")
    page.goto(dashboard + route)
    if wait_for:
        page.wait_for_selector(wait_for)
    return page


def assert_clean(offline_page: OfflinePage, *, allowed_console: tuple[str, ...] = ()) -> None:
    """No uncaught error, no console error (except ``allowed_console`` substrings, e.g. a 401 the
    test caused on purpose), nothing requested from another host, nothing refused by the CSP."""
    console = [m for m in offline_page.console_errors if not any(a in m for a in allowed_console)]
    assert offline_page.errors == [], offline_page.errors
    assert console == [], console
    assert offline_page.blocked == [], offline_page.blocked
    assert offline_page.refused == [], offline_page.refused


SHOTS = os.environ.get("CHAINRULE_UI_SHOTS")


def screenshots(page, name: str, *, settle_ms: int = 150) -> None:
    """With ``CHAINRULE_UI_SHOTS=<dir>``, write ``ui-<name>-<width>-<theme>.png`` at 1280 and
    390 px in both themes (for looking at a page while working on it; docs/ui.md's pictures
    come from scripts/ui_screenshots.py)."""
    if not SHOTS:
        return
    for width in (1280, 390):
        for theme in ("light", "dark"):
            page.set_viewport_size({"width": width, "height": 900 if width > 400 else 844})
            page.evaluate(f"""() => {{ localStorage.setItem('chainrule.theme', '{theme}');
                document.documentElement.dataset.theme = '{theme}'; window.dispatchEvent(new Event('resize')); }}""")
            page.wait_for_timeout(settle_ms)
            page.screenshot(path=f"{SHOTS}/ui-{name}-{width}-{theme}.png", full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})
