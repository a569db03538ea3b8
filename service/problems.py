"""Every error the API returns is an RFC 9457 problem (``application/problem+json``).

Code anywhere in the service raises :class:`ProblemError` (or lets a known exception
through); :func:`register_exception_handlers` is the ONE place where exceptions become
HTTP responses. Graph and data problems carry ``errors``: located issues whose
``location`` is a JSON pointer (RFC 6901) into the request body.
"""

from __future__ import annotations

import logging
import math
from http import HTTPStatus
from typing import Any, Iterable, Sequence

import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from graphspec import GraphSpecError, Issue
from graphspec.errors import pointer
from worker.quota_store import QuotaExceeded

log = logging.getLogger("service")

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_BASE = "https://chainrule.dev/problems/"
RETRY_AFTER_S = 5
# RFC 9110 names (Python's HTTPStatus still has the RFC 7231 ones for these).
_TITLES = {413: "Content Too Large", 422: "Unprocessable Content"}


class ProblemError(Exception):
    """An error with everything its problem document needs.

    ``kind`` is the last segment of the problem ``type`` URI (``invalid-graph``...);
    ``errors`` are located issues; ``extra`` adds members to the problem document.
    """

    def __init__(self, status: int, detail: str, *, kind: str | None = None, title: str | None = None,
                 errors: Iterable[dict[str, Any] | Issue] | None = None, headers: dict[str, str] | None = None,
                 **extra: Any):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.kind = kind
        self.title = title or _TITLES.get(status) or HTTPStatus(status).phrase
        self.errors = None if errors is None else [_issue_dict(e) for e in errors]
        self.headers = headers or {}
        self.extra = extra


def _issue_dict(item: dict[str, Any] | Issue) -> dict[str, Any]:
    out = item.to_dict() if isinstance(item, Issue) else dict(item)
    return {k: v for k, v in out.items() if k in ("code", "location", "message", "hint") and v is not None}


# -- constructors used across the service ---------------------------------------------------

def not_found(what: str, ident: str) -> ProblemError:
    return ProblemError(404, f"{what} {ident!r} does not exist", kind="not-found")


def conflict(detail: str, **extra: Any) -> ProblemError:
    return ProblemError(409, detail, kind="conflict", **extra)


def unprocessable(detail: str, errors: Iterable[dict[str, Any] | Issue], *, kind: str = "invalid-request",
                  title: str | None = None) -> ProblemError:
    return ProblemError(422, detail, kind=kind, title=title, errors=errors)


def too_large(detail: str, *, location: str | None = None, **extra: Any) -> ProblemError:
    errors = None if location is None else [{"code": "too_large", "location": location, "message": detail}]
    return ProblemError(413, detail, kind="too-large", errors=errors, **extra)


def unavailable(detail: str, *, kind: str = "unavailable", **extra: Any) -> ProblemError:
    return ProblemError(503, detail, kind=kind, headers={"Retry-After": str(RETRY_AFTER_S)}, **extra)


# When nothing stored is due to expire, a client over a storage limit is told to come back after
# this long (it frees space itself by deleting finished jobs or graphs).
STORAGE_RETRY_S = 60
# A job leaves the queue when a worker starts it: soon, on a deployment that keeps up.
QUEUE_RETRY_S = 5
_LIMITS = {  # what each per-tenant limit counts, and how to get under it
    "requests_per_second": ("request rate", "slow down: wait Retry-After seconds before the next request"),
    "max_queued_jobs": ("queued jobs", "wait for some of your queued jobs to start (or cancel some) before "
                                       "submitting more"),
    "max_job_bytes": ("bytes of stored jobs (data and step history)",
                      "delete finished jobs you no longer need (DELETE /v1/jobs/{job_id}), or wait for them to expire"),
    "max_graph_bytes": ("bytes of stored graphs", "delete stored graphs you no longer need "
                                                  "(DELETE /v1/graphs/{graph_id}), or wait for them to expire"),
}


def over_limit(exc: QuotaExceeded) -> ProblemError:
    """A per-tenant limit refused the request: a 429 naming the limit, its value and the usage,
    saying how to get under it, with Retry-After."""
    retry = exc.retry_after_s
    if retry is None:
        retry = QUEUE_RETRY_S if exc.limit == "max_queued_jobs" else STORAGE_RETRY_S
    value = exc.value if isinstance(exc.value, float) and not exc.value.is_integer() else int(exc.value)
    what, how = _LIMITS[exc.limit]
    used = "" if exc.limit == "requests_per_second" else f", {int(exc.used)} in use"
    return ProblemError(429, f"over this tenant's limit on {what}: {exc.limit} is {value}{used}; {how}",
                        kind="limit-exceeded", title="Too Many Requests",
                        headers={"Retry-After": str(max(1, math.ceil(retry)))},
                        limit=exc.limit, limit_value=value, used=exc.used)


def unauthorized(detail: str) -> ProblemError:
    return ProblemError(401, detail, kind="unauthorized", headers={"WWW-Authenticate": "Bearer"})


def graph_problem(exc: GraphSpecError, prefix: str = "") -> ProblemError:
    """A graphspec error as a 422 whose locations point into the request body (``prefix`` + issue location)."""
    count = len(exc.issues)
    return unprocessable(f"the graph document has {count} problem{'s' if count != 1 else ''}",
                         [{**i.to_dict(), "location": prefix + i.location} for i in exc.issues],
                         kind="invalid-graph", title="Invalid graph document")


def loc_to_pointer(loc: Sequence[str | int], *, drop_body: bool = True) -> str:
    """A pydantic/FastAPI error location to a JSON pointer: ``("body", "data", "x1")`` -> ``/data/x1``;
    parameters keep their source: ``("query", "limit")`` -> ``/query/limit``."""
    parts = list(loc)
    if drop_body and parts and parts[0] == "body":
        parts = parts[1:]
    return pointer(*parts)


def validation_issues(errors: Iterable[dict[str, Any]], *, prefix: str = "") -> list[dict[str, Any]]:
    return [{"code": e.get("type", "invalid"), "location": prefix + loc_to_pointer(e.get("loc", ())),
             "message": str(e.get("msg", "invalid value"))} for e in errors]


def from_validation_error(exc: ValidationError, prefix: str = "") -> ProblemError:
    issues = validation_issues(exc.errors(include_url=False, include_input=False, include_context=False), prefix=prefix)
    count = len(issues)
    return unprocessable(f"the request has {count} invalid field{'s' if count != 1 else ''}", issues)


# -- rendering ------------------------------------------------------------------------------

def problem_body(request_path: str | None, exc: ProblemError) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + exc.kind if exc.kind else "about:blank",
        "title": exc.title,
        "status": exc.status,
        "detail": exc.detail,
        "instance": request_path,
    }
    if exc.errors is not None:
        body["errors"] = exc.errors
    body.update(exc.extra)
    return body


def problem_response(exc: ProblemError, path: str | None) -> JSONResponse:
    return JSONResponse(problem_body(path, exc), status_code=exc.status, headers=exc.headers,
                        media_type=PROBLEM_MEDIA_TYPE)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app fully matches on the request's path, for a 405's ``Allow``."""
    return [method for method in _METHODS
            if any(route.matches({**request.scope, "method": method})[0] == Match.FULL
                   for route in request.app.router.routes)]


# -- the one place where exceptions become responses ----------------------------------------

def register_exception_handlers(app: FastAPI) -> None:
    async def on_problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(exc, request.url.path)

    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code
        if status == 404:
            detail = f"no resource at {request.url.path}" if exc.detail in (None, "Not Found") else str(exc.detail)
        elif status == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
        else:
            detail = str(exc.detail) if exc.detail else HTTPStatus(status).phrase
        kind = {404: "not-found", 405: "method-not-allowed"}.get(status)
        headers = dict(exc.headers or {})
        if status == 405 and (allowed := allowed_methods(request)):
            # Starlette names only the methods of the first route that matched the path; other
            # routes may serve the same path (GET and POST /v1/jobs are two), and RFC 9110 wants all.
            headers["Allow"] = ", ".join(allowed)
        return problem_response(ProblemError(status, detail, kind=kind, headers=headers), request.url.path)

    async def on_request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        issues = validation_issues(exc.errors())
        count = len(issues)
        problem = unprocessable(f"the request has {count} invalid field{'s' if count != 1 else ''}", issues)
        return problem_response(problem, request.url.path)

    async def on_redis_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning("redis unavailable on %s %s: %s", request.method, request.url.path, exc)
        return problem_response(unavailable("the job store (Redis) is not reachable; retry later",
                                            kind="store-unavailable"), request.url.path)

    async def on_redis_full(request: Request, exc: Exception) -> JSONResponse:
        log.warning("redis is at its maxmemory on %s %s: %s", request.method, request.url.path, exc)
        return problem_response(unavailable(
            "the job store (Redis) is full: nothing was stored; retry later (finished jobs expire and free "
            "memory; an operator can raise Redis's maxmemory)", kind="store-full"), request.url.path)

    async def on_over_limit(request: Request, exc: QuotaExceeded) -> JSONResponse:
        return problem_response(over_limit(exc), request.url.path)

    async def on_disconnect(request: Request, exc: ClientDisconnect) -> JSONResponse:
        return problem_response(ProblemError(400, "the client disconnected before sending the whole body",
                                             kind="client-disconnect"), request.url.path)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(ProblemError(500, "an unexpected error occurred; it has been logged",
                                             kind="internal-error"), request.url.path)

    app.add_exception_handler(ProblemError, on_problem)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_request_validation)
    app.add_exception_handler(redis.exceptions.ConnectionError, on_redis_down)
    app.add_exception_handler(redis.exceptions.TimeoutError, on_redis_down)
    app.add_exception_handler(redis.exceptions.OutOfMemoryError, on_redis_full)
    app.add_exception_handler(QuotaExceeded, on_over_limit)
    app.add_exception_handler(ClientDisconnect, on_disconnect)
    app.add_exception_handler(Exception, on_unexpected)


# -- OpenAPI --------------------------------------------------------------------------------

_DESCRIPTIONS = {
    400: "Malformed body (not valid JSON/msgpack)",
    401: "Missing or invalid API key",
    404: "No such resource for this tenant",
    406: "Not acceptable",
    409: "Conflict with the resource's current state",
    413: "Body or data over a configured limit",
    415: "Unsupported Content-Type",
    422: "Invalid request: located `errors` (JSON pointers into the body)",
    429: "Over a per-tenant limit, named in `limit` (see Retry-After)",
    503: "Redis or the task queue is unavailable, or Redis is full (see Retry-After)",
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` entry documenting problem answers for a route."""
    return {s: {"description": _DESCRIPTIONS.get(s, HTTPStatus(s).phrase),
                "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
            for s in statuses}
