"""Training jobs: submit, read, list, follow (steps and live events), cancel, fetch the result."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from worker.store import JOB_ID, STATES, TERMINAL

from ..bodies import MsgpackResponse, negotiated, wants_msgpack
from ..deps import CeleryDep, JobRequestBody, SettingsDep, StoreDep, TenantDep, get_tenant
from ..examples import JOB_EXAMPLE
from ..models import JobList, JobResource, JobResult, JobState, StepsPage
from ..openapi import request_body
from ..problems import ProblemError, conflict, not_found, problem_responses
from ..streaming import MAX_STEP, job_events, resume_point
from ..submit import check_idempotency_key, prepare_job, submit_job
from ..views import job_resource, result_resource, step_entry, step_tree_msgpack

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[Depends(get_tenant)])

JobId = Annotated[str, Path(description="a job id as returned by POST /v1/jobs, 'job_...'")]
assert set(STATES) == set(JobState.__args__)  # type: ignore[attr-defined]


def tenant_job(job_id: JobId, tenant: TenantDep, store: StoreDep) -> dict[str, str]:
    """The job if it exists and belongs to the caller's tenant; 404 otherwise (others' jobs are invisible)."""
    job = store.job_for_tenant(tenant, job_id)
    if job is None:
        raise not_found("job", job_id)
    return job


TenantJob = Annotated[dict[str, str], Depends(tenant_job)]


# Every job route answers msgpack too when asked (Accept: application/msgpack).
MSGPACK_TOO = {"content": {"application/msgpack": {}}}


@router.post(
    "", status_code=202, response_model=JobResource,
    summary="Submit a training job",
    description="Validates the whole job before storing anything: the graph (inline in `graph`, or `graph_id` of "
                "a stored one), the data (decoded and checked against the graph's inputs), the optimizer, the "
                "step budget (max_steps) and the data size (max_job_data_bytes, 413). Then stores the job and "
                "queues it. With an `Idempotency-Key` header a repeated request returns the first job "
                "(200, `Idempotent-Replayed: true`) instead of submitting another.",
    responses={202: {"description": "Queued; Location is the job's URL", **MSGPACK_TOO},
               200: {"description": "Replay of an earlier request with the same Idempotency-Key",
                     "model": JobResource, **MSGPACK_TOO},
               **problem_responses(400, 401, 409, 413, 415, 422, 503)},
    openapi_extra=request_body("JobRequest", JOB_EXAMPLE, "the job: graph, data, optimizer and schedule"),
)
def create_job(body: JobRequestBody, tenant: TenantDep, store: StoreDep, celery: CeleryDep, settings: SettingsDep,
               request: Request,
               idempotency_key: Annotated[str | None, Header(description="repeat-safe submission key")] = None,
               ) -> Response:
    key = check_idempotency_key(idempotency_key)
    prepared = prepare_job(body, tenant, store, settings)
    job, created = submit_job(prepared, tenant, store, celery, settings, key)
    headers = {"Location": f"/v1/jobs/{job['id']}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return negotiated(request, job_resource(job), status_code=202 if created else 200, headers=headers)


@router.get(
    "", response_model=JobList,
    summary="List jobs",
    description="The caller's jobs, newest first, optionally only those in one state. Pages are linked by "
                "`next_cursor` (an opaque position after the last job on the page), passed back as `?cursor=`.",
    responses={200: MSGPACK_TOO, **problem_responses(401, 422, 503)},
)
def list_jobs(tenant: TenantDep, store: StoreDep, request: Request,
              state: Annotated[JobState | None, Query(description="only jobs in this state")] = None,
              limit: Annotated[int, Query(ge=1, le=1000)] = 50,
              cursor: Annotated[str | None, Query(description="next_cursor from the previous page")] = None,
              ) -> Response:
    before = _cursor(cursor)
    jobs, last = store.list_jobs(tenant, state=state, before=before, limit=limit)
    return negotiated(request, JobList(jobs=[job_resource(j) for j in jobs],
                                       next_cursor=None if last is None else f"{last[0]!r}/{last[1]}"))


def _cursor(cursor: str | None) -> tuple[float, str] | None:
    """``next_cursor`` is "<creation time>/<job id>" of the last job on the previous page."""
    if cursor is None:
        return None
    when, _, job_id = cursor.partition("/")
    try:
        value = float(when)
    except ValueError:
        value = float("nan")
    if value != value or value in (float("inf"), float("-inf")) or (job_id and not JOB_ID.fullmatch(job_id)):
        raise ProblemError(422, "cursor must be a next_cursor value from a previous page", kind="invalid-request",
                           errors=[{"code": "invalid_cursor", "location": "/query/cursor",
                                    "message": "not a cursor returned by this API"}])
    return value, job_id


@router.get(
    "/{job_id}", response_model=JobResource,
    summary="Read a job",
    description="The job's state, progress (step, epoch, latest loss), timestamps, error and links.",
    responses={200: MSGPACK_TOO, **problem_responses(401, 404, 503)},
)
def read_job(job: TenantJob, request: Request) -> Response:
    return negotiated(request, job_resource(job))


@router.get(
    "/{job_id}/steps", response_model=StepsPage,
    summary="Read the job's step history",
    description="Step entries (loss, gradient norms, eval loss, time, and gradients for jobs submitted with "
                "`gradients: full`) after step `after`, at most `limit` of them. `next_after` is where the next "
                "page starts; it is null once the job has finished and every step has been returned. "
                "`Accept: application/msgpack` returns gradients as raw-bytes tensors.",
    responses={200: {"content": {"application/msgpack": {}}}, **problem_responses(401, 404, 422, 503)},
)
def read_steps(job: TenantJob, store: StoreDep, request: Request,
               after: Annotated[int, Query(ge=0, le=MAX_STEP, description="return steps after this one")] = 0,
               limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Response:
    records = store.read_steps(job["id"], after=after, limit=limit)
    finished = job["state"] in TERMINAL
    if len(records) == limit or not finished:
        next_after: int | None = records[-1].step if records else after
    else:
        next_after = None
    if wants_msgpack(request):
        tree = {"steps": [step_tree_msgpack(r) for r in records], "next_after": next_after}
        return MsgpackResponse(tree, headers={"Vary": "Accept"})
    page = StepsPage(steps=[step_entry(r) for r in records], next_after=next_after)
    return negotiated(request, page, exclude_unset=True)


@router.get(
    "/{job_id}/events", response_class=EventSourceResponse,
    summary="Follow the job live (Server-Sent Events)",
    description="A `text/event-stream` of step entries as the worker reports them: `event: step`, `id: <step>`, "
                "data = the step entry as JSON. Resumable: a reconnecting client sends `Last-Event-ID` (or "
                "`?after=`) and continues after that step. When the job has finished and every step has been "
                "sent, an `event: end` carries the job resource and the stream closes.",
    responses={200: {"description": "An event stream", "content": {"text/event-stream": {}}},
               **problem_responses(401, 404, 422, 503)},
)
async def stream_events(job_id: JobId, tenant: TenantDep, store: StoreDep, settings: SettingsDep, request: Request,
                        after: Annotated[int, Query(ge=0, le=MAX_STEP, description="start after this step")] = 0,
                        last_event_id: Annotated[str | None, Header(description="resume after this step")] = None,
                        ) -> EventSourceResponse:
    job = await run_in_threadpool(store.job_for_tenant, tenant, job_id)
    if job is None:
        raise not_found("job", job_id)
    events = job_events(store, settings, request.url.path, job_id, resume_point(after, last_event_id))
    return EventSourceResponse(events, ping=15, headers={"Cache-Control": "no-cache"})


@router.post(
    "/{job_id}/cancel", status_code=202, response_model=JobResource,
    summary="Cancel a job",
    description="A queued job is cancelled at once; a running one moves to `cancelling` and its worker stops "
                "at the next step. Cancelling a finished job is a 409.",
    responses={202: MSGPACK_TOO, **problem_responses(401, 404, 409, 503)},
)
def cancel_job(job: TenantJob, store: StoreDep, request: Request) -> Response:
    if job["state"] in TERMINAL:
        raise conflict(f"job {job['id']} has already finished ({job['state']})", state=job["state"])
    state = store.request_cancel(job["id"])
    current = store.get_job(job["id"]) or job
    if state in TERMINAL and state != "cancelled":
        raise conflict(f"job {job['id']} finished ({state}) before it could be cancelled", state=state)
    return negotiated(request, job_resource(current), status_code=202)


@router.get(
    "/{job_id}/result", response_model=JobResult,
    summary="Fetch the trained parameters",
    description="The final loss, step and epoch counts, last evaluation loss and the trained parameters "
                "(JSON tensors; with `Accept: application/msgpack`, the stored msgpack blob with raw-bytes "
                "tensors). A 409 until the job has succeeded.",
    responses={200: {"content": {"application/msgpack": {}}}, **problem_responses(401, 404, 409, 503)},
)
def read_result(job: TenantJob, store: StoreDep, request: Request) -> Response:
    if job["state"] != "succeeded":
        raise conflict(f"job {job['id']} has no result: it is {job['state']}", state=job["state"])
    blob = store.get_blob(job["id"], "result")
    if blob is None:
        raise not_found("result of job", job["id"])
    if wants_msgpack(request):
        return MsgpackResponse(blob, headers={"Vary": "Accept"})
    return negotiated(request, result_resource(blob))
