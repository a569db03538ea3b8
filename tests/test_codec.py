"""JSON <-> msgpack <-> memory: lossless, one canonical form, one content hash."""

from __future__ import annotations

import json

import msgpack
import numpy as np
import pytest
from conftest import EXAMPLES

import graphspec
from graphspec.codec import canonical_bytes, detect_encoding

EXAMPLE_FILES = sorted(EXAMPLES.glob("*.json"))


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.stem)
def test_round_trip_json_msgpack_memory(path, tmp_path):
    graph = graphspec.load(path)
    packed = graphspec.dumps(graph, "msgpack")
    assert detect_encoding(packed) == "msgpack"
    from_msgpack = graphspec.loads(packed)
    again_json = graphspec.dumps(from_msgpack, "json")
    assert again_json == graphspec.dumps(graph, "json")
    assert from_msgpack == graph
    graphspec.dump(graph, tmp_path / "g.msgpack")
    assert (tmp_path / "g.msgpack").read_bytes() == packed
    assert graphspec.load(tmp_path / "g.msgpack") == graph


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.stem)
def test_content_hash_is_the_same_for_every_encoding(path):
    graph = graphspec.load(path)
    expected = graphspec.content_hash(graph)
    assert expected.startswith("sha256:") and len(expected) == 7 + 64
    variants = [graphspec.dumps(graph, "msgpack"), graphspec.dumps(graph, "json", indent=None),
                json.dumps(json.loads(path.read_text()), indent=7, sort_keys=True).encode()]
    for data in variants:
        assert graphspec.content_hash(graphspec.loads(data)) == expected


def test_hash_ignores_carrier_and_notation_but_not_content(example_tree):
    tree = example_tree("sigmoid_primitives")
    base = graphspec.content_hash(graphspec.from_data(tree))
    # base64 instead of nested lists, and an int where a float is meant: same graph
    value = tree["nodes"][4]["attrs"]["value"]
    value.pop("data")
    value["base64"] = "AAAAAAAA8L8="  # -1.0 float64 little-endian
    tree["nodes"][10]["attrs"]["eps"] = 1e-7
    assert graphspec.content_hash(graphspec.from_data(tree)) == base
    # defaults written out or left implicit: same graph
    del tree["nodes"][10]["attrs"]["reduction"]
    assert graphspec.content_hash(graphspec.from_data(tree)) == base
    # a real change: different id
    tree["nodes"][10]["attrs"]["reduction"] = "sum"
    assert graphspec.content_hash(graphspec.from_data(tree)) != base


def test_canonical_bytes_are_sorted_compact_json(example_tree):
    graph = graphspec.from_data(example_tree("small_mlp"))
    text = canonical_bytes(graph).decode()
    tree = json.loads(text)
    assert json.dumps(tree, sort_keys=True, separators=(",", ":"), ensure_ascii=False) == text
    assert "\n" not in text and ": " not in text


def test_msgpack_tensors_are_extension_types(tmp_path):
    g = graphspec.GraphBuilder("t", dtype="float32")
    x = g.input("x", ["N", 4])
    w = g.param("w", [4, 2], value=np.arange(8, dtype=np.float32).reshape(4, 2))
    g.loss(g.mean(x @ w))
    packed = graphspec.dumps(g.build(), "msgpack")
    raw = msgpack.unpackb(packed, raw=False, ext_hook=lambda code, data: (code, data))
    code, data = raw["parameters"]["w"]["value"]["data"]
    assert code == 1 and data == np.arange(8, dtype="<f4").tobytes()


def test_equality_compares_content():
    def build(scale):
        g = graphspec.GraphBuilder("t", dtype="float64")
        x = g.input("x", ["N"])
        g.loss(g.sum(x * scale))
        return g.build()

    assert build(2.0) == build(2.0)
    assert build(2.0) != build(3.0)


def test_pretty_json_is_readable_and_valid():
    text = (EXAMPLES / "logistic_regression.json").read_text()
    assert '"shape": ["N"]' in text  # short arrays stay on one line
    assert json.loads(text)["format"] == "chainrule.graph"


def test_dumps_rejects_unknown_encoding(example_tree):
    with pytest.raises(ValueError):
        graphspec.dumps(graphspec.from_data(example_tree("small_mlp")), "yaml")


def test_load_missing_file_is_a_located_error(tmp_path):
    with pytest.raises(graphspec.GraphSpecError) as info:
        graphspec.load(tmp_path / "nope.json")
    assert info.value.issues[0].code == "io_error"
