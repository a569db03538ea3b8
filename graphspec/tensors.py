"""Tensor encoding: one model ``{dtype, shape, data}``, three carriers.

* JSON, readable: ``data`` is nested lists (finite numbers only; JSON has no NaN).
* JSON, compact: ``base64`` holds the raw little-endian bytes instead of ``data``.
* msgpack: ``data`` is a msgpack extension (code :data:`TENSOR_EXT_CODE`) holding the
  raw little-endian bytes, decoded with ``np.frombuffer`` (no per-element Python work).

Decoding checks everything before allocating: dtype, shape, element count against
the caller's limit, byte length against dtype x shape, and finiteness.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import Issue, pointer
from .structure import Any_, Enum, Field, Int, List, Obj, Ref, Str, exactly_one_of
from .types import DTYPES, FLOAT_DTYPES, numpy_dtype

TENSOR_EXT_CODE = 1
MAX_TENSOR_RANK = 8
MAX_TENSOR_DIM = 2**40
# Arrays up to this many elements are written as readable nested lists in JSON.
INLINE_JSON_ELEMENTS = 256
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_FLOAT_INT_LIMIT = 2**1024


@dataclass(frozen=True)
class RawBytes:
    """Marker for tensor bytes that arrived as a msgpack extension."""

    data: bytes


# The structural view of a tensor (what the JSON Schema describes); values are checked
# by decode_tensor, which knows the caller's size limits.
TENSOR = Ref("tensor", Obj(
    {
        "dtype": Field(Enum(DTYPES), required=True),
        "shape": Field(List(Int(minimum=0, maximum=MAX_TENSOR_DIM), max_items=MAX_TENSOR_RANK), required=True),
        "data": Field(Any_(description="nested lists matching shape (JSON), or the raw-bytes "
                                       f"extension type {TENSOR_EXT_CODE} (msgpack)")),
        "base64": Field(Str(pattern=r"[A-Za-z0-9+/]*={0,2}",
                            description="raw little-endian bytes, base64 (JSON only)")),
    },
    description="A tensor: exactly one of data or base64.",
    rule=exactly_one_of("data", "base64"),
    extra_schema={"oneOf": [{"required": ["data"]}, {"required": ["base64"]}]},
))


class TensorDecodeError(Exception):
    def __init__(self, issue: Issue):
        super().__init__(issue.message)
        self.issue = issue


def _fail(code: str, loc: str, message: str, hint: str | None = None):
    raise TensorDecodeError(Issue(code, loc, message, hint))


def decode_tensor(obj: Any, loc: str, *, max_elements: int, allow_nonfinite: bool = False) -> np.ndarray:
    """Decode a tensor object found at ``loc``; raise TensorDecodeError with a located issue."""
    if not isinstance(obj, dict):
        _fail("wrong_type", loc, "expected a tensor object {dtype, shape, data}")
    unknown = set(obj) - {"dtype", "shape", "data", "base64"}
    if unknown:
        _fail("unknown_field", loc + pointer(sorted(unknown)[0]), f"unknown tensor field {sorted(unknown)[0]!r}")
    dtype = obj.get("dtype")
    if dtype not in DTYPES:
        _fail("invalid_dtype", loc + "/dtype", f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}"[:200])
    shape = obj.get("shape")
    if not isinstance(shape, list) or len(shape) > MAX_TENSOR_RANK or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        _fail("invalid_shape", loc + "/shape",
              f"tensor shape must be a list of at most {MAX_TENSOR_RANK} non-negative integers")
    count = 1
    for d in shape:
        count *= d
    if count > max_elements:
        _fail("too_large", loc + "/shape", f"tensor has {count} elements; the limit is {max_elements}")
    has_data, has_b64 = "data" in obj, "base64" in obj
    if has_data == has_b64:
        _fail("conflicting_fields" if has_data else "missing_field", loc,
              "a tensor needs exactly one of 'data' or 'base64'")
    if has_b64:
        text = obj["base64"]
        if not isinstance(text, str):
            _fail("wrong_type", loc + "/base64", "base64 must be a string")
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            _fail("invalid_base64", loc + "/base64", "not valid base64")
        if base64.b64encode(raw).decode("ascii") != text:  # one spelling per byte string: no stray padding
            _fail("invalid_base64", loc + "/base64", "not canonical base64 (padding must be exact)")
        array = _from_bytes(raw, dtype, shape, loc + "/base64")
    elif isinstance(obj["data"], RawBytes):
        array = _from_bytes(obj["data"].data, dtype, shape, loc + "/data")
    elif isinstance(obj["data"], (bytes, bytearray)):
        array = _from_bytes(bytes(obj["data"]), dtype, shape, loc + "/data")
    else:
        _check_nested(obj["data"], dtype, tuple(shape), loc + "/data")
        with np.errstate(over="ignore"):  # float32 overflow is reported below, where it happens
            array = np.array(obj["data"], dtype=numpy_dtype(dtype)).reshape(shape)
        if dtype == "float32":
            _check_float32_range(obj["data"], array, loc + "/data")
    if dtype in FLOAT_DTYPES and not allow_nonfinite:
        check_finite(array, loc + ("/base64" if has_b64 else "/data"), nested=has_data and isinstance(obj["data"], list))
    return array


def check_finite(array: np.ndarray, loc: str, *, nested: bool = False) -> None:
    """Refuse NaN/inf; nested-list tensors are located at the element, binary ones name its index."""
    if not array.size or np.isfinite(array).all():
        return
    index = tuple(int(i) for i in np.unravel_index(int(np.argmin(np.isfinite(array))), array.shape))
    where = loc + "".join(pointer(i) for i in index) if nested else loc
    _fail("non_finite", where, f"tensor values must be finite: element {list(index)} is {array[index]}")


def _from_bytes(raw: bytes, dtype: str, shape: list[int], loc: str) -> np.ndarray:
    dt = numpy_dtype(dtype)
    expected = dt.itemsize
    for d in shape:
        expected *= d
    if len(raw) != expected:
        _fail("byte_length", loc,
              f"{len(raw)} bytes do not match {dtype} x {shape} ({expected} bytes)")
    array = np.frombuffer(raw, dtype=dt).reshape(shape)
    if dtype == "bool" and array.size and array.view(np.uint8).max() > 1:
        _fail("invalid_value", loc, "bool tensor bytes must be 0 or 1")
    return array


def _check_float32_range(data: Any, array: np.ndarray, loc: str) -> None:
    """A finite number beyond float32's range would silently become inf: say so where it is."""
    overflow = np.isinf(array) & np.isfinite(np.array(data, dtype=np.float64).reshape(array.shape))
    if overflow.any():
        index = tuple(int(i) for i in np.unravel_index(int(np.argmax(overflow)), array.shape))
        _fail("too_large", loc + "".join(pointer(i) for i in index),
              f"{float(np.array(data, dtype=np.float64).reshape(array.shape)[index])!r} is outside the float32 range")


def _element_ok(value: Any, dtype: str) -> bool:
    if dtype == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if dtype == "int64":
        return isinstance(value, int) and _INT64_MIN <= value <= _INT64_MAX
    if isinstance(value, int):
        return -_FLOAT_INT_LIMIT < value < _FLOAT_INT_LIMIT  # beyond this float() overflows
    return isinstance(value, float)


def _check_nested(data: Any, dtype: str, shape: tuple[int, ...], loc: str) -> None:
    """Walk nested lists so a ragged row or wrong element is reported where it is."""
    if not shape:
        if not _element_ok(data, dtype):
            _fail("wrong_type", loc, f"expected a {dtype} element, got {type(data).__name__} {data!r}"[:200])
        return
    if not isinstance(data, list):
        _fail("invalid_shape", loc, f"expected a list of {shape[0]} item(s) here (shape {list(shape)})")
    if len(data) != shape[0]:
        _fail("invalid_shape", loc, f"expected {shape[0]} item(s) here, got {len(data)}")
    inner = shape[1:]
    if not inner:  # the last level: elements, checked without a pointer each (built only for an error)
        for i, item in enumerate(data):
            if not _element_ok(item, dtype):
                _fail("wrong_type", loc + pointer(i), f"expected a {dtype} element, got {type(item).__name__} "
                                                      f"{item!r}"[:200])
        return
    for i, item in enumerate(data):
        _check_nested(item, dtype, inner, loc + pointer(i))


def encode_tensor_json(array: np.ndarray, *, inline_limit: int = INLINE_JSON_ELEMENTS) -> dict:
    """Nested lists when small and finite, base64 of little-endian bytes otherwise."""
    dtype = _dtype_name(array)
    arr = np.asarray(array, dtype=numpy_dtype(dtype))
    out: dict = {"dtype": dtype, "shape": list(arr.shape)}
    finite = dtype not in FLOAT_DTYPES or bool(np.isfinite(arr).all())
    if arr.size <= inline_limit and finite:
        out["data"] = arr.tolist()
    else:
        out["base64"] = base64.b64encode(arr.tobytes(order="C")).decode("ascii")
    return out


def encode_tensor_raw(array: np.ndarray) -> dict:
    """The msgpack form: ``data`` is :class:`RawBytes` (packed as the tensor extension)."""
    dtype = _dtype_name(array)
    arr = np.asarray(array, dtype=numpy_dtype(dtype))
    return {"dtype": dtype, "shape": list(arr.shape), "data": RawBytes(arr.tobytes(order="C"))}


def _dtype_name(array: np.ndarray) -> str:
    name = np.asarray(array).dtype.name
    if name not in DTYPES:
        raise TypeError(f"dtype {name} is not a graphspec dtype ({', '.join(DTYPES)})")
    return name
