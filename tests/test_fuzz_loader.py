"""Hostile input to the loader: ``graphspec.loads``, ``graphspec.parse`` and ``graphspec.from_data``.

The loader's promise (graphspec/codec.py): nothing but :class:`graphspec.GraphSpecError` ever
escapes, and every problem is an issue with a message and a JSON-pointer location into the
document. The property tests feed random bytes, random JSON-like trees, graph-shaped random
trees and mutations of the example documents (tree-level and byte-level) to every entry
point, in both encodings, and check that promise; the remaining tests pin specific hostile
inputs (deep nesting, size limits, a declared 1 GiB tensor, NaN tokens, duplicate keys,
invalid UTF-8, unknown msgpack extensions, non-string map keys).

Hypothesis runs derandomized so that CI is reproducible; set GRAPHSPEC_FUZZ_EXAMPLES=<n> to
run n examples per property with fresh randomness (e.g. for a long local fuzzing session).
"""

from __future__ import annotations

import base64
import copy
import json
import os
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphspec
from graphspec import GraphSpecError, Limits
from graphspec.tensors import RawBytes

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
FORMAT_ID = "chainrule.graph"
# The documented top-level fields of a graph document (docs/format.md, graphspec/model.py).
TOP_LEVEL = {"format", "version", "name", "metadata", "inputs", "parameters", "nodes", "outputs", "loss"}
# Issue codes whose location names something that is present in the document by definition
# (an unknown key, a bad reference, a duplicate, the too-deep container...): the whole pointer resolves.
PRESENT_CODES = {"unknown_field", "unknown_attribute", "unknown_op", "dangling_reference", "duplicate_id",
                 "cycle", "invalid_name", "too_deep"}

_FUZZ_N = int(os.environ.get("GRAPHSPEC_FUZZ_EXAMPLES", "0"))


def fuzz_settings(n: int) -> settings:
    return settings(max_examples=_FUZZ_N or n, deadline=None, derandomize=not _FUZZ_N, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


# -- documents -------------------------------------------------------------------------


def _example(name: str) -> dict:
    return json.loads((EXAMPLES_DIR / f"{name}.json").read_text(encoding="utf-8"))


def _tensor_doc() -> dict:
    """small_mlp with stored parameter values in both JSON carriers and an int64 constant."""
    doc = _example("small_mlp")
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((4, 16)).astype(np.float32)
    b1 = rng.standard_normal(16).astype(np.float32)
    doc["parameters"]["w1"] = {"dtype": "float32", "shape": [4, 16], "value": graphspec.encode_tensor_json(w1)}
    doc["parameters"]["b1"] = {"dtype": "float32", "shape": [16],
                               "value": graphspec.encode_tensor_json(b1, inline_limit=-1)}
    doc["nodes"].append({"id": "k", "op": "constant", "inputs": [],
                         "attrs": {"value": {"dtype": "int64", "shape": [2], "data": [1, -2]}}})
    doc["outputs"]["k"] = "k"
    return doc


JSON_DOCS: dict[str, dict] = {name: _example(name) for name in ("small_mlp", "logistic_regression",
                                                                 "sigmoid_primitives")}
JSON_DOCS["tensors"] = _tensor_doc()
for _name, _doc in JSON_DOCS.items():  # the starting points are valid
    graphspec.from_data(copy.deepcopy(_doc))
# The msgpack form of each, as graphspec itself writes it (tensors as extension type 1).
MSGPACK_DOCS: dict[str, Any] = {
    f"{name}.msgpack": graphspec.parse(graphspec.dumps(graphspec.from_data(copy.deepcopy(doc)), "msgpack"))
    for name, doc in JSON_DOCS.items()
}
assert any(isinstance(t["value"]["data"], RawBytes) for t in MSGPACK_DOCS["tensors.msgpack"]["parameters"].values())
ALL_DOCS = {**JSON_DOCS, **MSGPACK_DOCS}
NAMES_IN_DOCS = sorted({n["id"] for d in JSON_DOCS.values() for n in d["nodes"]}
                       | {k for d in JSON_DOCS.values() for k in (*d["inputs"], *d["parameters"])})


def _json_default(obj):
    if isinstance(obj, (RawBytes, bytes)):
        return base64.b64encode(obj.data if isinstance(obj, RawBytes) else obj).decode("ascii")
    raise TypeError(type(obj).__name__)


def to_json(tree: Any) -> bytes:
    """JSON text; NaN/Infinity become the (invalid) JSON tokens, which the loader must refuse."""
    return json.dumps(tree, allow_nan=True, default=_json_default).encode("utf-8")


def _msgpack_default(obj):
    if isinstance(obj, RawBytes):
        return msgpack.ExtType(1, obj.data)
    if isinstance(obj, int):
        raise OverflowError(f"msgpack cannot carry the integer {obj}")
    raise TypeError(type(obj).__name__)


def to_msgpack(tree: Any) -> bytes:
    return msgpack.packb(tree, default=_msgpack_default, use_bin_type=True)


def reference_tree(data: bytes, encoding: str) -> Any:
    """A lenient independent parse, used only to check that issue locations resolve; None if unreadable."""
    try:
        if encoding == "json":
            return json.loads(data.decode("utf-8-sig"))
        return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=lambda c, d: RawBytes(d))
    except Exception:
        return None


# -- the invariant -----------------------------------------------------------------------


def _unescape(segment: str) -> str:
    return segment.replace("~1", "/").replace("~0", "~")


def _child(value: Any, segment: str) -> tuple[bool, Any]:
    if isinstance(value, dict):
        for key, item in value.items():
            if (key if isinstance(key, str) else str(key)) == segment:
                return True, item
        return False, None
    if isinstance(value, list) and segment.isdigit() and (segment == "0" or not segment.startswith("0")):
        index = int(segment)
        return (True, value[index]) if index < len(value) else (False, None)
    return False, None


def resolved_depth(doc: Any, location: str) -> int:
    """How many leading segments of ``location`` exist in ``doc``."""
    depth, value = 0, doc
    for segment in location[1:].split("/"):
        ok, value = _child(value, _unescape(segment))
        if not ok:
            break
        depth += 1
    return depth


def check_error(exc: GraphSpecError, doc: Any) -> None:
    assert exc.issues, "a GraphSpecError without issues"
    assert str(exc) and exc.to_list()  # formatting never fails
    for issue in exc.issues:
        assert isinstance(issue.code, str) and issue.code, issue
        assert isinstance(issue.message, str) and issue.message.strip(), issue
        assert issue.hint is None or (isinstance(issue.hint, str) and issue.hint.strip()), issue
        loc = issue.location
        assert isinstance(loc, str) and (loc == "" or loc.startswith("/")), issue
        if not loc:
            continue
        first = _unescape(loc[1:].split("/")[0])
        depth = resolved_depth(doc, loc)
        assert depth >= 1 or first in TOP_LEVEL, f"{issue} does not resolve in the document"
        if issue.code in PRESENT_CODES and doc is not None:
            assert depth == loc.count("/"), f"{issue}: only {depth} segment(s) resolve"


def expect_only_graphspec_error(fn: Callable[[], Any], doc: Any) -> Any:
    """Run a loader call: it returns a Graph or raises GraphSpecError (checked); anything else fails."""
    try:
        result = fn()
    except GraphSpecError as exc:
        check_error(exc, doc)
        return None
    return result


def check_loaded(graph: Any) -> None:
    """A document that loads is a valid, fully typed graph that survives both encodings unchanged."""
    assert isinstance(graph, graphspec.Graph)
    assert graph.analysis is not None and graph.analysis.ok
    for node in graph.nodes:
        assert node.op in graphspec.OPS, node
        assert node.id in graph.analysis.types, f"validated graph has an untyped node {node.id!r}"
    loss_type = graph.analysis.types[graph.outputs[graph.loss]]
    assert loss_type.shape == () and loss_type.dtype in graphspec.FLOAT_DTYPES
    for encoding in ("json", "msgpack"):
        again = graphspec.loads(graphspec.dumps(graph, encoding))
        assert again == graph
        assert graphspec.content_hash(again) == graphspec.content_hash(graph)


def feed_tree(tree: Any) -> None:
    """Feed one tree to from_data and, serialized, to loads in both encodings (auto and explicit)."""
    loaded = expect_only_graphspec_error(lambda: graphspec.from_data(copy.deepcopy(tree)), tree)
    if loaded is not None:
        check_loaded(loaded)
    feed_bytes(to_json(tree), "json", tree)
    try:
        packed = to_msgpack(tree)
    except OverflowError:  # an integer msgpack cannot carry (JSON can): nothing to feed
        return
    feed_bytes(packed, "msgpack", tree)


def feed_bytes(data: bytes, encoding: str, doc: Any = None) -> None:
    ref = doc if doc is not None else reference_tree(data, encoding)
    for enc in (None, encoding):
        loaded = expect_only_graphspec_error(lambda: graphspec.loads(data, enc), ref)
        if loaded is not None:
            check_loaded(loaded)
    expect_only_graphspec_error(lambda: graphspec.parse(data, encoding), ref)


# -- strategies --------------------------------------------------------------------------

FIELD_NAMES = sorted(TOP_LEVEL | {"dtype", "shape", "data", "base64", "id", "op", "inputs", "attrs", "init",
                                  "value", "kind", "doc", "tags", "axis", "reduction"})
KEYS = st.one_of(st.sampled_from(FIELD_NAMES + NAMES_IN_DOCS), st.text(max_size=8))
# msgpack carries 64-bit integers at most; JSON integers are unbounded (10**400 fits no float).
INTS = st.integers(-(2**63), 2**64 - 1)
HUGE_INTS = st.sampled_from([2**64, -(2**63) - 1, 2**1024, -(10**400), 10**400])
SCALARS = st.one_of(
    st.none(), st.booleans(), INTS, st.floats(), st.text(max_size=12),
    st.sampled_from(FIELD_NAMES + NAMES_IN_DOCS + list(graphspec.OPS) + list(graphspec.DTYPES) + [FORMAT_ID, "1.0"]),
)
JSON_VALUES = st.recursive(
    st.one_of(SCALARS, HUGE_INTS),
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(KEYS, kids, max_size=5),
    max_leaves=25,
)
# msgpack can also carry binary strings and extension values (tensors) anywhere.
MSGPACK_VALUES = st.recursive(
    st.one_of(SCALARS, st.binary(max_size=16), st.binary(max_size=16).map(RawBytes)),
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(KEYS, kids, max_size=5),
    max_leaves=25,
)

IDS = st.one_of(st.sampled_from(NAMES_IN_DOCS + ["a", "b", "c", "loss"]), st.text(max_size=6))
NODES = st.fixed_dictionaries(
    {},
    optional={
        "id": IDS,
        "op": st.one_of(st.sampled_from(sorted(graphspec.OPS)), st.text(max_size=8)),
        "inputs": st.lists(IDS, max_size=3),
        "attrs": st.dictionaries(st.sampled_from(["axis", "keepdims", "reduction", "eps", "shape", "perm",
                                                  "exponent", "value", "bogus"]), JSON_VALUES, max_size=3),
    },
)
SHAPES = st.lists(st.one_of(st.integers(-2, 5), st.sampled_from(["N", "M"]), st.none()), max_size=3)
TENSORS = st.fixed_dictionaries(
    {"dtype": st.sampled_from(graphspec.DTYPES), "shape": SHAPES},
    optional={"data": JSON_VALUES, "base64": st.sampled_from(["", "AACAPw==", "AAAAAAAA", "AQ==", "!"])},
)
GRAPH_LIKE = st.fixed_dictionaries(
    {"format": st.just(FORMAT_ID), "version": st.sampled_from(["1.0"] * 8 + ["1.1", "0.9", "2.0", "1"])},
    optional={
        "name": st.one_of(st.text(max_size=8), JSON_VALUES),
        "inputs": st.dictionaries(IDS, st.fixed_dictionaries({"dtype": st.sampled_from(graphspec.DTYPES),
                                                              "shape": SHAPES}), max_size=3),
        "parameters": st.dictionaries(IDS, st.fixed_dictionaries(
            {"dtype": st.sampled_from(graphspec.DTYPES), "shape": SHAPES},
            optional={"init": st.fixed_dictionaries({"kind": st.sampled_from(
                ["zeros", "ones", "constant", "normal", "uniform", "glorot", "he"])},
                optional={"value": SCALARS, "std": SCALARS, "low": SCALARS, "high": SCALARS}),
                "value": TENSORS}), max_size=3),
        "nodes": st.lists(NODES, max_size=6),
        "outputs": st.dictionaries(IDS, IDS, max_size=3),
        "loss": IDS,
        "metadata": JSON_VALUES,
    },
)


def _paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(tree, dict):
        for key, value in tree.items():
            out.extend(_paths(value, prefix + (key,)))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            out.extend(_paths(value, prefix + (index,)))
    return out


def _get(tree: Any, path: tuple) -> Any:
    for part in path:
        tree = tree[part]
    return tree


def _set(tree: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    _get(tree, path[:-1])[path[-1]] = value
    return tree


def _pick(draw, tree, want: Callable[[tuple], bool]) -> tuple | None:
    candidates = [p for p in _paths(tree) if want(p)]
    return draw(st.sampled_from(candidates)) if candidates else None


def _nodes(tree) -> list | None:
    nodes = tree.get("nodes") if isinstance(tree, dict) else None
    return nodes if isinstance(nodes, list) and nodes else None


def m_delete_key(draw, tree, values):
    path = _pick(draw, tree, lambda p: bool(p) and isinstance(p[-1], str))
    if path is not None:
        del _get(tree, path[:-1])[path[-1]]
    return tree


def m_replace_value(draw, tree, values):
    path = _pick(draw, tree, lambda p: True)
    return _set(tree, path, draw(values))


def m_duplicate_node(draw, tree, values):
    nodes = _nodes(tree)
    if nodes:
        node = copy.deepcopy(draw(st.sampled_from(nodes)))
        nodes.insert(draw(st.integers(0, len(nodes))), node)
    return tree


def m_rename_id(draw, tree, values):
    nodes = _nodes(tree)
    if nodes:
        node = draw(st.sampled_from(nodes))
        if isinstance(node, dict):
            node["id"] = draw(IDS)
    return tree


def m_change_reference(draw, tree, values):
    path = _pick(draw, tree, lambda p: len(p) == 4 and p[0] == "nodes" and p[2] == "inputs"
                 or len(p) == 2 and p[0] == "outputs" or p == ("loss",))
    return tree if path is None else _set(tree, path, draw(IDS))


def m_change_dtype(draw, tree, values):
    path = _pick(draw, tree, lambda p: bool(p) and p[-1] == "dtype")
    new = draw(st.one_of(st.sampled_from(graphspec.DTYPES + ("float16", "int32", "Float32")), SCALARS))
    return tree if path is None else _set(tree, path, new)


def m_change_shape(draw, tree, values):
    path = _pick(draw, tree, lambda p: bool(p) and p[-1] == "shape")
    new = draw(st.one_of(SHAPES, st.lists(st.integers(0, 2**40), max_size=4), values))
    return tree if path is None else _set(tree, path, new)


def m_change_op(draw, tree, values):
    path = _pick(draw, tree, lambda p: bool(p) and p[-1] == "op")
    new = draw(st.one_of(st.sampled_from(sorted(graphspec.OPS)), st.text(max_size=10), SCALARS))
    return tree if path is None else _set(tree, path, new)


def m_shuffle_nodes(draw, tree, values):
    """Benign: node order is free (validation finds a topological order)."""
    nodes = _nodes(tree)
    if nodes:
        tree["nodes"] = draw(st.permutations(nodes))
    return tree


def m_rename_consistently(draw, tree, values):
    """Benign when the new name is fresh: rename a node id and every reference to it."""
    nodes = _nodes(tree)
    if not nodes or not isinstance(nodes[0], dict):
        return tree
    node = draw(st.sampled_from(nodes))
    old, new = node.get("id") if isinstance(node, dict) else None, draw(IDS)
    if not isinstance(old, str):
        return tree
    node["id"] = new
    for other in nodes:
        if isinstance(other, dict) and isinstance(other.get("inputs"), list):
            other["inputs"] = [new if ref == old else ref for ref in other["inputs"]]
    if isinstance(tree.get("outputs"), dict):
        tree["outputs"] = {k: (new if v == old else v) for k, v in tree["outputs"].items()}
    return tree


def m_deep_nesting(draw, tree, values):
    path = _pick(draw, tree, lambda p: True)
    value = _get(tree, path)
    for _ in range(draw(st.integers(1, 80))):
        value = [value] if draw(st.booleans()) else {"k": value}
    return _set(tree, path, value)


MUTATIONS = [m_delete_key, m_replace_value, m_duplicate_node, m_rename_id, m_change_reference, m_change_dtype,
             m_change_shape, m_change_op, m_deep_nesting, m_shuffle_nodes, m_rename_consistently]


@st.composite
def mutated_documents(draw):
    name = draw(st.sampled_from(sorted(ALL_DOCS)))
    values = MSGPACK_VALUES if name.endswith(".msgpack") else JSON_VALUES
    tree = copy.deepcopy(ALL_DOCS[name])
    for _ in range(draw(st.integers(1, 3))):
        tree = draw(st.sampled_from(MUTATIONS))(draw, tree, values)
    return name, tree


@st.composite
def byte_mutations(draw, data: bytes) -> bytes:
    kind = draw(st.sampled_from(["truncate", "flip", "insert", "flip_many"]))
    if kind == "truncate":
        return data[:draw(st.integers(0, max(len(data) - 1, 0)))]
    buf = bytearray(data)
    if kind == "insert":
        at = draw(st.integers(0, len(buf)))
        return bytes(buf[:at]) + draw(st.binary(min_size=1, max_size=8)) + bytes(buf[at:])
    for _ in range(1 if kind == "flip" else draw(st.integers(2, 12))):
        at = draw(st.integers(0, len(buf) - 1))
        buf[at] ^= draw(st.integers(1, 255))
    return bytes(buf)


# -- properties --------------------------------------------------------------------------


@fuzz_settings(1000)
@given(data=st.binary(max_size=300), prefix=st.sampled_from([b"", b"{", b"\x81", b"\x89", b"\xde\x00\x02",
                                                             b"\xdf\x00\x00\x00\x01", b"\xef\xbb\xbf{"]))
def test_random_bytes(data, prefix):
    blob = prefix + data
    sniffed = "msgpack" if blob[:1] and (0x80 <= blob[0] <= 0x8F or blob[0] in (0xDE, 0xDF)) else "json"
    for encoding in (None, "json", "msgpack"):
        ref = reference_tree(blob, encoding or sniffed)
        expect_only_graphspec_error(lambda: graphspec.loads(blob, encoding), ref)
        expect_only_graphspec_error(lambda: graphspec.parse(blob, encoding), ref)
    # ... and as text, where it decodes
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError:
        return
    expect_only_graphspec_error(lambda: graphspec.loads(text), reference_tree(blob, "json"))


@fuzz_settings(300)
@given(tree=JSON_VALUES)
def test_random_json_like_trees(tree):
    feed_tree(tree)


@fuzz_settings(300)
@given(tree=MSGPACK_VALUES)
def test_random_msgpack_trees(tree):
    feed_bytes(to_msgpack(tree), "msgpack", tree)
    expect_only_graphspec_error(lambda: graphspec.from_data(copy.deepcopy(tree)), tree)


@fuzz_settings(400)
@given(tree=GRAPH_LIKE)
def test_random_graph_shaped_trees(tree):
    feed_tree(tree)


@fuzz_settings(800)
@given(doc=mutated_documents())
def test_mutated_example_documents(doc):
    name, tree = doc
    feed_tree(tree)


@fuzz_settings(600)
@given(name=st.sampled_from(sorted(JSON_DOCS)), encoding=st.sampled_from(["json", "msgpack"]), data=st.data())
def test_byte_level_mutations(name, encoding, data):
    original = graphspec.dumps(graphspec.from_data(copy.deepcopy(JSON_DOCS[name])), encoding,
                               **({"indent": data.draw(st.sampled_from([None, 2]))} if encoding == "json" else {}))
    mutated = data.draw(byte_mutations(original))
    feed_bytes(mutated, encoding)


# -- the invariant's own sanity checks ----------------------------------------------------


def test_invariant_checker_rejects_bad_locations():
    doc = {"nodes": [{"id": "a"}]}
    check_error(GraphSpecError([graphspec.Issue("unknown_op", "/nodes/0/id", "m")]), doc)
    check_error(GraphSpecError([graphspec.Issue("missing_field", "/loss", "m")]), doc)
    for bad in (graphspec.Issue("x", "nodes/0", "m"), graphspec.Issue("x", "/bogus/1", "m"),
                graphspec.Issue("x", "/nodes/0", " "), graphspec.Issue("unknown_field", "/nodes/0/zz", "m")):
        with pytest.raises(AssertionError):
            check_error(GraphSpecError([bad]), doc)
    with pytest.raises(TypeError):
        expect_only_graphspec_error(lambda: (_ for _ in ()).throw(TypeError("leak")), doc)


# -- specific hostile documents -------------------------------------------------------------


def _codes(exc_info) -> list[tuple[str, str]]:
    return [(i.code, i.location) for i in exc_info.value.issues]


def _head_json(rest: str) -> str:
    return '{"format": "chainrule.graph", "version": "1.0", "name": ' + rest + "}"


def _head_msgpack(value_bytes: bytes) -> bytes:
    return (b"\x83" + msgpack.packb("format") + msgpack.packb(FORMAT_ID) + msgpack.packb("version")
            + msgpack.packb("1.0") + msgpack.packb("name") + value_bytes)


@pytest.mark.parametrize("doc, complete", [
    (_head_json("[" * 100_000 + "]" * 100_000), True),
    (_head_json('{"a": ' * 100_000 + "1" + "}" * 100_000), True),
    (_head_json("[" * 100_000), False),  # unbalanced as well
], ids=["lists", "objects", "unbalanced"])
def test_json_100k_levels(doc, complete):
    start = time.perf_counter()
    with pytest.raises(GraphSpecError) as info:
        graphspec.loads(doc)
    check_error(info.value, None)
    codes = [i.code for i in info.value.issues]
    if complete:  # syntactically valid JSON: the nesting is the problem
        assert codes == ["too_deep"]
    else:
        assert codes in (["too_deep"], ["parse_error"])
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("doc, complete", [
    (_head_msgpack(b"\x91" * 100_000 + b"\xc0"), True),
    (_head_msgpack(b"\x81\xa1a" * 100_000 + b"\xc0"), True),
    (_head_msgpack(b"\x91" * 100_000), False),  # truncated as well
], ids=["arrays", "maps", "truncated"])
def test_msgpack_100k_levels(doc, complete):
    start = time.perf_counter()
    with pytest.raises(GraphSpecError) as info:
        graphspec.loads(doc)
    check_error(info.value, None)
    codes = [i.code for i in info.value.issues]
    if complete:  # a well-formed document: the nesting is the problem
        assert codes == ["too_deep"]
    else:
        assert codes in (["too_deep"], ["parse_error"])
    assert time.perf_counter() - start < 5


def test_deep_in_memory_tree_is_located():
    deep: Any = 1
    for _ in range(100_000):
        deep = [deep]
    tree = {"format": FORMAT_ID, "version": "1.0", "name": deep}
    with pytest.raises(GraphSpecError) as info:
        graphspec.from_data(tree)
    (issue,) = info.value.issues
    assert issue.code == "too_deep" and issue.location.startswith("/name/0/0")
    check_error(info.value, tree)


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
def test_nesting_limit_is_enforced_with_a_location(encoding):
    def doc(depth: int) -> bytes:
        value: Any = 0
        for _ in range(depth):
            value = [value]
        tree = copy.deepcopy(JSON_DOCS["small_mlp"])
        tree["metadata"]["tags"]["kind"] = value
        return to_json(tree) if encoding == "json" else to_msgpack(tree)

    limit = graphspec.DEFAULT_LIMITS.max_depth
    with pytest.raises(GraphSpecError) as info:
        graphspec.loads(doc(limit + 5))
    (issue,) = info.value.issues
    assert issue.code == "too_deep"
    assert issue.location.startswith("/metadata/tags/kind/0/0")
    assert set(issue.location.split("/")[4:]) == {"0"}
    # Well within the limit the same document is wrong for another reason (a tag must be a scalar).
    with pytest.raises(GraphSpecError) as info:
        graphspec.loads(doc(3))
    assert _codes(info) == [("wrong_type", "/metadata/tags/kind")]
    # A smaller configured limit is honoured.
    with pytest.raises(GraphSpecError) as info:
        graphspec.loads(doc(3), limits=Limits(max_depth=4))
    assert [i.code for i in info.value.issues] == ["too_deep"]


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
def test_document_above_max_bytes(encoding, tmp_path):
    data = graphspec.dumps(graphspec.load(EXAMPLES_DIR / "small_mlp.json"), encoding)
    assert isinstance(graphspec.loads(data, limits=Limits(max_bytes=len(data))), graphspec.Graph)
    with pytest.raises(GraphSpecError) as info:
        graphspec.loads(data, limits=Limits(max_bytes=len(data) - 1))
    assert _codes(info) == [("too_large", "")]
    path = tmp_path / f"doc.{encoding}"
    path.write_bytes(data)
    with pytest.raises(GraphSpecError) as info:
        graphspec.load(path, limits=Limits(max_bytes=len(data) - 1))
    assert _codes(info) == [("too_large", "")]


def test_document_above_default_max_bytes_is_refused_unread():
    data = b"{" + b" " * graphspec.DEFAULT_LIMITS.max_bytes + b"}"
    start = time.perf_counter()
    with pytest.raises(GraphSpecError) as info:
        graphspec.loads(data)
    assert _codes(info) == [("too_large", "")]
    assert time.perf_counter() - start < 2


GIB_SHAPE = [1 << 28]  # float32: 1 GiB


@pytest.mark.parametrize("carrier", ["list", "base64", "msgpack"])
@pytest.mark.parametrize("where", ["parameter", "constant"])
def test_declared_gigabyte_tensor_is_refused_before_allocation(carrier, where):
    small = {"list": {"data": [1.0]}, "base64": {"base64": "AACAPw=="},
             "msgpack": {"data": RawBytes(np.float32(1).tobytes())}}[carrier]
    tensor = {"dtype": "float32", "shape": list(GIB_SHAPE), **small}
    tree = copy.deepcopy(JSON_DOCS["small_mlp"])
    if where == "parameter":
        tree["parameters"]["huge"] = {"dtype": "float32", "shape": list(GIB_SHAPE), "value": tensor}
        expected = ("too_large", "/parameters/huge/shape")
    else:
        tree["nodes"].append({"id": "huge", "op": "constant", "inputs": [], "attrs": {"value": tensor}})
        expected = ("too_large", f"/nodes/{len(tree['nodes']) - 1}/attrs/value/shape")
    data = to_msgpack(tree) if carrier == "msgpack" else to_json(tree)
    tracemalloc.start()
    try:
        with pytest.raises(GraphSpecError) as info:
            graphspec.loads(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert expected in _codes(info)
    assert all(code != "byte_length" for code, _ in _codes(info))  # refused for its size, not its bytes
    assert peak < 32 * 1024 * 1024


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
def test_more_nodes_than_max_nodes(encoding):
    tree = JSON_DOCS["small_mlp"]
    data = to_json(tree) if encoding == "json" else to_msgpack(tree)
    count = len(tree["nodes"])
    assert isinstance(graphspec.loads(data, limits=Limits(max_nodes=count)), graphspec.Graph)
    with pytest.raises(GraphSpecError) as info:
        graphspec.loads(data, limits=Limits(max_nodes=count - 1))
    assert _codes(info) == [("too_large", "/nodes")]


def test_many_nodes_refused_before_validation():
    n = graphspec.DEFAULT_LIMITS.max_nodes + 1
    tree = {"format": FORMAT_ID, "version": "1.0", "name": "big", "inputs": {"x": {"dtype": "float32", "shape": []}},
            "nodes": [{"id": f"n{i}", "op": "neg", "inputs": [f"n{i - 1}" if i else "x"]} for i in range(n)],
            "outputs": {"loss": f"n{n - 1}"}, "loss": "loss"}
    for data in (to_json(tree), to_msgpack(tree)):
        with pytest.raises(GraphSpecError) as info:
            graphspec.loads(data)
        assert _codes(info) == [("too_large", "/nodes")]
    # The same graph under a large enough limit is valid: it was refused for its size only.
    assert len(graphspec.from_data(tree, limits=Limits(max_nodes=n)).nodes) == n


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "-NaN", "nan", "inf"])
def test_nan_and_infinity_tokens_are_refused(token):
    text = to_json(JSON_DOCS["small_mlp"]).decode().replace('"classifier"', token)
    assert token in text
    with pytest.raises(GraphSpecError) as info:
        graphspec.loads(text)
    assert _codes(info) == [("parse_error", "")]


def test_nan_tokens_in_a_tensor_are_refused():
    tree = copy.deepcopy(JSON_DOCS["tensors"])
    text = to_json(tree).decode()
    w1_first = repr(float(tree["parameters"]["w1"]["value"]["data"][0][0]))
    assert w1_first in text
    with pytest.raises(GraphSpecError) as info:
        graphspec.loads(text.replace(w1_first, "NaN", 1))
    assert _codes(info) == [("parse_error", "")]


@pytest.mark.parametrize("where, location", [
    ("eps", "/nodes/5/attrs/eps"),
    ("tag", "/metadata/tags/seed"),
    ("tensor", "/nodes/6/attrs/value/data/1"),
])
def test_overflowing_json_number_is_refused_where_it_is(where, location):
    # 1e999 is valid JSON syntax, but no double holds it: Python reads it as inf. It must not slip through.
    tree = copy.deepcopy(JSON_DOCS["logistic_regression"])
    if where == "eps":
        tree["nodes"][5]["attrs"]["eps"] = "OVERFLOW"
    elif where == "tag":
        tree["metadata"]["tags"]["seed"] = "OVERFLOW"
    else:
        tree["nodes"].append({"id": "k", "op": "constant",
                              "attrs": {"value": {"dtype": "float64", "shape": [2], "data": [0.5, "OVERFLOW"]}}})
    text = to_json(tree).decode().replace('"OVERFLOW"', "1e999")
    with pytest.raises(GraphSpecError) as info:
        graphspec.loads(text)
    codes = _codes(info)
    if codes != [("parse_error", "")]:  # refusing the token outright would be fine too
        assert len(codes) == 1 and codes[0][1] == location
        assert codes[0][0] in ("non_finite", "invalid_attribute")
        assert "finite" in info.value.issues[0].message


@pytest.mark.parametrize("text", [
    '{"format": "chainrule.graph", "format": "chainrule.graph", "version": "1.0"}',
    '{"format": "chainrule.graph", "version": "1.0", "nodes": [{"id": "a", "id": "b", "op": "neg"}]}',
    '{"format": "chainrule.graph", "version": "1.0", "inputs": {"x": {}, "x": {}}}',
])
def test_duplicate_json_keys_are_refused(text):
    with pytest.raises(GraphSpecError) as info:
        graphspec.loads(text)
    assert _codes(info) == [("parse_error", "")]
    assert "duplicate" in info.value.issues[0].message


def test_duplicate_msgpack_keys_are_refused():
    # Regression: at d46e94c msgpack maps with duplicate keys were accepted silently (last one wins)
    # while JSON refused them: two readers could disagree on what the document says.
    body = to_msgpack(JSON_DOCS["small_mlp"])
    assert body[0] == 0x89  # fixmap of 9 entries
    assert isinstance(graphspec.loads(body), graphspec.Graph)
    doc = b"\x8a" + body[1:] + msgpack.packb("name") + msgpack.packb("other_name")
    with pytest.raises(GraphSpecError) as info:
        graphspec.loads(doc)
    assert [c for c, _ in _codes(info)] == ["parse_error"]
    assert "duplicate" in info.value.issues[0].message


INVALID_UTF8 = [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\xf8\x88\x80\x80\x80", b"\x80"]


@pytest.mark.parametrize("bad", INVALID_UTF8, ids=repr)
@pytest.mark.parametrize("where", ["value", "key"])
@pytest.mark.parametrize("encoding", ["json", "msgpack"])
def test_invalid_utf8_is_refused(bad, where, encoding):
    tree = copy.deepcopy(JSON_DOCS["small_mlp"])
    if where == "value":
        tree["name"] = "PLACEHOLDER"
    else:
        tree["metadata"]["tags"]["PLACEHOLDER"] = 1
    if encoding == "json":
        data = to_json(tree)
        assert data.count(b"PLACEHOLDER") == 1
        data = data.replace(b"PLACEHOLDER", b"x" + bad + b"x")
    else:
        data = to_msgpack(tree)
        old = msgpack.packb("PLACEHOLDER")
        assert data.count(old) == 1
        data = data.replace(old, bytes([0xA0 | (len(bad) + 2)]) + b"x" + bad + b"x")  # fixstr, length kept right
    with pytest.raises(GraphSpecError) as info:
        graphspec.loads(data)
    assert _codes(info) == [("parse_error", "")]
    # the same document with valid bytes there is fine (the test is about the bytes, nothing else)
    good = data.replace(b"x" + bad + b"x", b"x" + b"y" * len(bad) + b"x")
    assert isinstance(graphspec.loads(good), graphspec.Graph)


@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "\\udc00\\ud800"])
def test_lone_surrogate_escape_is_refused_or_harmless(escape):
    # Regression: at d46e94c a lone surrogate escape loaded into a validated Graph whose
    # content_hash() and dumps() then raised UnicodeEncodeError.
    text = to_json(JSON_DOCS["small_mlp"]).decode().replace('"small_mlp"', f'"bad{escape}name"')
    try:
        graph = graphspec.loads(text)
    except GraphSpecError as exc:
        check_error(exc, JSON_DOCS["small_mlp"])
        return
    graphspec.content_hash(graph)
    graphspec.dumps(graph, "json")


@pytest.mark.parametrize("code", [0, 2, 5, 127])
def test_unknown_msgpack_extension_type_is_refused(code):
    tree = copy.deepcopy(JSON_DOCS["small_mlp"])
    tree["name"] = msgpack.ExtType(code, b"\x00\x01")
    with pytest.raises(GraphSpecError) as info:
        graphspec.loads(to_msgpack(tree))
    assert _codes(info) == [("parse_error", "")]
    assert str(code) in info.value.issues[0].message
    # ... wherever it is, including where a tensor's data belongs
    tree = copy.deepcopy(MSGPACK_DOCS["tensors.msgpack"])
    tree["parameters"]["b1"]["value"]["data"] = msgpack.ExtType(code, tree["parameters"]["b1"]["value"]["data"].data)
    with pytest.raises(GraphSpecError) as info:
        graphspec.loads(to_msgpack(tree))
    assert _codes(info) == [("parse_error", "")]


def _with_timestamp_ext(tree: dict) -> bytes:
    # msgpack reserves extension type -1 for timestamps and decodes it itself, without the ext hook.
    tree = copy.deepcopy(tree)
    tree["name"] = "PLACEHOLDER"
    data = to_msgpack(tree)
    return data.replace(msgpack.packb("PLACEHOLDER"), b"\xd6\xff\x00\x00\x00\x01", 1)


def test_reserved_timestamp_extension_is_refused():
    # Regression: at d46e94c parse() let type -1 through (msgpack decodes it itself, bypassing the
    # ext hook that refuses unknown types), returning a msgpack.Timestamp inside the "plain" tree.
    data = _with_timestamp_ext(JSON_DOCS["small_mlp"])
    for fn in (graphspec.parse, graphspec.loads):
        with pytest.raises(GraphSpecError) as info:
            fn(data)
        assert [c for c, _ in _codes(info)] == ["parse_error"]
        assert _codes(info)[0][1] in ("", "/name")


@pytest.mark.parametrize("key", [1, -1, 1.5, None, True, (1, 2)], ids=repr)
def test_non_string_map_keys_in_msgpack_are_refused(key):
    tree = copy.deepcopy(JSON_DOCS["small_mlp"])
    packer = msgpack.Packer(use_bin_type=True)
    body = {**tree, "inputs": {**tree["inputs"], key: {"dtype": "float32", "shape": [1]}}}
    data = packer.pack(body)
    with pytest.raises(GraphSpecError) as info:
        graphspec.loads(data)
    assert _codes(info) == [("parse_error", "")]


def test_bytes_key_at_top_level_is_refused():
    tree = {**copy.deepcopy(JSON_DOCS["small_mlp"]), b"name2": "x"}
    with pytest.raises(GraphSpecError) as info:
        graphspec.loads(to_msgpack(tree))
    assert [c for c, _ in _codes(info)] in (["unknown_field"], ["parse_error"])
    check_error(info.value, tree)


BYTES_KEY_PLACES = {
    "inputs": ("/inputs", lambda t: t["inputs"].update({b"x2": {"dtype": "float32", "shape": [1]}})),
    "parameters": ("/parameters", lambda t: t["parameters"].update(
        {b"p2": {"dtype": "float32", "shape": [1], "init": {"kind": "zeros"}}})),
    "outputs": ("/outputs", lambda t: t["outputs"].update({b"o2": "logits"})),
    "node_attrs": ("/nodes/5/attrs", lambda t: t["nodes"][5]["attrs"].update({b"axis": -1})),
    "metadata_tags": ("/metadata/tags", lambda t: t["metadata"]["tags"].update({b"t": "x"})),
}


@pytest.mark.parametrize("place", sorted(BYTES_KEY_PLACES))
def test_bytes_keys_in_maps_are_graphspec_errors(place):
    # Regression: at d46e94c a msgpack bin (bytes) key inside a name->value map escaped loads() as
    # TypeError ("cannot use a string pattern on a bytes-like object", structure.Map.check).
    where, mutate = BYTES_KEY_PLACES[place]
    tree = copy.deepcopy(JSON_DOCS["small_mlp"])
    mutate(tree)
    with pytest.raises(GraphSpecError) as info:
        graphspec.loads(to_msgpack(tree))
    check_error(info.value, tree)
    assert all(loc == "" or loc.startswith(where) for _, loc in _codes(info)), _codes(info)


HUGE = 10**400  # a valid JSON integer that no float can hold

HUGE_INT_PLACES = {
    "metadata_tag": ("/metadata/tags/big", lambda t: t["metadata"]["tags"].update({"big": HUGE})),
    "init_argument": ("/parameters/w1/init/gain", lambda t: t["parameters"]["w1"]["init"].update({"gain": HUGE})),
    "number_attribute": ("/nodes/2/attrs/exponent",
                         lambda t: t["nodes"][2].update({"op": "pow", "attrs": {"exponent": HUGE}})),
    "negative_number_attribute": ("/nodes/6/attrs/eps", lambda t: t["nodes"][6].update(
        {"op": "bce", "attrs": {"eps": -HUGE}})),
    "float_tensor_element": ("/nodes/7/attrs/value/data/0", lambda t: t["nodes"].append(
        {"id": "k", "op": "constant", "attrs": {"value": {"dtype": "float64", "shape": [1], "data": [HUGE]}}})),
}


@pytest.mark.parametrize("place", sorted(HUGE_INT_PLACES))
def test_huge_json_integers_are_located_errors(place):
    # Regression: at d46e94c an integer too large for a float where a number is expected escaped
    # loads() as OverflowError (math.isfinite / float() / np.array in structure.Num.check,
    # model.Initializer.of, model._Builder.node, tensors.decode_tensor).
    where, mutate = HUGE_INT_PLACES[place]
    tree = copy.deepcopy(JSON_DOCS["small_mlp"])
    mutate(tree)
    text = json.dumps(tree)
    assert str(HUGE) in text
    with pytest.raises(GraphSpecError) as info:
        graphspec.loads(text)
    check_error(info.value, tree)
    assert where in [loc for _, loc in _codes(info)], _codes(info)


def test_huge_json_integer_in_an_int64_tensor_is_located():
    tree = copy.deepcopy(JSON_DOCS["small_mlp"])
    tree["nodes"].append({"id": "k", "op": "constant", "attrs": {"value": {"dtype": "int64", "shape": [2],
                                                                           "data": [1, HUGE]}}})
    with pytest.raises(GraphSpecError) as info:
        graphspec.loads(json.dumps(tree))
    assert ("wrong_type", "/nodes/7/attrs/value/data/1") in _codes(info)


@pytest.mark.parametrize("shape", [[2**32, 2**32], [2**62, 4], [2**21] * 3], ids=str)
def test_parameter_element_count_cannot_wrap_around(shape):
    # Regression: at d46e94c the count was np.prod(shape, dtype=int64), which wraps: [2**32, 2**32]
    # (2**64 elements) counted as 0 and the parameter passed Limits.max_tensor_elements.
    tree = copy.deepcopy(JSON_DOCS["small_mlp"])
    tree["parameters"]["huge"] = {"dtype": "float32", "shape": shape, "init": {"kind": "zeros"}}
    for data in (to_json(tree), to_msgpack(tree)):
        with pytest.raises(GraphSpecError) as info:
            graphspec.loads(data)
        assert _codes(info), info.value
        assert all(loc.startswith("/parameters/huge/shape") for _, loc in _codes(info)), _codes(info)


@pytest.mark.parametrize("dim", [2**63, 2**64 - 1, 2**64, 10**30], ids=str)
def test_parameter_dim_beyond_int64_is_a_graphspec_error(dim):
    # Regression: at d46e94c a dim >= 2**64 escaped loads() as OverflowError (np.prod in
    # model._Builder.parameter), and 2**63 <= dim < 2**64 gave a negative count that passed the limit.
    tree = copy.deepcopy(JSON_DOCS["small_mlp"])
    tree["parameters"]["huge"] = {"dtype": "float32", "shape": [dim], "init": {"kind": "zeros"}}
    with pytest.raises(GraphSpecError) as info:
        graphspec.loads(json.dumps(tree))
    assert _codes(info) and all(loc.startswith("/parameters/huge/shape") for _, loc in _codes(info)), _codes(info)


@pytest.mark.parametrize("kind", [[], ["zeros"], {}, {"kind": "zeros"}], ids=repr)
def test_unhashable_initializer_kind_is_a_graphspec_error(kind):
    # Regression: at d46e94c this escaped loads() as TypeError (unhashable type) from
    # `init.get("kind") not in INIT_KINDS` in model._Builder.parameter (found by the mutation fuzzer).
    tree = copy.deepcopy(JSON_DOCS["logistic_regression"])
    tree["parameters"]["w2"]["init"]["kind"] = kind
    with pytest.raises(GraphSpecError) as info:
        graphspec.loads(json.dumps(tree))
    assert ("invalid_value", "/parameters/w2/init/kind") in _codes(info)


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
def test_empty_op_is_refused(encoding):
    # Regression (found by the mutation fuzzer): at d46e94c a node with "op": "" passed validation with
    # no issue at all -- the structural check accepted the empty string and validate._check_node skipped
    # empty ops as "already reported" -- so that node, everything downstream and the loss went unchecked.
    tree = copy.deepcopy(JSON_DOCS["small_mlp"])
    tree["nodes"][0]["op"] = ""
    with pytest.raises(GraphSpecError) as info:
        graphspec.loads(to_json(tree) if encoding == "json" else to_msgpack(tree))
    assert "/nodes/0/op" in [loc for _, loc in _codes(info)]


def test_unknown_initializer_kind_is_located():
    tree = copy.deepcopy(JSON_DOCS["logistic_regression"])
    tree["parameters"]["w2"]["init"]["kind"] = "zeroes"
    with pytest.raises(GraphSpecError) as info:
        graphspec.loads(json.dumps(tree))
    issues = info.value.issues
    assert [(i.code, i.location) for i in issues] == [("invalid_value", "/parameters/w2/init/kind")]
    assert "'zeros'" in issues[0].hint


def test_parameter_element_limit_without_wraparound():
    tree = copy.deepcopy(JSON_DOCS["small_mlp"])
    tree["parameters"]["huge"] = {"dtype": "float32", "shape": [1 << 20, 1 << 20], "init": {"kind": "zeros"}}
    with pytest.raises(GraphSpecError) as info:
        graphspec.loads(json.dumps(tree))
    assert _codes(info) == [("too_large", "/parameters/huge/shape")]


@pytest.mark.parametrize("value", [None, 1, "x", [1], b"{}", bytearray(b"[]")], ids=repr)
def test_non_document_values(value):
    if isinstance(value, (bytes, bytearray)):
        with pytest.raises(GraphSpecError) as info:
            graphspec.loads(value)
    else:
        with pytest.raises(GraphSpecError) as info:
            graphspec.from_data(value)
        with pytest.raises(GraphSpecError):
            graphspec.loads(value)  # type: ignore[arg-type]
    check_error(info.value, None)


@pytest.mark.parametrize("data", [b"", b"   ", b"\n\t", "", "\ufeff"], ids=repr)
def test_empty_documents(data):
    with pytest.raises(GraphSpecError) as info:
        graphspec.loads(data)
    assert [c for c, _ in _codes(info)] == ["parse_error"]


# -- one document, several mistakes, all located ----------------------------------------------


def test_mutated_example_yields_all_located_errors():
    tree = copy.deepcopy(JSON_DOCS["small_mlp"])
    assert tree["nodes"][0]["op"] == "matmul" and tree["nodes"][1]["inputs"] == ["xw1", "b1"]
    assert tree["nodes"][2]["op"] == "tanh" and tree["nodes"][5]["op"] == "softmax"
    tree["nodes"][0]["op"] = "matmull"                # 1. unknown op (typo)
    tree["nodes"][1]["inputs"][1] = "b11"             # 2. dangling reference (typo of b1)
    tree["nodes"][2]["inputs"].append("xw1")          # 3. wrong arity: tanh takes one input
    tree["nodes"][5]["attrs"] = {"axes": -1}          # 4. wrong attribute: softmax has 'axis', not 'axes'

    for data in (to_json(tree), to_msgpack(tree), None):
        with pytest.raises(GraphSpecError) as info:
            graphspec.loads(data) if data is not None else graphspec.from_data(tree)
        issues = {i.location: i for i in info.value.issues}
        assert set(issues) == {"/nodes/0/op", "/nodes/1/inputs/1", "/nodes/2/inputs", "/nodes/5/attrs/axes"}, \
            info.value  # all four, and no cascade from the nodes downstream of the mistakes
        assert issues["/nodes/0/op"].code == "unknown_op"
        assert "'matmul'" in issues["/nodes/0/op"].hint and "did you mean" in issues["/nodes/0/op"].hint
        assert issues["/nodes/1/inputs/1"].code == "dangling_reference"
        assert "'b1'" in issues["/nodes/1/inputs/1"].hint and "did you mean" in issues["/nodes/1/inputs/1"].hint
        assert issues["/nodes/2/inputs"].code == "arity"
        assert issues["/nodes/5/attrs/axes"].code == "unknown_attribute"
        assert "'axis'" in (issues["/nodes/5/attrs/axes"].hint or "")
        check_error(info.value, tree)
        text = str(info.value)
        assert text.startswith("4 problems") and all(loc in text for loc in issues)


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 2**64, 10**30])
def test_integers_beyond_64_bits_are_refused_where_they_are(value):
    tree = copy.deepcopy(JSON_DOCS["small_mlp"])
    tree["metadata"]["tags"]["big"] = value
    with pytest.raises(GraphSpecError) as info:
        graphspec.loads(json.dumps(tree))
    assert ("too_large", "/metadata/tags/big") in _codes(info)
    tree["metadata"]["tags"]["big"] = 2**63 - 1   # the largest that fits: loads, and survives msgpack
    graph = graphspec.loads(json.dumps(tree))
    assert graphspec.loads(graphspec.dumps(graph, "msgpack")) == graph
