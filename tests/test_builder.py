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


def test_a_misspelt_op_method_is_an_attribute_error_with_a_did_you_mean():
    g = GraphBuilder("typo")
    x = g.input("x", [3])
    with pytest.raises(AttributeError, match=r"^'Value' has no attribute or op 'rleu'; did you mean 'relu'\?$"):
        (x * 2).rleu()
    with pytest.raises(AttributeError, match=r"^'GraphBuilder' has no attribute or op 'sigmod'; "
                                             r"did you mean 'sigmoid'\?$"):
        g.sigmod(x)
    with pytest.raises(AttributeError) as info:  # nothing close: the catalogue's ops are listed
        x.zqxwv()
    assert "'zqxwv'" in str(info.value) and "relu" in str(info.value) and "softmax_cross_entropy" in str(info.value)
    assert "constant" not in str(info.value).split(";")[1]  # not a method of a value
    with pytest.raises(AttributeError, match=r"constant takes no input: write g\.constant\(\.\.\.\)"):
        x.constant()
    assert not hasattr(x, "rleu") and hasattr(x, "relu") and not hasattr(g, "rleu") and hasattr(g, "relu")
    assert getattr(x, "__array_interface__", None) is None  # what numpy and copy probe for still says no


def test_build_without_a_loss_says_the_field_is_missing_and_how_to_add_it():
    g = GraphBuilder("no_loss")
    x = g.input("x", [3])
    g.output("y", x.relu())
    with pytest.raises(GraphSpecError) as info:
        g.build()
    (issue,) = info.value.issues
    assert (issue.code, issue.location, issue.message) == ("missing_field", "/loss", "required field 'loss' is missing")
    assert "g.loss(" in issue.hint
    # the words a document without a loss gets, with the builder's way to fix it
    tree = {"format": "chainrule.graph", "version": "1.0", "name": "t", "inputs": {"x": {"dtype": "float32",
            "shape": [3]}}, "nodes": [{"id": "y", "op": "relu", "inputs": ["x"]}], "outputs": {"y": "y"}}
    with pytest.raises(GraphSpecError) as from_doc:
        graphspec.from_data(tree)
    assert [(i.code, i.location, i.message) for i in from_doc.value.issues] == [
        (issue.code, issue.location, issue.message)]


@pytest.mark.parametrize("kind, hint", [("xavier", "did you mean 'glorot'? It is what the format calls 'xavier'"), ("gloro", "did you mean 'glorot'?"),
                                        ("normel", "did you mean 'normal'"), ("he", None)])
def test_an_unknown_initializer_lists_the_valid_ones(kind, hint):
    g = GraphBuilder("init")
    with pytest.raises(GraphSpecError) as info:
        g.param("w", [2, 2], init=kind)
    (issue,) = info.value.issues
    assert (issue.code, issue.location) == ("invalid_value", "/parameters/w/init/kind")
    assert issue.message.startswith(f"{kind!r} is not one of 'zeros', 'ones', 'constant', 'normal', 'uniform', "
                                    "'glorot'")
    assert issue.hint is None if hint is None else issue.hint.startswith(hint)
    # a document says it in the same words
    tree = {"format": "chainrule.graph", "version": "1.0", "name": "t", "inputs": {},
            "parameters": {"w": {"dtype": "float32", "shape": [2, 2], "init": {"kind": kind}}},
            "nodes": [{"id": "s", "op": "sum", "inputs": ["w"]}], "outputs": {"loss": "s"}, "loss": "loss"}
    with pytest.raises(GraphSpecError) as from_doc:
        graphspec.from_data(tree)
    assert from_doc.value.issues == [issue]
    # the name was not taken by the failed declaration; an Initializer made directly fails alike
    assert g.param("w", [2, 2], init="glorot").shape == (2, 2)
    with pytest.raises(GraphSpecError) as direct:
        graphspec.Initializer.of(kind)
    assert [(i.location, i.message) for i in direct.value.issues] == [("/kind", issue.message)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_float_class_index_labels_are_told_to_be_int64(dtype):
    g = GraphBuilder("sce", dtype="float64")
    logits = g.input("x", ["N", 3]) @ g.param("w", [3, 5])
    labels = g.input("labels", ["N"], dtype=dtype)
    with pytest.raises(GraphSpecError) as info:
        g.softmax_cross_entropy(logits, labels)
    (issue,) = info.value.issues
    assert (issue.code, issue.location) == ("dtype_mismatch", "/nodes/1/inputs/1")
    assert issue.message == ("softmax_cross_entropy_1: labels must be int64 class indices of shape [N] or "
                             f"probabilities of the logits' shape and dtype (float64[N, 5]), got {dtype}[N]")
    assert issue.hint == "class-index labels must be int64: declare the labels as int64"


def test_values_from_another_graph_are_refused():
    a, b = GraphBuilder("a"), GraphBuilder("b")
    xa, xb = a.input("x", [1]), b.input("x", [1])
    with pytest.raises(TypeError):
        xa + xb



def test_build_output_round_trips_exactly():
    g = GraphBuilder("rt", dtype="float32")
    x = g.input("x", ["N", 5])
    w = g.param("w", [5, 1], value=np.random.default_rng(0).standard_normal((5, 1)).astype(np.float32))
    g.loss(g.mse(x @ w, g.input("y", ["N", 1])))
    graph = g.build()
    again = graphspec.loads(graphspec.dumps(graph, "msgpack"))
    assert graphspec.arrays_equal(again.parameters["w"].value, graph.parameters["w"].value)
    assert again == graph
