"""Training jobs: submit (or dry-run), read, list, follow (steps: pages, downsampled, CSV; live events),
read rows of their data, cancel, fetch the result."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool

import runtime
from worker.records import JobRecord
from worker.store import JOB_ID, STATES, TERMINAL

from ..bodies import MsgpackResponse, negotiated, negotiated_tree, tensors_json, tensors_raw, wants_msgpack
from ..datarows import MAX_ROWS, data_rows
from ..deps import CeleryDep, JobRequestBody, SettingsDep, StoreDep, TenantDep, get_tenant
from ..examples import JOB_EXAMPLE
from ..history import CSV_MEDIA_TYPE, CSV_PAGE, MAX_POINTS, MIN_POINTS, csv_lines, downsampled_page, wants_csv
from ..models import DataRows, JobList, JobResource, JobResult, JobState, StepsPage
from ..openapi import MSGPACK_TOO, REF, request_body
from ..problems import ProblemError, conflict, not_found, problem_responses
from ..streaming import MAX_STEP, job_events, resume_point
from ..submit import check_idempotency_key, dry_run, prepare_job, submit_job
from ..views import job_resource, result_params, result_resource, step_entry, step_tree_msgpack

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[Depends(get_tenant)],
                   responses=problem_responses(429))  # every route: the tenant's request rate

JobId = Annotated[str, Path(description="a job id as returned by POST /v1/jobs, 'job_...'")]
assert set(STATES) == set(JobState.__args__)  # type: ignore[attr-defined]


def tenant_job(job_id: JobId, tenant: TenantDep, store: StoreDep) -> JobRecord:
    """The job if it exists and belongs to the caller's tenant; 404 otherwise (others' jobs are invisible)."""
    job = store.job_for_tenant(tenant, job_id)
    if job is None:
        raise not_found("job", job_id)
    return job


TenantJob = Annotated[JobRecord, Depends(tenant_job)]


SUBMIT_DESCRIPTION = (
    "Validates the whole job before storing anything: the graph (inline in `graph`, or `graph_id` of a stored "
    "one), the data (decoded and checked against the graph's inputs), the training settings (runtime.TrainingSpec: "
    "the optimizer and its hyperparameters, steps, epochs, ...), the step budget (max_steps), the step history's "
    "budget and the data size (max_job_data_bytes, 413). Then stores the job and queues it. With an "
    "`Idempotency-Key` header a repeated request returns the first job (200, `Idempotent-Replayed: true`) instead "
    "of submitting another.\n\n"
    "With `?dry_run=true` every check runs and nothing is stored or queued (an inline graph is not stored either): "
    "the answer is a 200 `DryRun` saying what would be stored (graph id, settings with the optimizer's defaults "
    "filled in, data summaries, total steps), or the same problems a submission would get.")


@router.post(
    "", status_code=202, response_model=JobResource, summary="Submit a training job", description=SUBMIT_DESCRIPTION,
    responses={202: {"description": "Queued; Location is the job's URL", **MSGPACK_TOO},
               200: {"description": "A replay of an earlier request with the same Idempotency-Key (a JobResource), "
                                    "or the answer to a dry run (a DryRun)",
                     "content": {"application/json": {"schema": {"anyOf": [
                         {"$ref": REF.format(model="JobResource")}, {"$ref": REF.format(model="DryRun")}]}},
                         "application/msgpack": {}}},
               **problem_responses(400, 401, 409, 413, 415, 422, 503)},
    openapi_extra=request_body("JobRequest", JOB_EXAMPLE, "the job: graph, data, optimizer and schedule"),
)
def create_job(body: JobRequestBody, tenant: TenantDep, store: StoreDep, celery: CeleryDep, settings: SettingsDep,
               request: Request,
               idempotency_key: Annotated[str | None, Header(description="repeat-safe submission key")] = None,
               dry_run_: Annotated[bool, Query(alias="dry_run", description="check everything, store and queue "
                                                                            "nothing: answer what would be stored")]
               = False,
               ) -> Response:
    key = check_idempotency_key(idempotency_key)
    prepared = prepare_job(body, tenant, store, settings)
    if dry_run_:
        return negotiated(request, dry_run(prepared))
    job, created = submit_job(prepared, tenant, store, celery, settings, key)
    headers = {"Location": f"/v1/jobs/{job.id}"}
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
                "`Accept: application/msgpack` returns gradients as raw-bytes tensors.\n\n"
                f"**Downsampled** (`max_points`, {MIN_POINTS} to {MAX_POINTS}): every entry after `after` in one "
                "page when there are at most `max_points`; otherwise at most `max_points` real entries (without "
                "`grads`) chosen so that no spike is hidden: the history is cut into as many buckets of "
                "consecutive entries as fit, and each bucket keeps the entries holding the minimum and the "
                "maximum of `loss`, of `eval_loss` and of each gradient norm; the first and the last entry are "
                "always kept. Then `downsampled` is true and `next_after` null (continue a live job after the "
                "last entry's step). `limit` does not apply.\n\n"
                "**CSV** (`Accept: text/csv`): the whole history after `after` as a download "
                "(`Content-Disposition: attachment; filename=\"<job_id>-steps.csv\"`), streamed a page at a "
                "time: a header `step,time,loss,eval_loss,grad_norm:<parameter>...`, then a row per entry; "
                "an absent eval loss is empty, non-finite numbers are `nan`, `inf`, `-inf`. `limit` and "
                "`max_points` do not apply.",
    responses={200: {"content": {"application/msgpack": {}, CSV_MEDIA_TYPE: {"schema": {"type": "string"}}},
                     "headers": {"Content-Disposition": {
                         "description": "with Accept: text/csv: attachment; filename=\"<job_id>-steps.csv\"",
                         "schema": {"type": "string"}}}},
               **problem_responses(401, 404, 422, 503)},
)
def read_steps(job: TenantJob, store: StoreDep, request: Request,
               after: Annotated[int, Query(ge=0, le=MAX_STEP, description="return steps after this one")] = 0,
               limit: Annotated[int, Query(ge=1, le=1000)] = 100,
               max_points: Annotated[int | None, Query(ge=MIN_POINTS, le=MAX_POINTS, description=(
                   "downsample to at most this many entries, keeping every bucket's extremes"))] = None,
               ) -> Response:
    finished = job.state in TERMINAL
    if wants_csv(request.headers.get("accept")):
        first = store.read_steps(job.id, after=after, limit=CSV_PAGE)  # a Redis failure is still a 503 here
        return StreamingResponse(csv_lines(store, job.id, first, after=after), media_type=CSV_MEDIA_TYPE,
                                 headers={"Content-Disposition": f'attachment; filename="{job.id}-steps.csv"',
                                          "Vary": "Accept"})
    if max_points is not None:
        # plain data, not a StepsPage: thousands of entries would cost more to validate than to read
        return negotiated_tree(request, downsampled_page(store, job.id, after=after, max_points=max_points,
                                                         finished=finished))
    records = store.read_steps(job.id, after=after, limit=limit)
    if len(records) == limit or not finished:
        next_after: int | None = records[-1].step if records else after
    else:
        next_after = None
    if wants_msgpack(request):
        tree = {"steps": [step_tree_msgpack(r) for r in records], "next_after": next_after, "downsampled": False}
        return MsgpackResponse(tree, headers={"Vary": "Accept"})
    page = StepsPage(steps=[step_entry(r) for r in records], next_after=next_after, downsampled=False)
    return negotiated(request, page, exclude_unset=True)


@router.get(
    "/{job_id}/data", response_model=DataRows,
    summary="Read rows of the job's training data",
    description=f"Rows `offset` to `offset + limit` (at most {MAX_ROWS}) of the training data the job was "
                "submitted with, as a tensor map: every per-example input (its first declared dimension is "
                "symbolic) sliced along axis 0, every other input whole; `examples` is the number of rows in "
                "all. An offset at or past the last row is a 422. `Accept: application/msgpack` returns raw-bytes "
                "tensors.",
    responses={200: MSGPACK_TOO, **problem_responses(401, 404, 422, 503)},
)
def read_data(job: TenantJob, store: StoreDep, request: Request,
              offset: Annotated[int, Query(ge=0, le=MAX_STEP, description="the first row")] = 0,
              limit: Annotated[int, Query(ge=1, le=MAX_ROWS, description="rows to return")] = 10) -> Response:
    graph = store.get_graph(job.tenant, job.graph_id)
    blob = store.get_blob(job.id, "data")
    if graph is None or blob is None:
        raise not_found("data of job", job.id)
    rows = data_rows(graph, blob, offset, limit)
    head = {"examples": rows.examples, "offset": rows.offset, "count": rows.count}
    if wants_msgpack(request):
        return MsgpackResponse({**head, "data": tensors_raw(rows.arrays)}, headers={"Vary": "Accept"})
    return negotiated(request, DataRows(**head, data=tensors_json(rows.arrays)))


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
async def stream_events(job_id: JobId, tenant: TenantDep, store: StoreDep, request: Request,
                        after: Annotated[int, Query(ge=0, le=MAX_STEP, description="start after this step")] = 0,
                        last_event_id: Annotated[str | None, Header(description="resume after this step")] = None,
                        ) -> EventSourceResponse:
    job = await run_in_threadpool(store.job_for_tenant, tenant, job_id)
    if job is None:
        raise not_found("job", job_id)
    events = job_events(store, request.url.path, job_id, resume_point(after, last_event_id),
                        client=request.app.state.async_redis)
    return EventSourceResponse(events, ping=15, headers={"Cache-Control": "no-cache"})


@router.post(
    "/{job_id}/cancel", status_code=202, response_model=JobResource,
    summary="Cancel a job",
    description="A queued job is cancelled at once; a running one moves to `cancelling` and its worker stops "
                "at the next step. Cancelling a finished job is a 409.",
    responses={202: MSGPACK_TOO, **problem_responses(401, 404, 409, 503)},
)
def cancel_job(job: TenantJob, store: StoreDep, request: Request) -> Response:
    if job.state in TERMINAL:
        raise conflict(f"job {job.id} has already finished ({job.state})", state=job.state)
    state = store.request_cancel(job.id)
    current = store.get_job(job.id) or job
    if state in TERMINAL and state != "cancelled":
        raise conflict(f"job {job.id} finished ({state}) before it could be cancelled", state=state)
    return negotiated(request, job_resource(current), status_code=202)


@router.delete(
    "/{job_id}", status_code=204,
    summary="Delete a finished job",
    description="Deletes a succeeded, failed or cancelled job and everything it stored (its data, step "
                "history, checkpoint and result), and stops counting its bytes toward the tenant's "
                "`max_job_bytes`. A queued or running job is a 409: cancel it first. Finished jobs are "
                "deleted by themselves `retention_s` after they end.",
    responses={204: {"description": "Deleted"}, **problem_responses(401, 404, 409, 503)},
)
def delete_job(job: TenantJob, tenant: TenantDep, store: StoreDep) -> Response:
    deleted, state = store.delete_job(tenant, job.id)
    if not deleted:
        if state is None:
            raise not_found("job", job.id)
        raise conflict(f"job {job.id} is {state}: only a finished job can be deleted; cancel it first "
                       f"(POST /v1/jobs/{job.id}/cancel)", state=state)
    return Response(status_code=204)


@router.get(
    "/{job_id}/result", response_model=JobResult,
    summary="Fetch the trained parameters",
    description="The final loss, step and epoch counts, last evaluation loss and the trained parameters "
                "(JSON tensors; with `Accept: application/msgpack`, the stored msgpack blob with raw-bytes "
                "tensors). A 409 until the job has succeeded.",
    responses={200: {"content": {"application/msgpack": {}}}, **problem_responses(401, 404, 409, 503)},
)
def read_result(job: TenantJob, store: StoreDep, request: Request) -> Response:
    if job.state != "succeeded":
        raise conflict(f"job {job.id} has no result: it is {job.state}", state=job.state)
    blob = store.get_blob(job.id, "result")
    if blob is None:
        raise not_found("result of job", job.id)
    if wants_msgpack(request):
        return MsgpackResponse(blob, headers={"Vary": "Accept"})
    return negotiated(request, result_resource(blob))


ONNX_MEDIA_TYPE = "application/onnx"


@router.get(
    "/{job_id}/model.onnx", response_class=Response,
    summary="Download the trained model as ONNX",
    description="The inference part of the job's graph (every output but the loss, the inputs they read) with "
                "the trained parameters as initializers, as an ONNX model (opset 18; docs/onnx.md). With "
                "`?keep_loss=true` the loss output too, with the targets and labels it reads as inputs. A 409 until "
                "the job has succeeded; a 501 when the server was installed without the onnx extra; a 422 naming "
                "the node when the graph has no ONNX form (e.g. its only output is the loss and keep_loss is false).",
    responses={200: {"description": "The model", "content": {ONNX_MEDIA_TYPE: {}}},
               **problem_responses(401, 404, 409, 422, 501, 503)},
)
def read_model_onnx(job: TenantJob, store: StoreDep,
                    keep_loss: Annotated[bool, Query(description="also export the loss output, with the targets "
                                                                 "and labels it reads as model inputs")] = False,
                    ) -> Response:
    if job.state != "succeeded":
        raise conflict(f"job {job.id} has no trained model: it is {job.state}", state=job.state)
    blob, graph = store.get_blob(job.id, "result"), store.get_graph(job.tenant, job.graph_id)
    if blob is None or graph is None:
        raise not_found("result of job", job.id)
    try:
        model = runtime.to_onnx(graph, result_params(blob), keep_loss=keep_loss)
    except runtime.ExportError as exc:
        if "onnx package" in str(exc):
            raise ProblemError(501, str(exc), kind="onnx-unavailable") from None
        raise ProblemError(422, str(exc), kind="not-exportable") from None
    headers = {"Content-Disposition": f'attachment; filename="{job.id}.onnx"'}
    return Response(model.SerializeToString(), media_type=ONNX_MEDIA_TYPE, headers=headers)
