"""The builder API: graphs in code, errors at the line that causes them."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from conftest import EXAMPLES

import graphspec
from graphspec import GraphBuilder, GraphSpecError


def load_example_builders():
    spec = importlib.util.spec_from_file_location("build_examples", EXAMPLES / "build_examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("filename", ["logistic_regression.json", "sigmoid_primitives.json", "small_mlp.json"])
def test_example_files_are_what_the_builder_writes(filename):
    make = load_example_builders().EXAMPLES[filename]
    assert graphspec.dumps(make()) == (EXAMPLES / filename).read_bytes()


def test_operators_map_to_catalogue_ops():
    g = GraphBuilder("ops", dtype="float64")
    x = g.input("x", ["N", 3])
    w = g.param("w", [3, 2], init="normal", std=0.01)
    values = [x + 1, 1 + x, x - 1, 2 - x, x * 2, 2 * x, x / 2, 2 / x, -x, x ** 2, x @ w, x.T, x.exp(), x.sum(axis=1)]
    built = {n.id: n for n in g.nodes}
    assert [built[v.name].op for v in values] == [
        "add", "add", "sub", "sub", "mul", "mul", "div", "div", "neg", "pow", "matmul", "transpose", "exp", "sum"]
    assert built[values[1].name].inputs[1] == "x"  # reflected operand order is kept
    assert built[values[3].name].inputs[1] == "x"
    assert built[values[9].name].attrs["exponent"] == 2.0
    assert (x @ w).shape == ("N", 2) and x.sum(axis=1).shape == ("N",)


def test_python_numbers_become_constants_of_the_operand_dtype():
    g = GraphBuilder("c", dtype="float32")
    x = g.input("x", [2], dtype="float64")
    y = x * 3
    const = next(n for n in g.nodes if n.op == "constant")
    assert const.attrs["value"].dtype == np.float64 and float(const.attrs["value"]) == 3.0
    assert y.dtype == "float64"


def test_shape_error_is_raised_where_it_happens():
    g = GraphBuilder("bad")
    x = g.input("x", ["N", 3])
    w = g.param("w", [4, 2])
    with pytest.raises(GraphSpecError) as info:
        x @ w
    (issue,) = info.value.issues
    assert issue.code == "shape_mismatch" and issue.location == "/nodes/0/inputs/1"
    assert "matmul" in issue.message and "[N, 3]" in issue.message
    # the failed node left nothing behind: the name is free and the graph still builds
    g.loss(g.sum(x, name="matmul_1"))
    assert len(g.build().nodes) == 1


def test_unknown_op_and_duplicate_names():
    g = GraphBuilder("bad")
    x = g.input("x", [3])
    with pytest.raises(GraphSpecError) as info:
        g.op("softmx", x)
    assert "softmax" in info.value.issues[0].hint
    with pytest.raises(ValueError):
        g.input("x", [3])
    with pytest.raises(AttributeError):
        x.not_an_op()
    with pytest.raises(TypeError):
        x ** x


def test_values_from_another_graph_are_refused():
    a, b = GraphBuilder("a"), GraphBuilder("b")
    xa, xb = a.input("x", [1]), b.input("x", [1])
    with pytest.raises(TypeError):
        xa + xb


def test_build_validates_the_whole_graph():
    g = GraphBuilder("no_loss")
    x = g.input("x", [3])
    g.output("y", x.relu())
    with pytest.raises(GraphSpecError) as info:
        g.build()
    assert [i.location for i in info.value.issues] == ["/loss"]


def test_build_output_round_trips_exactly():
    g = GraphBuilder("rt", dtype="float32")
    x = g.input("x", ["N", 5])
    w = g.param("w", [5, 1], value=np.random.default_rng(0).standard_normal((5, 1)).astype(np.float32))
    g.loss(g.mse(x @ w, g.input("y", ["N", 1])))
    graph = g.build()
    again = graphspec.loads(graphspec.dumps(graph, "msgpack"))
    assert graphspec.arrays_equal(again.parameters["w"].value, graph.parameters["w"].value)
    assert again == graph
