"""The FastAPI app: ``uvicorn service.app:app`` (settings from CHAINRULE_* environment variables:
``service.settings.ApiSettings``).

``create_app(settings)`` builds an independent app (its own Redis client and Celery app),
which is what tests use; ``app`` is the one built from the environment.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi import FastAPI
from starlette.responses import Response

import graphspec
from worker.celery_app import make_celery
from worker.store import JobStore

from .docs_ui import install_docs
from .limits import BodySizeLimitMiddleware
from .metrics import CONTENT_TYPE, ApiMetrics, MetricsMiddleware
from .request_ids import RequestIdMiddleware
from .openapi import install_openapi
from .problems import register_exception_handlers
from .routes import graphs, health, jobs, sweeps
from .settings import ApiSettings, get_api_settings
from .streaming import event_loop_client
from .ui import install_ui

log = logging.getLogger("service")

DESCRIPTION = """\
Train computational graphs over HTTP. Store a graph document (`POST /v1/graphs`), submit a training
job with its data (`POST /v1/jobs`), follow it (`GET /v1/jobs/{id}/steps`, or live with Server-Sent
Events at `/v1/jobs/{id}/events`) and fetch the trained parameters (`GET /v1/jobs/{id}/result`).

Bodies and responses are JSON, or msgpack (`Content-Type`/`Accept: application/msgpack`, tensors as
raw bytes). Every error is an RFC 9457 problem (`application/problem+json`); graph and data problems
list `errors` located by JSON pointers into the request body.
"""

TAGS = [
    {"name": "graphs", "description": "Graph documents, explanations and the format's JSON Schema."},
    {"name": "jobs", "description": "Training jobs, their progress and results."},
    {"name": "health", "description": "Probes for orchestrators."},
]


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or get_api_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if metrics is not None and settings.metrics_port is not None:
            metrics.serve(settings.metrics_host, settings.metrics_port)
        # the async Redis client of the loop that serves the requests (the rate check, event streams)
        app.state.async_redis = event_loop_client(app.state.store)
        yield
        await app.state.async_redis.aclose()
        app.state.async_redis = None
        if metrics is not None:
            metrics.stop()
        app.state.store.close()

    app = FastAPI(title="chainrule", version=graphspec.__version__, description=DESCRIPTION, openapi_tags=TAGS,
                  lifespan=lifespan, docs_url=None, redoc_url=None)  # /docs, /redoc: install_docs, no CDN
    app.state.settings = settings
    if settings.plain_keys():
        log.warning("CHAINRULE_API_KEYS holds %d plain API key(s): store each as sha256:<digest>:tenant instead "
                    "(`chainrule hash-key` prints the digest; docs/security.md)", settings.plain_keys())
    app.state.store = JobStore.connect(settings)
    app.state.async_redis = None  # until the lifespan starts (without one: threads, and a client per stream)
    app.state.celery = make_celery(settings)

    register_exception_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    metrics = ApiMetrics(lambda: app.state.store, lambda: app.state.celery) if settings.metrics else None
    if metrics is not None:
        app.add_middleware(MetricsMiddleware, metrics=metrics)
        if settings.metrics_port is None:
            app.add_route("/metrics", lambda request: Response(metrics.exposition(), media_type=CONTENT_TYPE),
                          include_in_schema=False)
    app.state.metrics = metrics
    app.add_middleware(RequestIdMiddleware)  # outermost: every response carries X-Request-ID
    app.include_router(graphs.router)
    app.include_router(jobs.router)
    app.include_router(sweeps.router)
    app.include_router(health.router)
    install_openapi(app)
    install_docs(app)
    install_ui(app)
    return app


app = create_app()
