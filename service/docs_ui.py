"""The API reference pages, ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc), served without internet.

FastAPI's own pages load Swagger UI and ReDoc from a CDN (and ReDoc's fonts from Google), so
they are blank on a machine without internet access. These load the same libraries from the
package: ``service/static/vendor/`` (pinned npm releases with their licenses, see the README
there and ``scripts/vendor_frontend.py``), served at ``/static``. Every URL in the pages is a
path on this server, prefixed with the ASGI ``root_path`` when the app runs behind a proxy
under a path prefix (``uvicorn --root-path /api``).
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_URL = "/static"
STATIC_ROUTE_NAME = "static"

SWAGGER_JS = "vendor/swagger-ui-dist/swagger-ui-bundle.js"
SWAGGER_CSS = "vendor/swagger-ui-dist/swagger-ui.css"
REDOC_JS = "vendor/redoc/bundles/redoc.standalone.js"
FAVICON = "vendor/swagger-ui-dist/favicon-32x32.png"

# Swagger UI's online-validator badge loads an image from validator.swagger.io. FastAPI's page uses
# BaseLayout, which has no badge; null keeps it off should the layout change.
SWAGGER_UI_PARAMETERS = {"validatorUrl": None}


# What the pages may load, enforced by the browser: nothing from another origin. ReDoc 2 shows a
# "Redocly" logo from cdn.redoc.ly in its sidebar, unconditionally: refused here (the browser
# never sends the request; the logo falls back to nothing). Inline scripts are allowed by hash.
CSP = ("default-src 'none'; script-src 'self'{script_hashes}; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
       "base-uri 'self'; form-action 'self'; frame-ancestors 'self'")
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)


def with_csp(response: HTMLResponse) -> HTMLResponse:
    """``response`` with a Content-Security-Policy that allows its own inline scripts only."""
    hashes = "".join(f" 'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'"
                     for script in _INLINE_SCRIPT.findall(response.body.decode()))
    response.headers["Content-Security-Policy"] = CSP.format(script_hashes=hashes)
    return response


def mount_static(app: FastAPI) -> None:
    """Serve ``service/static`` at ``/static`` (once, however many callers ask)."""
    if any(getattr(route, "name", None) == STATIC_ROUTE_NAME for route in app.router.routes):
        return
    app.mount(STATIC_URL, StaticFiles(directory=STATIC_DIR), name=STATIC_ROUTE_NAME)


def path_prefix(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/")


def static_url(request: Request, path: str) -> str:
    """A path (no scheme or host) under ``/static`` as the browser must request it."""
    return f"{path_prefix(request)}{STATIC_URL}/{path}"


def install_docs(app: FastAPI, *, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    """Register ``docs_url`` (and its OAuth2 redirect page) and ``redoc_url`` with local assets.

    The app must be built with ``docs_url=None, redoc_url=None`` so FastAPI does not add its own
    CDN-loading pages. The routes stay out of the OpenAPI document."""
    if app.openapi_url is None:
        return
    mount_static(app)
    openapi_url = app.openapi_url
    oauth2_redirect_url = app.swagger_ui_oauth2_redirect_url

    @app.get(docs_url, include_in_schema=False)
    async def swagger_ui_html(request: Request) -> HTMLResponse:
        prefix = path_prefix(request)
        return with_csp(get_swagger_ui_html(
            openapi_url=prefix + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=static_url(request, SWAGGER_JS),
            swagger_css_url=static_url(request, SWAGGER_CSS),
            swagger_favicon_url=static_url(request, FAVICON),
            oauth2_redirect_url=prefix + oauth2_redirect_url if oauth2_redirect_url else None,
            init_oauth=app.swagger_ui_init_oauth,
            swagger_ui_parameters={**SWAGGER_UI_PARAMETERS, **(app.swagger_ui_parameters or {})},
        ))

    if oauth2_redirect_url:
        @app.get(oauth2_redirect_url, include_in_schema=False)
        async def swagger_ui_redirect() -> HTMLResponse:
            return with_csp(get_swagger_ui_oauth2_redirect_html())

    @app.get(redoc_url, include_in_schema=False)
    async def redoc_html(request: Request) -> HTMLResponse:
        return with_csp(get_redoc_html(
            openapi_url=path_prefix(request) + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=static_url(request, REDOC_JS),
            redoc_favicon_url=static_url(request, FAVICON),
            with_google_fonts=False,
        ))
