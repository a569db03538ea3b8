"""Validation: every kind of problem is found, located and explained, all at once."""

from __future__ import annotations

import pytest
from helpers import by_location, doc, issues_of

import graphspec
import graphspec.jsonschema  # a submodule: imported here, not only by whichever test ran first
from graphspec.types import TensorType

F32 = "float32"


def node(id, op, inputs=(), **attrs):
    return {"id": id, "op": op, "inputs": list(inputs), "attrs": attrs}


def param(shape, dtype=F32):
    return {"dtype": dtype, "shape": shape, "init": {"kind": "zeros"}}


def types_of(tree) -> dict[str, TensorType]:
    return graphspec.from_data(tree).analysis.types


# -- the examples and a mutated example --------------------------------------------------

def test_examples_validate_with_inferred_types(example_tree):
    graph = graphspec.from_data(example_tree("small_mlp"))
    t = graph.analysis.types
    assert t["h"] == TensorType("float32", ("N", 16))
    assert t["logits"] == TensorType("float32", ("N", 3))
    assert t["L"] == TensorType("float32", ())
    order = [graph.nodes[i].id for i in graph.analysis.order]
    assert order.index("h") < order.index("hw2") < order.index("logits") < order.index("L")


def test_mutated_example_reports_every_error_at_once(example_tree):
    tree = example_tree("small_mlp")
    tree["nodes"][0]["op"] = "matmull"
    tree["nodes"][1]["inputs"][1] = "bb1"
    tree["nodes"][4]["inputs"].append("b2")
    tree["nodes"][5]["attrs"]["axs"] = 1
    tree["parameters"]["w1"]["dtype"] = "float16"
    tree["loss"] = "logit"
    found = by_location(issues_of(tree))
    assert found["/nodes/0/op"].code == "unknown_op"
    assert "'matmul'" in found["/nodes/0/op"].hint
    assert found["/nodes/1/inputs/1"].code == "dangling_reference"
    assert "'b1'" in found["/nodes/1/inputs/1"].hint
    assert found["/nodes/4/inputs"].code == "arity"
    assert found["/nodes/5/attrs/axs"].code == "unknown_attribute"
    assert "'axis'" in found["/nodes/5/attrs/axs"].hint
    assert found["/parameters/w1/dtype"].code == "invalid_value"
    assert found["/loss"].code == "missing_loss" and "'logits'" in found["/loss"].hint
    assert len(found) == 6, found


def test_error_is_data_and_message_lists_locations(example_tree):
    tree = example_tree("logistic_regression")
    tree["nodes"][2]["op"] = "addd"
    with pytest.raises(graphspec.GraphSpecError) as info:
        graphspec.from_data(tree)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.to_list() == [{"code": "unknown_op", "location": "/nodes/2/op", "message": "unknown op 'addd'",
                              "hint": "did you mean 'add'?"}]
    assert "/nodes/2/op" in str(err)


# -- structure ---------------------------------------------------------------------------

def test_unknown_and_missing_fields_are_located(example_tree):
    tree = example_tree("logistic_regression")
    tree["nodez"] = tree.pop("nodes")
    tree["inputs"]["x1"]["shap"] = tree["inputs"]["x1"].pop("shape")
    found = by_location(issues_of(tree))
    assert found["/nodez"].code == "unknown_field" and "'nodes'" in found["/nodez"].hint
    assert found["/nodes"].code == "missing_field"
    assert found["/inputs/x1/shap"].code == "unknown_field"
    assert found["/inputs/x1/shape"].code == "missing_field"


def test_wrong_types_are_located(example_tree):
    tree = example_tree("logistic_regression")
    tree["nodes"][1]["inputs"] = "x2"
    tree["parameters"]["b"]["shape"] = [0]
    tree["inputs"]["x2"]["shape"] = [True]
    found = by_location(issues_of(tree))
    assert found["/nodes/1/inputs"].code == "wrong_type"
    assert found["/parameters/b/shape/0"].code == "invalid_value"
    assert found["/inputs/x2/shape/0"].code == "wrong_type"


def test_parameter_needs_exactly_one_of_init_and_value(example_tree):
    tree = example_tree("logistic_regression")
    del tree["parameters"]["w1"]["init"]
    tree["parameters"]["w2"]["value"] = {"dtype": "float64", "shape": [], "data": 1.0}
    found = by_location(issues_of(tree))
    assert found["/parameters/w1"].code == "missing_field"
    assert found["/parameters/w2/value"].code == "conflicting_fields"


def test_initializer_arguments_are_checked(example_tree):
    tree = example_tree("logistic_regression")
    tree["parameters"]["w1"]["init"] = {"kind": "normal", "std": 0}
    tree["parameters"]["w2"]["init"] = {"kind": "uniform", "low": 1, "high": 0}
    tree["parameters"]["b"]["init"] = {"kind": "constant", "mean": 1}
    found = by_location(issues_of(tree))
    assert found["/parameters/w1/init/std"].code == "invalid_value"
    assert found["/parameters/w2/init/high"].code == "invalid_value"
    assert found["/parameters/b/init/mean"].code == "unknown_field"
    assert found["/parameters/b/init/value"].code == "missing_field"


def test_stored_value_must_match_declaration(example_tree):
    tree = example_tree("logistic_regression")
    del tree["parameters"]["w1"]["init"]
    tree["parameters"]["w1"]["value"] = {"dtype": "float64", "shape": [2], "data": [1.0, 2.0]}
    del tree["parameters"]["w2"]["init"]
    tree["parameters"]["w2"]["value"] = {"dtype": "float32", "shape": [], "data": 1.0}
    found = by_location(issues_of(tree))
    assert found["/parameters/w1/value"].code == "shape_mismatch"
    assert found["/parameters/w2/value"].code == "dtype_mismatch"


def test_names_must_be_valid_identifiers(example_tree):
    tree = example_tree("logistic_regression")
    tree["inputs"]["bad name"] = tree["inputs"].pop("x1")
    found = by_location(issues_of(tree))
    assert found["/inputs/bad name"].code == "invalid_name"


def test_pointer_escapes_slash_and_tilde():
    assert graphspec.errors.pointer("tags", "a/b~c", 3) == "/tags/a~1b~0c/3"


# -- references, ids, cycles ------------------------------------------------------------

def test_duplicate_ids_across_inputs_params_and_nodes():
    tree = doc([node("h", "relu", ["x"]), node("x", "neg", ["h"]), node("w", "neg", ["h"]),
                node("h", "neg", ["x"]), node("loss", "sum", ["h"])],
               params={"w": param([3])})
    found = by_location(issues_of(tree))
    assert "an input" in found["/nodes/1/id"].message
    assert "a parameter" in found["/nodes/2/id"].message
    assert "node 0" in found["/nodes/3/id"].message
    assert all(found[f"/nodes/{i}/id"].code == "duplicate_id" for i in (1, 2, 3))


def test_cycles_are_reported_once_with_their_path():
    tree = doc([node("a", "neg", ["c"]), node("b", "neg", ["a"]), node("c", "neg", ["b"]),
                node("self", "neg", ["self"]), node("loss", "sum", ["x"])])
    issues = [i for i in issues_of(tree) if i.code == "cycle"]
    assert len(issues) == 2
    messages = " | ".join(i.message for i in issues)
    assert "self -> self" in messages
    assert any(set(i.message.removeprefix("cycle: ").split(" -> ")) == {"a", "b", "c"} for i in issues)
    assert all(i.location.startswith("/nodes/") and "/inputs/" in i.location for i in issues)


def test_nodes_may_be_listed_in_any_order():
    tree = doc([node("loss", "sum", ["h"]), node("h", "relu", ["x"])], outputs={"loss": "loss"})
    graph = graphspec.from_data(tree)
    assert [graph.nodes[i].id for i in graph.analysis.order] == ["h", "loss"]


def test_dangling_output_and_loss():
    tree = doc([node("loss", "sum", ["x"])], outputs={"loss": "loss", "extra": "nowhere"})
    found = by_location(issues_of(tree))
    assert found["/outputs/extra"].code == "dangling_reference"
    assert found["/outputs/extra"].hint == "declare 'nowhere' under inputs or parameters, or give a node that id"


def test_missing_loss_field_is_located(example_tree):
    tree = example_tree("logistic_regression")
    del tree["loss"]
    found = by_location(issues_of(tree))
    assert found["/loss"].code == "missing_field"


def test_loss_must_be_scalar_float():
    tree = doc([node("loss", "relu", ["x"])])
    (issue,) = issues_of(tree)
    assert (issue.code, issue.location) == ("loss_not_scalar", "/loss")
    assert "float32[N, 3]" in issue.message


# -- ops: arity, attributes, since-version ----------------------------------------------

def test_attribute_types_and_required_attributes():
    tree = doc([node("p", "pow", ["x"]), node("s", "sum", ["x"], axis="one", keepdims=1),
                node("r", "reshape", ["x"], shape=[-1, "3"]), node("loss", "sum", ["x"])])
    found = by_location(issues_of(tree))
    assert found["/nodes/0/attrs/exponent"].code == "missing_attribute"
    assert found["/nodes/1/attrs/axis"].code == "invalid_attribute"
    assert found["/nodes/1/attrs/keepdims"].code == "invalid_attribute"
    assert found["/nodes/2/attrs/shape/1"].code == "invalid_attribute"


def test_every_op_has_a_contract_that_documents_itself():
    for name, op in graphspec.OPS.items():
        assert op.name == name and op.doc and op.since in graphspec.jsonschema.committed_fingerprints()
        assert all(i < op.arity for i in op.grad_inputs)


def test_op_newer_than_document_version_is_refused(monkeypatch):
    from graphspec import ops as ops_module

    contract = graphspec.OPS["neg"]
    monkeypatch.setitem(ops_module.OPS, "neg2", type(contract)(**{**contract.__dict__, "name": "neg2",
                                                                   "since": "1.1"}))
    (issue,) = issues_of(doc([node("n", "neg2", ["x"]), node("loss", "sum", ["n"])]))
    assert issue.code == "op_too_new" and issue.location == "/nodes/0/op"
    assert "1.1" in issue.message and "1.0" in issue.message


@pytest.mark.parametrize("op", sorted(name for name, c in graphspec.OPS.items() if c.since != "1.0"))
def test_a_document_older_than_an_op_cannot_use_it_and_one_of_its_version_can(op):
    contract = graphspec.OPS[op]
    inputs = ["x"] * contract.arity
    attrs = {"clip": {"min": 0.0}, "concat": {"axis": 0}}.get(op, {})
    tree = doc([node("n", op, inputs, **attrs), node("loss", "sum", ["n"])])
    major, minor = map(int, contract.since.split("."))
    tree["version"] = f"{major}.{minor - 1}"
    codes = [i.code for i in issues_of(tree)]
    assert "op_too_new" in codes, codes
    tree["version"] = contract.since
    try:
        graphspec.from_data(tree)
    except graphspec.GraphSpecError as exc:  # where's float condition is wrong, but not too new
        assert "op_too_new" not in [i.code for i in exc.issues]


# -- shape and dtype inference -----------------------------------------------------------

@pytest.mark.parametrize("a, b, expected", [
    (["N", 3], [4, 3], None),
    (["N", 3], [3, 5], ("N", 5)),
    ([3], [3, 5], (5,)),
    (["N", 3], [3], ("N",)),
    ([7, "N", 3], [3, 2], (7, "N", 2)),
    ([2, 1, 4, 3], [5, 3, 6], (2, 5, 4, 6)),
    ([2, 4, 3], [5, 3, 6], None),
])
def test_matmul_shapes(a, b, expected):
    tree = doc([node("m", "matmul", ["a", "b"]), node("loss", "sum", ["m"])],
               inputs={"a": {"dtype": F32, "shape": a}, "b": {"dtype": F32, "shape": b}})
    if expected is None:
        (issue,) = issues_of(tree)
        assert (issue.code, issue.location) == ("shape_mismatch", "/nodes/0/inputs/1")
    else:
        assert types_of(tree)["m"].shape == expected


@pytest.mark.parametrize("a, b, expected", [
    (["N", 3], [3], ("N", 3)),
    (["N", 1], [1, 4], ("N", 4)),
    (["N", 3], ["N", 3], ("N", 3)),
    (["N", 3], [5, 3], (5, 3)),      # a symbol may equal any size at run time
    ([], [2, 2], (2, 2)),
    (["N", 3], [4], None),
    ([2, 3], [3, 2], None),
])
def test_broadcasting(a, b, expected):
    tree = doc([node("s", "add", ["a", "b"]), node("loss", "sum", ["s"])],
               inputs={"a": {"dtype": F32, "shape": a}, "b": {"dtype": F32, "shape": b}})
    if expected is None:
        (issue,) = issues_of(tree)
        assert (issue.code, issue.location) == ("shape_mismatch", "/nodes/0/inputs/1")
        assert "broadcast" in issue.message
    else:
        assert types_of(tree)["s"].shape == expected


def test_no_implicit_dtype_casts():
    tree = doc([node("s", "mul", ["x", "w"]), node("loss", "sum", ["s"])], params={"w": param([3], "float64")})
    (issue,) = issues_of(tree)
    assert (issue.code, issue.location) == ("dtype_mismatch", "/nodes/0/inputs/1")


def test_float_ops_refuse_integer_inputs():
    tree = doc([node("e", "exp", ["i"]), node("loss", "sum", ["x"])],
               inputs={"x": {"dtype": F32, "shape": [2]}, "i": {"dtype": "int64", "shape": [2]}})
    (issue,) = issues_of(tree)
    assert (issue.code, issue.location) == ("dtype_mismatch", "/nodes/0/inputs/0")


@pytest.mark.parametrize("attrs, expected", [
    ({}, ()),
    ({"axis": 1}, ("N",)),
    ({"axis": -1, "keepdims": True}, ("N", 1)),
    ({"axis": [0, 1]}, ()),
    ({"axis": 0, "keepdims": True}, (1, 3)),
])
def test_reductions(attrs, expected):
    tree = doc([node("r", "mean", ["x"], **attrs), node("loss", "sum", ["r"])])
    assert types_of(tree)["r"].shape == expected


@pytest.mark.parametrize("axis", [2, -3, [0, 0]])
def test_reduction_axis_errors(axis):
    (issue,) = issues_of(doc([node("r", "sum", ["x"], axis=axis), node("loss", "sum", ["r"])]))
    assert issue.location.startswith("/nodes/0/attrs/axis")


def test_reshape_and_transpose():
    tree = doc([node("r", "reshape", ["x"], shape=[-1, 3, 1]), node("t", "transpose", ["r"]),
                node("p", "transpose", ["r"], perm=[0, 2, 1]), node("f", "reshape", ["w"], shape=[2, -1]),
                node("loss", "sum", ["t"])], params={"w": param([3, 4])})
    t = types_of(tree)
    assert t["r"].shape == ("N", 3, 1)
    assert t["t"].shape == (1, 3, "N")
    assert t["p"].shape == ("N", 1, 3)
    assert t["f"].shape == (2, 6)


def test_reshape_errors():
    tree = doc([node("a", "reshape", ["w"], shape=[5, -1]), node("b", "reshape", ["w"], shape=[-1, -1]),
                node("c", "reshape", ["x"], shape=[3, 4]), node("d", "transpose", ["w"], perm=[0, 0]),
                node("loss", "sum", ["x"])], params={"w": param([3, 4])})
    found = by_location(issues_of(tree))
    assert set(found) == {"/nodes/0/attrs/shape", "/nodes/1/attrs/shape", "/nodes/2/attrs/shape",
                          "/nodes/3/attrs/perm"}


def test_losses_shapes_and_labels():
    inputs = {"x": {"dtype": F32, "shape": ["N", 3]}, "labels": {"dtype": "int64", "shape": ["N"]},
              "onehot": {"dtype": F32, "shape": ["N", 3]}, "wrong": {"dtype": "int64", "shape": ["N", 3]},
              "y": {"dtype": F32, "shape": ["N", 1]}}
    good = doc([node("a", "softmax_cross_entropy", ["x", "labels"]),
                node("b", "softmax_cross_entropy", ["x", "onehot"]),
                node("c", "mse", ["x", "onehot"], reduction="none"),
                node("loss", "bce_with_logits", ["x", "onehot"], reduction="sum")], inputs=inputs)
    t = types_of(good)
    assert t["a"].shape == () and t["b"].shape == () and t["c"].shape == ("N", 3) and t["loss"].shape == ()
    bad = doc([node("a", "softmax_cross_entropy", ["x", "wrong"]), node("b", "mse", ["x", "y"]),
               node("loss", "bce", ["x", "onehot"], reduction="average")], inputs=inputs)
    found = by_location(issues_of(bad))
    assert found["/nodes/0/inputs/1"].code == "shape_mismatch"
    assert found["/nodes/1/inputs/1"].code == "shape_mismatch" and "broadcast" in found["/nodes/1/inputs/1"].hint
    assert found["/nodes/2/attrs/reduction"].code == "invalid_attribute"


@pytest.mark.parametrize("dtype, shape", [("float32", ["N"]), ("float64", ["N"]), ("bool", ["N"]),
                                          ("float64", ["N", 3]), ("float32", ["N", 4])])
def test_softmax_cross_entropy_labels_say_what_they_must_be(dtype, shape):
    """Labels that are neither int64 class indices of shape [N] nor probabilities of the logits'
    shape and dtype: one message, at the labels input, giving both forms."""
    inputs = {"x": {"dtype": F32, "shape": ["N", 3]}, "labels": {"dtype": dtype, "shape": shape}}
    (issue,) = issues_of(doc([node("loss", "softmax_cross_entropy", ["x", "labels"])], inputs=inputs))
    assert issue.location == "/nodes/0/inputs/1"
    assert issue.message == ("labels must be int64 class indices of shape [N] or probabilities of the logits' "
                             f"shape and dtype (float32[N, 3]), got {dtype}[{', '.join(map(str, shape))}]")
    class_index_shaped = shape == ["N"]
    assert issue.code == ("dtype_mismatch" if class_index_shaped or dtype != F32 else "shape_mismatch")
    if class_index_shaped:
        assert issue.hint == "class-index labels must be int64: declare the labels as int64"


def test_errors_do_not_cascade_through_unknown_types():
    tree = doc([node("a", "nope", ["x"]), node("b", "relu", ["a"]), node("loss", "sum", ["b"])])
    (issue,) = issues_of(tree)
    assert issue.code == "unknown_op"


def test_an_unknown_op_does_not_hide_its_dangling_references():
    """docs/api.md's broken document: the op is misspelt *and* 'w' is declared nowhere."""
    tree = doc([node("h", "matmull", ["x", "w"])], outputs={"loss": "h"})
    issues = issues_of(tree)
    assert [(i.code, i.location) for i in issues] == [
        ("unknown_op", "/nodes/0/op"), ("dangling_reference", "/nodes/0/inputs/1")]
    assert issues[0].hint == "did you mean 'matmul' or 'mul'?"
    assert issues[1].message == "'w' is not an input, parameter or node id"
    assert issues[1].hint == "declare 'w' under inputs or parameters, or give a node that id"  # nothing is close
    # a dangling reference with a near miss gets its did-you-mean whatever the op
    tree = doc([node("h", "nope", ["x", "w_1"]), node("loss", "sum", ["h"])], params={"w1": param([3])})
    found = by_location(issues_of(tree))
    assert set(found) == {"/nodes/0/op", "/nodes/0/inputs/1"}
    assert found["/nodes/0/inputs/1"].hint == "did you mean 'w1'?"


def test_references_are_checked_when_the_op_field_is_broken():
    tree = doc([{"id": "h", "inputs": ["x", "w"]}, node("k", "relu", ["h"], alpha=1), node("loss", "sum", ["k"])])
    tree["nodes"][1]["attrs"] = 7  # not an object: the node's attributes cannot be checked
    tree["nodes"][1]["inputs"] = ["hh"]
    assert [(i.code, i.location) for i in issues_of(tree)] == [
        ("missing_field", "/nodes/0/op"), ("wrong_type", "/nodes/1/attrs"),
        ("dangling_reference", "/nodes/0/inputs/1"), ("dangling_reference", "/nodes/1/inputs/0")]


def test_unknown_ops_and_references_do_not_cascade():
    """Nodes downstream of an unknown op or a dangling reference have unknown types: they are
    not type-checked, so neither mistake brings shape errors that are not there."""
    tree = doc([node("a", "nope", ["x", "missing"]), node("b", "matmul", ["a", "x"]),
                node("c", "add", ["x", "ghost"]), node("d", "matmul", ["c", "x"]),
                node("loss", "sum", ["b"])])
    assert [(i.code, i.location) for i in issues_of(tree)] == [
        ("unknown_op", "/nodes/0/op"), ("dangling_reference", "/nodes/0/inputs/1"),
        ("dangling_reference", "/nodes/2/inputs/1")]


def test_a_reference_that_is_not_a_name_is_reported_once():
    tree = doc([node("loss", "sum", ["bad name!"])])
    assert [(i.code, i.location) for i in issues_of(tree)] == [("invalid_name", "/nodes/0/inputs/0")]


def test_constant_values_are_typed_and_checked():
    tree = doc([node("c", "constant", value={"dtype": "float32", "shape": [3], "data": [1, 2, 3]}),
                node("s", "mul", ["x", "c"]), node("loss", "sum", ["s"])])
    assert types_of(tree)["c"] == TensorType("float32", (3,))
    bad = doc([node("c", "constant", value={"dtype": "float32", "shape": [3], "data": [1, 2]}),
               node("loss", "sum", ["x"])])
    (issue,) = issues_of(bad)
    assert issue.location == "/nodes/0/attrs/value/data"


def test_a_broken_declaration_is_reported_once(example_tree):
    tree = example_tree("logistic_regression")
    tree["inputs"]["x1"]["dtype"] = "float16"      # x1 still exists, its type is unknown
    tree["parameters"]["w1"]["shape"] = "scalar"
    issues = issues_of(tree)
    assert [(i.code, i.location) for i in issues] == [
        ("invalid_value", "/inputs/x1/dtype"), ("wrong_type", "/parameters/w1/shape")]
    assert "'float32'" in issues[0].hint
