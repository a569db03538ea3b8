"""Liveness and readiness probes (no authentication)."""

from __future__ import annotations

import logging

import anyio
from fastapi import APIRouter

from ..deps import CeleryDep, StoreDep
from ..models import Health, Ready
from ..problems import problem_responses, unavailable

router = APIRouter(tags=["health"])
log = logging.getLogger("service.health")

PING_TIMEOUT_S = 1.0
CHECK_DEADLINE_S = 5.0


@router.get("/healthz", response_model=Health, summary="Liveness",
            description="200 while the process serves requests; checks nothing else.")
async def healthz() -> Health:
    return Health()


@router.get("/readyz", response_model=Ready, summary="Readiness",
            description="200 when Redis answers PING and at least one Celery worker answers a control ping; "
                        "otherwise a 503 problem whose `checks` say which is missing.",
            responses=problem_responses(503))
async def readyz(store: StoreDep, celery: CeleryDep) -> Ready:
    checks = {"redis": await _check(store.ping, "redis"), "workers": "skipped (redis is down)"}
    if checks["redis"] == "ok":
        checks["workers"] = await _check(lambda: _workers(celery), "workers")
    if any(v != "ok" for v in checks.values()):
        failing = ", ".join(f"{k}: {v}" for k, v in checks.items() if v != "ok")
        raise unavailable(f"not ready ({failing})", kind="not-ready", checks=checks)
    return Ready(checks=checks)


def _workers(celery) -> str:
    replies = celery.control.ping(timeout=PING_TIMEOUT_S) or []
    return "ok" if replies else "no Celery worker answered a ping"


async def _check(fn, name: str) -> str:
    try:
        with anyio.fail_after(CHECK_DEADLINE_S):
            result = await anyio.to_thread.run_sync(fn, abandon_on_cancel=True)
    except TimeoutError:
        return f"no answer within {CHECK_DEADLINE_S:g}s"
    except Exception as exc:  # noqa: BLE001 - a probe reports, it does not fail
        log.warning("readiness check %s failed: %s", name, exc)
        return f"unreachable ({type(exc).__name__})"
    if result is True or result == "ok":
        return "ok"
    return str(result)
