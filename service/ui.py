"""The dashboard: a static single page at ``/ui/`` (``/`` redirects there), served by the API
process itself, no extra process, no Node.js, no internet.

It is a client of the public ``/v1`` API (service/static/ui/js/api.js): everything it shows a
user can also script. Its files are plain ES modules under ``service/static/ui/`` and the
vendored libraries under ``service/static/vendor/`` (pinned npm releases, licenses kept),
both served at ``/static``. docs/ui.md describes the pages and the choices.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from .docs_ui import STATIC_DIR, mount_static, path_prefix

UI_PATH = "/ui/"
INDEX = STATIC_DIR / "ui" / "index.html"

# Everything from this origin only: the page's scripts are files (no inline script), charts set
# inline styles, the graph page draws SVG and offers downloads as blob: URLs.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
       "font-src 'self'; connect-src 'self'; base-uri 'self'; form-action 'self'; frame-ancestors 'self'")


def install_ui(app: FastAPI) -> None:
    mount_static(app)

    def to_ui(request: Request) -> RedirectResponse:
        return RedirectResponse(path_prefix(request) + UI_PATH, status_code=307)

    for path in ("/", "/ui"):  # the site's root, and the page without its slash
        app.add_api_route(path, to_ui, methods=["GET"], include_in_schema=False)

    @app.get(UI_PATH, include_in_schema=False)
    def ui() -> HTMLResponse:
        # read per request: a few KB, and an edited page shows without a restart
        return HTMLResponse(INDEX.read_text(), headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"})
