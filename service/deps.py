"""Dependencies injected into the routes: settings, the job store, the Celery app, the tenant, bodies.

Everything is created once per app instance by :func:`service.app.create_app` and kept on
``app.state``; routes only ask for what they use. The ones that only read ``app.state`` are
``async``: FastAPI runs a plain ``def`` dependency in its thread pool, a hop per dependency per
request for an attribute read.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from celery import Celery
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from worker import logs
from worker.store import JobStore

from .bodies import read_tree, validate_model
from .limits import body_limits
from .models import ExplainRequest, JobRequest, SweepRequest
from .problems import unauthorized
from .quotas import check_request_rate
from .settings import ApiSettings, key_digest

LOCAL_TENANT = "local"

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`")


async def get_settings(request: Request) -> ApiSettings:
    return request.app.state.settings


async def get_store(request: Request) -> JobStore:
    return request.app.state.store


async def get_celery(request: Request) -> Celery:
    return request.app.state.celery


SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
StoreDep = Annotated[JobStore, Depends(get_store)]
CeleryDep = Annotated[Celery, Depends(get_celery)]


async def get_tenant(request: Request, settings: SettingsDep, store: StoreDep,
                     credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str:
    """The caller's tenant: one per API key (``ApiSettings.api_keys``), or ``local`` with auth
    disabled; each request takes one from the tenant's request rate (a 429 when none is left).
    Async: no thread hop per request, and the tenant set for the log lines is in the request's
    own context (a plain ``def`` ran in a thread with a copy of it, and the routes never saw it)."""
    tenant = LOCAL_TENANT if settings.auth_disabled else _authenticated(settings, credentials)
    logs.tenant.set(tenant)  # for this request's log lines
    await check_request_rate(store, settings, tenant, request.app.state.async_redis)
    return tenant


def _authenticated(settings: ApiSettings, credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise unauthorized("an API key is required: send 'Authorization: Bearer <key>'")
    given = key_digest(credentials.credentials).encode()  # keys are compared as their SHA-256 digests
    tenant = None
    for digest, owner in settings.tenants_by_key().items():
        if hmac.compare_digest(digest.encode(), given):  # no early exit on a match: constant-time over the keys
            tenant = owner
    if tenant is None:
        raise unauthorized("the API key is not valid")
    return tenant


TenantDep = Annotated[str, Depends(get_tenant)]


async def job_request_body(request: Request, settings: SettingsDep) -> JobRequest:
    return validate_model(JobRequest, await read_tree(request, body_limits(settings)))


async def explain_request_body(request: Request, settings: SettingsDep) -> ExplainRequest:
    return validate_model(ExplainRequest, await read_tree(request, body_limits(settings)))


async def sweep_request_body(request: Request, settings: SettingsDep) -> SweepRequest:
    return validate_model(SweepRequest, await read_tree(request, body_limits(settings)))


JobRequestBody = Annotated[JobRequest, Depends(job_request_body)]
SweepRequestBody = Annotated[SweepRequest, Depends(sweep_request_body)]
ExplainRequestBody = Annotated[ExplainRequest, Depends(explain_request_body)]
