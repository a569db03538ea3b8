"""Tensor encoding: the three carriers (JSON nested lists, JSON base64, msgpack ext 1) and decoding errors.

The wire contract checked here is the one stated in graphspec/tensors.py:

* JSON readable: ``{"dtype", "shape", "data": nested lists}`` (finite values only);
* JSON compact: ``{"dtype", "shape", "base64": <raw little-endian bytes>}``;
* msgpack: ``data`` is extension type 1 holding the raw little-endian bytes.

Expected bytes are computed independently of graphspec (numpy ``<`` dtypes, the
``base64`` module, a hand-written msgpack ``default``), so a carrier that changed
byte order, dropped NaN payload bits or turned -0.0 into 0.0 would fail here.
"""

from __future__ import annotations

import base64
import json
import math
import struct
import tracemalloc

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import graphspec
from graphspec import arrays_equal, decode_tensor, encode_tensor_json, encode_tensor_raw
from graphspec.tensors import INLINE_JSON_ELEMENTS, TENSOR_EXT_CODE, RawBytes, TensorDecodeError

LOC = "/x"
BIG = 1 << 40  # max_elements used when the limit is not what a test is about

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- helpers -----------------------------------------------------------------------------


def le(dtype: str) -> np.dtype:
    """The wire dtype, built without graphspec: little-endian numpy dtype of a format dtype name."""
    return np.dtype(dtype).newbyteorder("<")


def le_bytes(arr: np.ndarray) -> bytes:
    """The expected raw carrier bytes, computed without graphspec.

    Floats go through their same-width unsigned integer view so that the byte swap
    (if any) cannot touch NaN payloads: integer casts are exact.
    """
    if arr.dtype.kind == "f":
        bits = arr.view(np.dtype(f"u{arr.dtype.itemsize}").newbyteorder(arr.dtype.byteorder))
        return np.ascontiguousarray(bits.astype(f"<u{arr.dtype.itemsize}")).tobytes()
    return np.ascontiguousarray(arr.astype(le(arr.dtype.name))).tobytes()


def pack_tensor(tree: dict) -> bytes:
    """msgpack with RawBytes written as extension type 1, independently of graphspec.dumps."""

    def default(obj):
        if isinstance(obj, RawBytes):
            return msgpack.ExtType(1, obj.data)
        raise TypeError(type(obj).__name__)

    return msgpack.packb(tree, default=default, use_bin_type=True)


def via_json_text(obj: dict) -> dict:
    """Serialize a JSON tensor object to bytes and read it back with graphspec's JSON reader."""
    text = json.dumps(obj, allow_nan=False)  # the carrier must be strict JSON
    return graphspec.parse(text.encode("utf-8"), "json")


def decode(obj, **kw) -> np.ndarray:
    kw.setdefault("max_elements", BIG)
    return decode_tensor(obj, LOC, **kw)


def decode_error(obj, **kw):
    kw.setdefault("max_elements", BIG)
    with pytest.raises(TensorDecodeError) as info:
        decode_tensor(obj, LOC, **kw)
    return info.value.issue


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-for-bit equality of the little-endian forms (independent of graphspec.arrays_equal)."""
    return a.shape == b.shape and a.dtype.name == b.dtype.name and le_bytes(a) == le_bytes(b)


def first_nonfinite_index(arr: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])


def assert_points_at_element(issue, carrier_location: str, index: tuple[int, ...]) -> None:
    """A non-finite value in a *binary* carrier (base64, msgpack bytes) has no JSON pointer of its own.

    Two locations are accepted: the element's logical pointer under ``data`` (``/x/data/1/2``),
    or the carrier field itself (``/x/base64``) with the element's index named in the message.
    """
    logical = f"{LOC}/data" + "".join(f"/{i}" for i in index)
    assert issue.code == "non_finite"
    if issue.location != logical:
        assert issue.location == carrier_location, issue
        assert str(list(index)) in issue.message or str(index) in issue.message, issue


# -- strategies --------------------------------------------------------------------------

SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)
NONEMPTY_SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=1, max_side=4)

F32_SPECIALS = [0.0, -0.0, 1.0, -1.0, float(np.finfo(np.float32).max), -float(np.finfo(np.float32).max),
                float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).smallest_subnormal),
                -float(np.finfo(np.float32).smallest_subnormal), float(np.finfo(np.float32).tiny) / 3]
F64_SPECIALS = [0.0, -0.0, 1.0, -1.0, float(np.finfo(np.float64).max), -float(np.finfo(np.float64).max),
                float(np.finfo(np.float64).tiny), 5e-324, -5e-324, 2.2250738585072e-309]
I64_SPECIALS = [0, -1, 1, -(2**63), 2**63 - 1, 2**53 + 1, -(2**53) - 1]


def finite_elements(dtype: str):
    if dtype == "float32":
        return st.one_of(st.sampled_from(F32_SPECIALS),
                         st.floats(width=32, allow_nan=False, allow_infinity=False, allow_subnormal=True))
    if dtype == "float64":
        return st.one_of(st.sampled_from(F64_SPECIALS),
                         st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=True))
    if dtype == "int64":
        return st.one_of(st.sampled_from(I64_SPECIALS), st.integers(-(2**63), 2**63 - 1))
    return st.booleans()


@st.composite
def finite_arrays(draw, shapes=SHAPES):
    dtype = draw(st.sampled_from(graphspec.DTYPES))
    order = draw(st.sampled_from("<>")) if dtype != "bool" else "|"
    np_dtype = np.dtype(dtype).newbyteorder(order) if order != "|" else np.dtype(dtype)
    return draw(hnp.arrays(np_dtype, draw(shapes), elements=finite_elements(dtype)))


@st.composite
def nan_arrays(draw):
    """Float arrays with arbitrary bit patterns and at least one NaN with a random payload."""
    dtype = draw(st.sampled_from(graphspec.FLOAT_DTYPES))
    width = np.dtype(dtype).itemsize * 8
    order = draw(st.sampled_from("<>"))
    shape = draw(NONEMPTY_SHAPES)
    bits = draw(hnp.arrays(np.dtype(f"u{width // 8}").newbyteorder(order), shape))
    exp_bits = 8 if width == 32 else 11
    mant_bits = width - 1 - exp_bits
    mantissa = draw(st.integers(1, 2**mant_bits - 1))  # non-zero: NaN (quiet or signalling)
    sign = draw(st.integers(0, 1))
    nan = (sign << (width - 1)) | (((1 << exp_bits) - 1) << mant_bits) | mantissa
    flat = bits.reshape(-1)
    flat[draw(st.integers(0, flat.size - 1))] = nan
    return bits.view(np.dtype(dtype).newbyteorder(order))


# -- round trips -------------------------------------------------------------------------


@SETTINGS
@given(finite_arrays())
@example(np.array(-0.0, dtype=np.float32))
@example(np.array([np.finfo(np.float32).smallest_subnormal, -0.0, np.finfo(np.float32).max], dtype=np.float32))
@example(np.array([[5e-324, -0.0], [np.finfo(np.float64).max, -np.finfo(np.float64).max]], dtype=np.float64))
@example(np.array([-(2**63), 2**63 - 1], dtype=np.int64))
@example(np.zeros((2, 0, 3), dtype=np.bool_))
@example(np.zeros((0,), dtype=">f8"))
def test_finite_round_trip_json_msgpack_memory(arr):
    expected = le_bytes(arr)

    # in-memory -> JSON (whatever carrier encode_tensor_json picks) -> in-memory
    enc = encode_tensor_json(arr)
    assert enc["dtype"] == arr.dtype.name and enc["shape"] == list(arr.shape)
    from_json = decode(via_json_text(enc))
    assert from_json.dtype == le(arr.dtype.name) and same_bits(from_json, arr)
    assert from_json.tobytes() == expected

    # both JSON carriers explicitly: nested lists and base64
    lists = encode_tensor_json(arr, inline_limit=arr.size)
    assert "data" in lists and "base64" not in lists
    assert decode(via_json_text(lists)).tobytes() == expected
    b64 = encode_tensor_json(arr, inline_limit=-1)
    assert "base64" in b64 and "data" not in b64
    assert base64.b64decode(b64["base64"]) == expected  # raw little-endian bytes
    assert decode(via_json_text(b64)).tobytes() == expected

    # JSON-decoded -> msgpack (ext type 1 with raw little-endian bytes) -> in-memory
    raw = encode_tensor_raw(from_json)
    packed = pack_tensor(raw)
    ext = msgpack.unpackb(packed, ext_hook=lambda code, data: (code, data), raw=False)["data"]
    assert ext == (1, expected) and TENSOR_EXT_CODE == 1
    from_msgpack = decode(graphspec.parse(packed, "msgpack"))
    assert from_msgpack.dtype == le(arr.dtype.name) and from_msgpack.tobytes() == expected

    # msgpack-decoded -> JSON again: nothing drifts
    again = decode(via_json_text(encode_tensor_json(from_msgpack)))
    assert arrays_equal(again, from_msgpack) and arrays_equal(again, from_json)


def _constant_graph_tree(tensor: dict) -> dict:
    return {
        "format": "chainrule.graph", "version": "1.0", "name": "const",
        "inputs": {"x": {"dtype": "float64", "shape": []}},
        "nodes": [
            {"id": "c", "op": "constant", "attrs": {"value": tensor}},
            {"id": "m", "op": "mean", "inputs": ["x"]},
        ],
        "outputs": {"c": "c", "loss": "m"},
        "loss": "loss",
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(finite_arrays())
@example(np.array([-0.0, np.finfo(np.float32).smallest_subnormal], dtype=np.float32))
def test_round_trip_through_whole_graph_documents(arr):
    graph = graphspec.from_data(_constant_graph_tree(encode_tensor_json(arr)))
    expected = le_bytes(arr)
    assert graph.node("c").attrs["value"].tobytes() == expected
    from_json = graphspec.loads(graphspec.dumps(graph, "json"))
    from_compact = graphspec.loads(graphspec.dumps(graph, "json", indent=None))
    from_msgpack = graphspec.loads(graphspec.dumps(from_json, "msgpack"))
    for g in (from_json, from_compact, from_msgpack):
        value = g.node("c").attrs["value"]
        assert value.dtype == le(arr.dtype.name) and value.shape == arr.shape and value.tobytes() == expected
    assert graphspec.content_hash(from_json) == graphspec.content_hash(from_msgpack)


@SETTINGS
@given(nan_arrays())
@example(np.array([np.nan], dtype=np.float32))
@example(np.array(struct.unpack("<f", bytes.fromhex("010080ff")), dtype="<f4"))  # negative signalling NaN
@example(np.array([float("inf"), -float("inf"), np.nan], dtype=">f8"))
def test_nonfinite_payloads_survive_base64_and_msgpack(arr):
    expected = le_bytes(arr)
    index = first_nonfinite_index(arr)

    enc = encode_tensor_json(arr)
    assert "base64" in enc and "data" not in enc, "non-finite arrays cannot be nested JSON lists"
    assert base64.b64decode(enc["base64"]) == expected
    tree = via_json_text(enc)  # base64 is plain strict JSON: no NaN tokens needed
    out = decode(tree, allow_nonfinite=True)
    assert out.tobytes() == expected and arrays_equal(out, decode(tree, allow_nonfinite=True))
    assert same_bits(out, arr)

    issue = decode_error(tree)  # allow_nonfinite defaults to False
    assert_points_at_element(issue, f"{LOC}/base64", index)

    packed = pack_tensor(encode_tensor_raw(arr))
    assert msgpack.unpackb(packed, ext_hook=lambda c, d: (c, d))["data"] == (1, expected)
    mtree = graphspec.parse(packed)
    out = decode(mtree, allow_nonfinite=True)
    assert out.tobytes() == expected and same_bits(out, arr)
    assert_points_at_element(decode_error(mtree), f"{LOC}/data", index)


def test_nonfinite_location_names_the_element():
    arr = np.zeros((2, 3, 4), dtype=np.float64)
    arr[1, 2, 0] = np.inf
    arr[1, 2, 3] = np.nan  # later in C order: the first one is reported
    assert_points_at_element(decode_error(encode_tensor_json(arr)), "/x/base64", (1, 2, 0))
    assert_points_at_element(decode_error(encode_tensor_raw(arr)), "/x/data", (1, 2, 0))
    scalar = decode_error(encode_tensor_json(np.array(-np.inf)))
    assert scalar.code == "non_finite" and scalar.location in ("/x/data", "/x/base64")
    # Nested lists (e.g. an in-memory tree or a JSON 1e999, which Python reads as inf) have a real
    # pointer for every element: the location is exactly the element.
    issue = decode_error({"dtype": "float32", "shape": [2, 2], "data": [[0.0, 1.0], [2.0, math.nan]]})
    assert (issue.code, issue.location) == ("non_finite", "/x/data/1/1")
    issue = decode_error({"dtype": "float64", "shape": [3], "data": [0.5, -math.inf, 1.0]})
    assert (issue.code, issue.location) == ("non_finite", "/x/data/1")


def test_graph_refuses_nonfinite_tensor_values_with_location():
    tree = _constant_graph_tree(encode_tensor_json(np.array([1.0, np.nan, 3.0])))
    with pytest.raises(graphspec.GraphSpecError) as info:
        graphspec.from_data(tree)
    (issue,) = info.value.issues
    assert issue.code == "non_finite"
    assert issue.location in ("/nodes/0/attrs/value/data/1", "/nodes/0/attrs/value/base64")
    tree = _constant_graph_tree({"dtype": "float64", "shape": [3], "data": [1.0, math.inf, 3.0]})
    with pytest.raises(graphspec.GraphSpecError) as info:
        graphspec.from_data(tree)
    assert [(i.code, i.location) for i in info.value.issues] == [("non_finite", "/nodes/0/attrs/value/data/1")]


def test_encode_json_chooses_lists_only_for_small_finite_arrays():
    n = INLINE_JSON_ELEMENTS
    assert n >= 1
    small = encode_tensor_json(np.arange(n, dtype=np.float32))
    assert small["data"] == list(range(n)) and "base64" not in small
    big = encode_tensor_json(np.arange(n + 1, dtype=np.float32))
    assert "data" not in big and base64.b64decode(big["base64"]) == np.arange(n + 1, dtype="<f4").tobytes()
    assert encode_tensor_json(np.array(2.5))["data"] == 2.5
    assert encode_tensor_json(np.array([[True], [False]]))["data"] == [[True], [False]]
    assert encode_tensor_json(np.array([2**63 - 1], dtype=np.int64))["data"] == [2**63 - 1]
    for bad in (np.nan, np.inf, -np.inf):
        enc = encode_tensor_json(np.array([1.0, bad], dtype=np.float32))
        assert "base64" in enc and "data" not in enc
    # What is written is strict JSON.
    json.dumps(encode_tensor_json(np.array([np.nan])), allow_nan=False)


def test_encoders_refuse_non_format_dtypes():
    for arr in (np.zeros(2, np.int32), np.zeros(2, np.float16), np.zeros(2, np.complex64), np.array(["a"])):
        with pytest.raises(TypeError):
            encode_tensor_json(arr)
        with pytest.raises(TypeError):
            encode_tensor_raw(arr)


# -- decoding errors ---------------------------------------------------------------------


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def test_byte_length_must_match_dtype_times_shape():
    good = np.arange(6, dtype="<f4").tobytes()
    assert decode({"dtype": "float32", "shape": [2, 3], "base64": b64(good)}).shape == (2, 3)
    for raw in (good[:-1], good + b"\0", b""):
        issue = decode_error({"dtype": "float32", "shape": [2, 3], "base64": b64(raw)})
        assert (issue.code, issue.location) == ("byte_length", "/x/base64")
        issue = decode_error({"dtype": "float32", "shape": [2, 3], "data": RawBytes(raw)})
        assert (issue.code, issue.location) == ("byte_length", "/x/data")
    # 6 float32 = 24 bytes = 3 float64: right length for a different dtype x shape.
    issue = decode_error({"dtype": "float64", "shape": [2, 3], "data": RawBytes(good)})
    assert issue.code == "byte_length"
    # Zero-size and scalar tensors.
    assert decode({"dtype": "int64", "shape": [3, 0], "data": RawBytes(b"")}).shape == (3, 0)
    assert decode_error({"dtype": "int64", "shape": [3, 0], "data": RawBytes(b"\0")}).code == "byte_length"
    assert decode_error({"dtype": "float64", "shape": [], "data": RawBytes(b"\0" * 4)}).code == "byte_length"


RAGGED = ("invalid_shape",)
EITHER = ("invalid_shape", "wrong_type")  # a list where an element belongs (or vice versa): both are fair


@pytest.mark.parametrize("data, shape, location, codes", [
    ([[1, 2, 3], [1, 2]], [2, 3], "/x/data/1", RAGGED),
    ([[1, 2, 3], [1, 2, 3, 4]], [2, 3], "/x/data/1", RAGGED),
    ([[1, 2, 3]], [2, 3], "/x/data", RAGGED),
    ([1, 2, 3, 4, 5, 6], [2, 3], "/x/data", RAGGED),
    ([[1, 2, 3], 4], [2, 3], "/x/data/1", RAGGED),
    ([[[1], [2]], [[3], [4, 5]]], [2, 2, 1], "/x/data/1/1", RAGGED),
    ([[], [1]], [2, 0], "/x/data/1", RAGGED),
    ([[1, 2, 3], [4, 5, 6]], [6], "/x/data", RAGGED),
    ([[1], [2]], [2], "/x/data/0", EITHER),
    ([1, 2], [], "/x/data", EITHER),
    (1, [1], "/x/data", EITHER),
    ({"0": 1}, [1], "/x/data", EITHER),
])
def test_ragged_or_misshapen_nested_lists(data, shape, location, codes):
    issue = decode_error({"dtype": "int64", "shape": shape, "data": data})
    assert issue.location == location
    assert issue.code in codes


@pytest.mark.parametrize("dtype, element, location_suffix", [
    ("int64", True, "/1"),          # bool is not an int64, even though bool subclasses int in Python
    ("int64", 1.0, "/1"),           # a float, even an integral one
    ("int64", 2**63, "/1"),         # out of int64 range
    ("int64", -(2**63) - 1, "/1"),
    ("int64", "3", "/1"),
    ("int64", None, "/1"),
    ("float32", "1.5", "/1"),
    ("float64", False, "/1"),
    ("float64", None, "/1"),
    ("float64", [1.0], "/1"),
    ("bool", 1, "/1"),
    ("bool", 0, "/1"),
    ("bool", "true", "/1"),
])
def test_wrong_element_types(dtype, element, location_suffix):
    ok = {"int64": 7, "float32": 0.5, "float64": -0.25, "bool": True}[dtype]
    issue = decode_error({"dtype": dtype, "shape": [3], "data": [ok, element, ok]})
    assert issue.code == "wrong_type"
    assert issue.location == "/x/data" + location_suffix


def test_int64_range_edges_are_accepted():
    arr = decode({"dtype": "int64", "shape": [2], "data": [-(2**63), 2**63 - 1]})
    assert arr.tolist() == [-(2**63), 2**63 - 1] and arr.dtype == le("int64")
    assert decode({"dtype": "float64", "shape": [2], "data": [1, 2**63]}).tolist() == [1.0, 2.0**63]


def test_huge_integer_in_float_tensor_is_a_located_error():
    # Regression: at d46e94c this escaped decode_tensor as OverflowError (np.array conversion).
    for dtype in graphspec.FLOAT_DTYPES:
        issue = decode_error({"dtype": dtype, "shape": [2], "data": [1.0, 10**400]})
        assert issue.location == "/x/data/1"
        issue = decode_error({"dtype": dtype, "shape": [2], "data": [-(10**400), 1.0]})
        assert issue.location == "/x/data/0"


@pytest.mark.parametrize("byte", [2, 3, 0x80, 0xFF])
def test_bool_bytes_must_be_zero_or_one(byte):
    raw = bytes([1, 0, byte, 1])
    for obj, loc in (({"dtype": "bool", "shape": [2, 2], "base64": b64(raw)}, "/x/base64"),
                     ({"dtype": "bool", "shape": [2, 2], "data": RawBytes(raw)}, "/x/data")):
        issue = decode_error(obj)
        assert (issue.code, issue.location) == ("invalid_value", loc)
    ok = decode({"dtype": "bool", "shape": [2, 2], "data": RawBytes(bytes([1, 0, 0, 1]))})
    assert ok.tolist() == [[True, False], [False, True]]


def test_too_large_is_refused_before_decoding():
    # At the limit: fine.
    assert decode({"dtype": "float32", "shape": [2, 2], "data": [[0, 1], [2, 3]]}, max_elements=4).size == 4
    # One over: too_large at the shape, whatever the carrier holds -- even garbage that would otherwise
    # be reported as invalid_base64 / invalid_shape / byte_length, which proves the count is checked first.
    for obj in ({"dtype": "float32", "shape": [5], "base64": "!!not base64!!"},
                {"dtype": "float32", "shape": [5], "data": [[["ragged"]]]},
                {"dtype": "float32", "shape": [5], "data": RawBytes(b"\0")},
                {"dtype": "float32", "shape": [5, 1], "data": [1, 2, 3, 4, 5]}):
        issue = decode_error(obj, max_elements=4)
        assert (issue.code, issue.location) == ("too_large", "/x/shape")
    # Counts are exact integers: a product that would wrap around in int64 is still too large.
    issue = decode_error({"dtype": "float32", "shape": [2**32, 2**32], "data": RawBytes(b"")}, max_elements=10)
    assert issue.code == "too_large"
    issue = decode_error({"dtype": "float32", "shape": [2**64], "base64": ""}, max_elements=10)
    assert issue.code == "too_large"


def test_declared_gigabyte_tensor_does_not_allocate():
    tracemalloc.start()
    try:
        for carrier in ({"data": [1.0]}, {"base64": "AACAPw=="}, {"data": RawBytes(b"\0\0\x80?")}):
            issue = decode_error({"dtype": "float32", "shape": [1 << 28], **carrier},
                                 max_elements=graphspec.DEFAULT_LIMITS.max_tensor_elements)
            assert (issue.code, issue.location) == ("too_large", "/x/shape")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024  # the declared tensor is 1 GiB


@pytest.mark.parametrize("text", ["AAA", "A===", "AA==AA==", "AA AA", "AA\nAA", "####", "-_-_", "AAAA\u00e9"])
def test_invalid_base64(text):
    issue = decode_error({"dtype": "bool", "shape": [3], "base64": text})
    assert (issue.code, issue.location) == ("invalid_base64", "/x/base64")


@pytest.mark.parametrize("text", ["AAAA=", "AAAA===="])
def test_base64_with_excess_padding_is_invalid(text):
    # Regression: at d46e94c these were accepted (Python's b64decode(validate=True) tolerates
    # excess '=' padding), although they are not RFC 4648 base64.
    issue = decode_error({"dtype": "bool", "shape": [3], "base64": text})
    assert (issue.code, issue.location) == ("invalid_base64", "/x/base64")


def test_base64_must_be_a_string():
    issue = decode_error({"dtype": "bool", "shape": [1], "base64": ["AQ=="]})
    assert (issue.code, issue.location) == ("wrong_type", "/x/base64")


def test_exactly_one_carrier():
    both = decode_error({"dtype": "float32", "shape": [1], "data": [1.0], "base64": "AACAPw=="})
    neither = decode_error({"dtype": "float32", "shape": [1]})
    assert (neither.code, neither.location) == ("missing_field", "/x")
    assert both.code in ("conflicting_fields", "missing_field") and both.location == "/x"
    for issue in (both, neither):
        assert "data" in issue.message and "base64" in issue.message


@pytest.mark.parametrize("dtype", ["float16", "int32", "Float32", "f4", "", None, 1, ["float32"]])
def test_unknown_dtype(dtype):
    issue = decode_error({"dtype": dtype, "shape": [1], "data": [1]})
    assert (issue.code, issue.location) == ("invalid_dtype", "/x/dtype")


def test_missing_dtype_is_reported_at_dtype():
    issue = decode_error({"shape": [1], "data": [1]})
    assert issue.location == "/x/dtype"


@pytest.mark.parametrize("shape", [None, 3, [-1], [1.0], [True], ["N"], [1] * 9, "[]"])
def test_invalid_shape_field(shape):
    issue = decode_error({"dtype": "float64", "shape": shape, "data": [1.0]})
    assert (issue.code, issue.location) == ("invalid_shape", "/x/shape")


@pytest.mark.parametrize("field", ["values", "Data", "order", "dtype2"])
def test_unknown_field(field):
    issue = decode_error({"dtype": "float64", "shape": [1], "data": [1.0], field: 1})
    assert (issue.code, issue.location) == ("unknown_field", f"/x/{field}")


def test_not_an_object():
    for obj in ([1.0], "AACAPw==", None, 1.0):
        issue = decode_error(obj)
        assert (issue.code, issue.location) == ("wrong_type", "/x")


def test_location_prefix_is_escaped_pointer_of_caller():
    # decode_tensor appends to the caller's pointer; it must not re-escape or drop it.
    with pytest.raises(TensorDecodeError) as info:
        decode_tensor({"dtype": "int64", "shape": [2], "data": [1, 2.5]}, "/parameters/a~1b/value", max_elements=10)
    assert info.value.issue.location == "/parameters/a~1b/value/data/1"


def test_decoding_errors_surface_through_the_loader_located():
    tree = _constant_graph_tree({"dtype": "int64", "shape": [2, 2], "data": [[1, 2], [3]]})
    with pytest.raises(graphspec.GraphSpecError) as info:
        graphspec.loads(json.dumps(tree))
    assert [(i.code, i.location) for i in info.value.issues] == [("invalid_shape", "/nodes/0/attrs/value/data/1")]


# -- msgpack decoding is zero-copy ---------------------------------------------------------


def test_msgpack_tensor_decodes_as_a_read_only_view_on_the_message_bytes():
    n = 1000
    weights = np.arange(n * n, dtype=np.float32).reshape(n, n) / 7
    g = graphspec.GraphBuilder("big", dtype="float32")
    x = g.input("x", ["N", n])
    w = g.param("w", [n, n], value=weights)
    g.loss(g.mean(x @ w))
    packed = graphspec.dumps(g.build(), "msgpack")
    assert len(packed) < n * n * 4 + 4096  # raw bytes, not a list of 1e6 msgpack floats

    value = graphspec.loads(packed).parameters["w"].value
    assert arrays_equal(value, weights.astype("<f4"))
    assert value.base is not None and not value.flags.owndata
    assert not value.flags.writeable  # np.frombuffer over immutable bytes
    base = value
    while isinstance(base, np.ndarray):
        base = base.base
    assert isinstance(base, bytes), type(base)  # the ext payload itself: no copy was made
    assert len(base) == n * n * 4


@pytest.mark.parametrize("allow", [False, True])
def test_finite_json_number_beyond_float32_range_is_too_large_not_inf(allow):
    obj = {"dtype": "float32", "shape": [2, 2], "data": [[1.0, 2.0], [3.0, -1e300]]}
    with pytest.raises(TensorDecodeError) as info:
        decode_tensor(obj, "/x", max_elements=100, allow_nonfinite=allow)
    assert (info.value.issue.code, info.value.issue.location) == ("too_large", "/x/data/1/1")
    # the largest float32 itself is fine
    obj["data"][1][1] = float(np.finfo(np.float32).max)
    assert decode_tensor(obj, "/x", max_elements=100)[1, 1] == np.finfo(np.float32).max
