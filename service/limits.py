"""Size limits: the request-body cap (enforced while the body streams in) and the
graphspec limits derived from Settings."""

from __future__ import annotations

import math
from typing import Any, Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

import graphspec
from graphspec.types import DTYPES, numpy_dtype
from worker.settings import Settings

from .problems import ProblemError, problem_response, too_large

# Room for the body's own nesting around a graph document or a tensor map.
_EXTRA_DEPTH = 4


def graph_limits(settings: Settings) -> graphspec.Limits:
    return graphspec.Limits(max_bytes=settings.max_body_bytes, max_nodes=settings.max_nodes,
                            max_tensor_elements=settings.max_tensor_elements,
                            max_depth=graphspec.DEFAULT_LIMITS.max_depth)


def body_limits(settings: Settings) -> graphspec.Limits:
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
