"""Hyperparameter sweeps: create (every trial checked first), read (trials, their state, the best so
far), list, cancel (its running trials too). Trials are ordinary jobs under /v1/jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from ..bodies import negotiated
from ..deps import CeleryDep, SettingsDep, StoreDep, SweepRequestBody, TenantDep, get_tenant
from ..models import SweepList, SweepResource
from ..openapi import MSGPACK_TOO, request_body
from ..problems import not_found, problem_responses
from ..sweeps import cancel_sweep, create_sweep, sweep_resource

router = APIRouter(prefix="/v1/sweeps", tags=["sweeps"], dependencies=[Depends(get_tenant)],
                   responses=problem_responses(429))  # every route: the tenant's request rate

SweepId = Annotated[str, Path(description="a sweep id as returned by POST /v1/sweeps, 'sweep_...'")]
SWEEP_EXAMPLE = {"base": {"graph_id": "sha256:6ca7...", "data": {"...": "..."}, "optimizer": {"name": "sgd"},
                          "steps": 200, "batch_size": 16},
                 "space": {"optimizer.lr": {"log_uniform": [0.001, 1.0]}}, "method": "random", "seed": 0,
                 "max_trials": 8, "max_concurrent": 2, "early_termination": {"rule": "median", "grace_steps": 20}}


def tenant_sweep(sweep_id: SweepId, tenant: TenantDep, store: StoreDep) -> str:
    """The sweep's id if it exists and is the caller's; 404 otherwise."""
    sweep = store.get_sweep(sweep_id)
    if sweep is None or sweep.tenant != tenant:
        raise not_found("sweep", sweep_id)
    return sweep_id


TenantSweep = Annotated[str, Depends(tenant_sweep)]


@router.post(
    "", status_code=202, response_model=SweepResource, summary="Start a hyperparameter sweep",
    description="Checks the base job as POST /v1/jobs does (problems located under /base) and every trial's "
                "settings (the space's values applied: a value that cannot train is a 422 naming the trial), "
                "stores the sweep and queues its first `max_concurrent` trials. Trials are ordinary jobs; as "
                "each finishes the next is launched, and the early-termination rule stops trials that fall "
                "behind (their stop_reason: early_termination).",
    responses={202: {"description": "Started; Location is the sweep's URL", **MSGPACK_TOO},
               **problem_responses(400, 401, 413, 415, 422, 503)},
    openapi_extra=request_body("SweepRequest", SWEEP_EXAMPLE, "the base job, the search space and the budget"),
)
def start_sweep(body: SweepRequestBody, tenant: TenantDep, store: StoreDep, celery: CeleryDep,
                settings: SettingsDep, request: Request) -> Response:
    sweep_id = create_sweep(body, tenant, store, celery, settings)
    return negotiated(request, sweep_resource(store, sweep_id), status_code=202,
                      headers={"Location": f"/v1/sweeps/{sweep_id}"})


@router.get("", response_model=SweepList, summary="List sweeps", description="The caller's sweeps, newest first.",
            responses={200: MSGPACK_TOO, **problem_responses(401, 422, 503)})
def list_sweeps(tenant: TenantDep, store: StoreDep, request: Request,
                limit: Annotated[int, Query(ge=1, le=100)] = 20) -> Response:
    return negotiated(request, SweepList(sweeps=[sweep_resource(store, s) for s in store.list_sweeps(tenant, limit)
                                                 if store.get_sweep(s) is not None]))


@router.get("/{sweep_id}", response_model=SweepResource, summary="A sweep: its trials and the best so far",
            responses={200: MSGPACK_TOO, **problem_responses(401, 404, 503)})
def get_sweep(sweep_id: TenantSweep, store: StoreDep, request: Request) -> Response:
    return negotiated(request, sweep_resource(store, sweep_id))


@router.post("/{sweep_id}/cancel", response_model=SweepResource, status_code=202, summary="Cancel a sweep",
             description="No more trials are launched and the running ones are cancelled (they keep their "
                         "history); the sweep is `cancelled` once they have stopped.",
             responses={202: MSGPACK_TOO, **problem_responses(401, 404, 503)})
def cancel(sweep_id: TenantSweep, store: StoreDep, celery: CeleryDep, request: Request) -> Response:
    cancel_sweep(store, celery, sweep_id)
    return negotiated(request, sweep_resource(store, sweep_id), status_code=202)
