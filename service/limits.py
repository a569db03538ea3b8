"""Size limits: the request-body cap (enforced while the body streams in), the graphspec
limits derived from ApiSettings, and a job's step-history budget."""

from __future__ import annotations

import math
from typing import Any, Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

import graphspec
from graphspec.types import DTYPES, numpy_dtype
from worker.store import StepRecord

from .problems import ProblemError, problem_response, too_large, unprocessable
from .settings import ApiSettings

# Room for the body's own nesting around a graph document or a tensor map.
_EXTRA_DEPTH = 4


def graph_limits(settings: ApiSettings) -> graphspec.Limits:
    return graphspec.Limits(max_bytes=settings.max_body_bytes, max_nodes=settings.max_nodes,
                            max_tensor_elements=settings.max_tensor_elements,
                            max_depth=graphspec.DEFAULT_LIMITS.max_depth)


def body_limits(settings: ApiSettings) -> graphspec.Limits:
    """Limits for parsing a whole request body (a graph document may sit one level down)."""
    base = graph_limits(settings)
    return graphspec.Limits(max_bytes=base.max_bytes, max_nodes=base.max_nodes,
                            max_tensor_elements=base.max_tensor_elements, max_depth=base.max_depth + _EXTRA_DEPTH)


def declared_size(obj: Any) -> tuple[int, int]:
    """(elements, bytes) a tensor object declares by its dtype and shape, before decoding it;
    (0, 0) when they are malformed (the decoder reports that, with its location)."""
    if not isinstance(obj, Mapping):
        return 0, 0
    dtype, shape = obj.get("dtype"), obj.get("shape")
    if dtype not in DTYPES or not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        return 0, 0
    count = math.prod(shape)
    return count, count * numpy_dtype(dtype).itemsize


def declared_totals(tree: Any) -> tuple[int, int]:
    """Summed (elements, bytes) over a ``{name: tensor}`` map."""
    if not isinstance(tree, Mapping):
        return 0, 0
    elements = nbytes = 0
    for obj in tree.values():
        e, b = declared_size(obj)
        elements, nbytes = elements + e, nbytes + b
    return elements, nbytes


def _mib(n: int) -> str:
    return f"{n / 2**20:.3g} MiB"


def check_history_budget(graph: graphspec.Graph, total_steps: int, report_every: int, gradients: str,
                         settings: ApiSettings, metric_names: tuple[str, ...] = ()) -> int:
    """Refuse (422) a job whose step history would not fit: more entries than a job's stream
    keeps (``stream_maxlen``: trimming would lose steps) or more bytes than
    ``max_job_history_bytes``, bounded from the parameters' static shapes before anything runs.
    The problem says how to fit: the smallest ``report_every`` that does, or norms instead of
    full gradients. Returns the bound, in bytes (it counts toward the tenant's max_job_bytes)."""
    entries = -(-total_steps // report_every)  # every report_every-th step, and always the last
    params = {name: (numpy_dtype(spec.dtype), tuple(spec.shape)) for name, spec in graph.parameters.items()}
    per_entry = StepRecord.size_bound(params, gradients, metric_names)
    fits = min(settings.stream_maxlen, settings.max_job_history_bytes // per_entry)
    if entries <= fits:
        return entries * per_entry
    ways = []
    if fits >= 1:
        ways.append(f"set report_every to {-(-total_steps // fits)} or more")
    if gradients == "full":
        norms = StepRecord.size_bound(params, "norms", metric_names)
        ways.append(f'report gradient norms instead of full gradients (gradients: "norms", up to {norms} bytes '
                    "per entry)")
    message = (f"{total_steps} steps reported every {report_every} are {entries} step entries of up to {per_entry} "
               f"bytes ({_mib(entries * per_entry)}); a job keeps at most {settings.stream_maxlen} entries and "
               f"{_mib(settings.max_job_history_bytes)} of history: {', or '.join(ways)}")
    location = "/report_every" if fits >= 1 else "/gradients"
    raise unprocessable(message, [{"code": "history_too_large", "location": location, "message": message}],
                        kind="history-too-large", title="The step history would not fit")


class BodyTooLarge(ProblemError):
    def __init__(self, limit: int):
        problem = too_large(f"the request body is larger than {limit} bytes")
        super().__init__(problem.status, problem.detail, kind=problem.kind, title=problem.title, limit=limit)


class BodySizeLimitMiddleware:
    """Caps request bodies at ``max_bytes`` while they stream in (pure ASGI).

    A declared Content-Length over the cap is answered at once; otherwise the bytes
    arriving through ``receive`` are counted and reading past the cap raises
    :class:`BodyTooLarge`, which the problem handlers answer with a 413.
    """

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await problem_response(BodyTooLarge(self.max_bytes), scope.get("path"))(scope, receive, send)
            return

        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge as exc:  # raised where no handler saw it (e.g. read outside a route)
            if started:
                raise
            await problem_response(exc, scope.get("path"))(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
