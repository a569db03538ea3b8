"""Request bodies in JSON or msgpack (by Content-Type) and responses in JSON or msgpack (by Accept).

Both encodings are parsed by :func:`graphspec.parse` within the configured limits, so a
msgpack body carries exactly the JSON structure, with tensors as raw-bytes extensions,
and duplicate keys, NaN, runaway nesting and foreign types are refused the same way.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal, TypeVar

import msgpack
import numpy as np
from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

import graphspec
from graphspec.codec import pack
from graphspec.tensors import encode_tensor_json, encode_tensor_raw

from .problems import ProblemError, from_validation_error

Encoding = Literal["json", "msgpack"]
M = TypeVar("M", bound=BaseModel)

JSON_MEDIA_TYPE = "application/json"
MSGPACK_MEDIA_TYPE = "application/msgpack"
_MSGPACK_TYPES = frozenset({"application/msgpack", "application/x-msgpack", "application/vnd.msgpack"})


# -- request bodies -------------------------------------------------------------------------

def request_encoding(content_type: str | None) -> Encoding:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media in _MSGPACK_TYPES:
        return "msgpack"
    if not media or media == JSON_MEDIA_TYPE or (media.startswith("application/") and media.endswith("+json")):
        return "json"
    raise ProblemError(415, f"unsupported Content-Type {media!r}; send application/json or application/msgpack",
                       kind="unsupported-media-type")


async def read_tree(request: Request, limits: graphspec.Limits) -> Any:
    """The request body parsed into a plain tree (msgpack tensors as RawBytes); 400 when unreadable."""
    encoding = request_encoding(request.headers.get("content-type"))
    body = await request.body()
    try:
        return await run_in_threadpool(_parse, body, encoding, limits)
    except graphspec.GraphSpecError as exc:
        parse_failure = any(i.code == "parse_error" for i in exc.issues)
        raise ProblemError(400 if parse_failure else 422,
                           f"the body is not a readable {encoding} document: {exc.issues[0].message}",
                           kind="malformed-body", errors=exc.issues) from None


def _parse(body: bytes, encoding: Encoding, limits: graphspec.Limits) -> Any:
    if encoding == "msgpack" and body.strip() and len(body) <= limits.max_bytes:  # else parse says too large
        _check_msgpack_structure(body)
    return graphspec.parse(body, encoding, limits)


def _check_msgpack_structure(body: bytes) -> None:
    """Walk the msgpack body once without building anything (msgpack's ``skip``, in C).

    The building parse preallocates room for each container it opens, up to 10,000 slots
    (80 KB) per container before a single element has arrived: five bytes that declare a
    big array, repeated a thousand levels deep, would cost some 80 MB. A body that holds
    every element it declares cannot do that (each slot is then at least a byte of the
    body), so truncated and too-deep structures are refused here, before the parse.
    """
    unpacker = msgpack.Unpacker(max_buffer_size=len(body))
    unpacker.feed(body)
    try:
        unpacker.skip()
    except msgpack.StackError:
        issue = graphspec.Issue("too_deep", "", "document nesting exceeds msgpack's limit")
    except msgpack.OutOfData:
        issue = graphspec.Issue("parse_error", "", "not valid msgpack: it ends before the elements it declares")
    except (ValueError, msgpack.UnpackException) as exc:
        issue = graphspec.Issue("parse_error", "", f"not valid msgpack: {str(exc) or type(exc).__name__}"[:300])
    else:
        return
    raise graphspec.GraphSpecError([issue])


def validate_model(model: type[M], tree: Any) -> M:
    """A parsed body as a typed model; pydantic errors become a 422 with JSON pointers."""
    if not isinstance(tree, dict):
        raise ProblemError(422, "the body must be an object", kind="invalid-request",
                           errors=[{"code": "wrong_type", "location": "", "message": "expected an object"}])
    try:
        return model.model_validate(tree)
    except ValidationError as exc:
        raise from_validation_error(exc) from None


# -- responses ------------------------------------------------------------------------------

def accept_items(accept: str) -> list[tuple[str, float]]:
    """(media type, quality) of each entry of an Accept header, media types in lower case."""
    items = []
    for part in accept.split(","):
        fields = [f.strip() for f in part.split(";")]
        q = 1.0
        for f in fields[1:]:
            if f.startswith("q="):
                try:
                    q = float(f[2:])
                except ValueError:
                    q = 0.0
        items.append((fields[0].lower(), q))
    return items


def _accept_q(accept: str) -> tuple[float, float]:
    """(msgpack q, json q) from an Accept header; wildcards count for JSON (the default)."""
    msgpack_q = json_q = 0.0
    for media, q in accept_items(accept):
        if media in _MSGPACK_TYPES:
            msgpack_q = max(msgpack_q, q)
        elif media in (JSON_MEDIA_TYPE, "application/*", "*/*") or media.endswith("+json"):
            json_q = max(json_q, q if media == JSON_MEDIA_TYPE else q - 0.001)
    return msgpack_q, json_q


def wants_msgpack(request: Request) -> bool:
    accept = request.headers.get("accept")
    if not accept:
        return False
    msgpack_q, json_q = _accept_q(accept)
    return msgpack_q > 0 and msgpack_q >= json_q


class MsgpackResponse(Response):
    media_type = MSGPACK_MEDIA_TYPE

    def render(self, content: Any) -> bytes:
        return content if isinstance(content, (bytes, bytearray)) else pack(content)


class JSONBytesResponse(Response):
    """A response whose JSON is already encoded (e.g. a stored graph document)."""

    media_type = JSON_MEDIA_TYPE


def finite(value: Any) -> float | None:
    """A float for JSON: NaN and infinities (which JSON cannot carry) become null."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def tensors_json(arrays: dict[str, np.ndarray]) -> dict[str, dict]:
    return {name: encode_tensor_json(np.asarray(a)) for name, a in arrays.items()}


def tensors_raw(arrays: dict[str, np.ndarray]) -> dict[str, dict]:
    return {name: encode_tensor_raw(np.asarray(a)) for name, a in arrays.items()}


def negotiated_tree(request: Request, tree: Any, *, msgpack_tree: Any = None, status_code: int = 200,
                    headers: dict[str, str] | None = None) -> Response:
    """Plain data (already JSON-safe) as JSON, or (Accept: application/msgpack) ``msgpack_tree``
    (default: the same data); for responses too large to go through a model cheaply."""
    headers = {"Vary": "Accept", **(headers or {})}
    if wants_msgpack(request):
        return MsgpackResponse(tree if msgpack_tree is None else msgpack_tree, status_code=status_code,
                               headers=headers)
    body = json.dumps(tree, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    return JSONBytesResponse(body, status_code=status_code, headers=headers)


def negotiated(request: Request, model: BaseModel, *, msgpack_tree: Any = None, status_code: int = 200,
               headers: dict[str, str] | None = None, exclude_unset: bool = False) -> Response:
    """``model`` as JSON, or (Accept: application/msgpack) ``msgpack_tree`` (default: the model's data)."""
    return negotiated_tree(request, model.model_dump(mode="json", exclude_unset=exclude_unset),
                           msgpack_tree=msgpack_tree, status_code=status_code, headers=headers)
