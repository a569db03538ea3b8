"""ONNX import (runtime.from_onnx, `chainrule import-onnx`): PyTorch-exported fixtures
(scripts/onnx_fixtures.py; no torch needed here) give PyTorch's outputs; chainrule -> ONNX ->
chainrule keeps the forward values; what cannot be imported is refused, all of it at once."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import graphspec
import runtime
from conftest import EXAMPLES
from runtime.onnx_import import ImportError_, from_onnx
from test_layers import lenet, quadrants

onnx = pytest.importorskip("onnx")
FIXTURES = EXAMPLES.parent / "tests" / "fixtures" / "onnx"


def forward(graph, inputs, params, output="out"):
    return runtime.compile(graph).forward(inputs, params, with_grad=False).outputs[output]


@pytest.mark.parametrize("name, loss", [("small_cnn", "softmax_cross_entropy"), ("mlp", "mse"),
                                        ("embedder", "mse")])
def test_pytorch_exports_import_with_their_outputs(name, loss):
    saved = dict(np.load(FIXTURES / f"{name}.npz"))
    expected = saved.pop("expected")
    graph, params = from_onnx(FIXTURES / f"{name}.onnx", loss=loss)
    assert graph.inputs[next(iter(saved))].shape[0] == "N"  # the exported batch dimension stays symbolic
    target = np.zeros(expected.shape[:-1], np.int64) if loss == "softmax_cross_entropy" else np.zeros_like(expected)
    got = forward(graph, {**saved, "target": target}, params)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # the initializers are the parameters' stored values: the document alone trains
    assert all(spec.value is not None for spec in graph.parameters.values())


def test_an_imported_model_trains():
    graph, params = from_onnx(FIXTURES / "mlp.onnx", loss="mse")
    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(64, 5)).astype(np.float32), "target": np.tile([0.9, 0.1], (64, 1)).astype(np.float32)}
    result = runtime.Trainer(graph, runtime.Adam(lr=0.01), batch_size=16).fit(data, params, epochs=10)
    assert result.loss < 0.5 * result.losses[0]


def test_chainrule_to_onnx_and_back_keeps_the_forward_values():
    graph = lenet()
    params = runtime.init_params(graph, seed=2)
    again, again_params = from_onnx(runtime.to_onnx(graph, params).SerializeToString(), loss="softmax_cross_entropy")
    data = quadrants(5)
    np.testing.assert_allclose(forward(again, {"x": data["x"], "target": data["label"]}, again_params, "logits"),
                               forward(graph, data, params, "logits"), rtol=1e-5, atol=1e-5)


def test_concat_and_dropout_survive_the_round_trip():
    g = graphspec.GraphBuilder("two_towers", dtype="float32")
    x = g.input("x", ["N", 4])
    joined = g.concat(g.relu(g.linear(x, 3, name="a")), g.tanh(g.linear(x, 2, name="b")), axis=1, name="joined")
    out = g.linear(g.dropout(joined, 0.3, name="drop"), 2, name="out")
    g.output("out", out)
    g.loss(g.mse(out, g.input("y", ["N", 2])))
    graph = g.build()
    params = runtime.init_params(graph, seed=0)
    again, again_params = from_onnx(runtime.to_onnx(graph, params).SerializeToString(), loss="mse")
    ops = [n.op for n in again.nodes]
    assert "concat" in ops and "dropout" in ops
    assert next(n for n in again.nodes if n.op == "dropout").attrs["rate"] == pytest.approx(0.3)
    x_value = np.random.default_rng(1).normal(size=(6, 4)).astype(np.float32)
    np.testing.assert_allclose(forward(again, {"x": x_value, "target": np.zeros((6, 2), np.float32)}, again_params),
                               forward(graph, {"x": x_value, "y": np.zeros((6, 2), np.float32)}, params),
                               rtol=1e-6, atol=1e-6)


def test_unsupported_nodes_are_listed_together():
    h = onnx.helper
    model = h.make_model(h.make_graph(
        [h.make_node("Relu", ["x"], ["a"]), h.make_node("Erf", ["a"], ["b"], name="erf1"),
         h.make_node("BatchNormalization", ["b", "s", "c", "m", "v"], ["y"], name="bn")], "g",
        [h.make_tensor_value_info("x", 1, ["N", 3])], [h.make_tensor_value_info("y", 1, ["N", 3])]),
        opset_imports=[h.make_opsetid("", 18)])
    with pytest.raises(ImportError_, match=r"2 node\(s\) have no chainrule form: erf1 \(Erf\), bn \(BatchNormalization\)"):
        from_onnx(model, loss="mse")


def test_bad_files_and_dynamic_shapes_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00not a protobuf at all\xff")
    with pytest.raises(ImportError_, match="not an ONNX model"):
        from_onnx(bad, loss="mse")
    h = onnx.helper
    model = h.make_model(h.make_graph([h.make_node("Relu", ["x"], ["y"])], "g",
                                      [h.make_tensor_value_info("x", 1, [None, 3])],
                                      [h.make_tensor_value_info("y", 1, [None, 3])]),
                         opset_imports=[h.make_opsetid("", 18)])
    with pytest.raises(ImportError_, match="dimension 0 has neither a size nor a name"):
        from_onnx(model, loss="mse")
    with pytest.raises(ImportError_, match="loss must be one of"):
        from_onnx(model, loss="hinge")
    old = h.make_model(h.make_graph([h.make_node("Relu", ["x"], ["y"])], "g",
                                    [h.make_tensor_value_info("x", 1, ["N", 3])],
                                    [h.make_tensor_value_info("y", 1, ["N", 3])]),
                       opset_imports=[h.make_opsetid("", 9)])
    with pytest.raises(ImportError_, match="opset 9 is not supported"):
        from_onnx(old, loss="mse")


def test_the_command_line_writes_a_graph_document(tmp_path):
    out = tmp_path / "cnn.json"
    result = subprocess.run([sys.executable, "-m", "service.cli", "import-onnx", str(FIXTURES / "small_cnn.onnx"),
                             "--loss", "softmax_cross_entropy", "-o", str(out)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    graph = graphspec.load(out)
    saved = dict(np.load(FIXTURES / "small_cnn.npz"))
    params = runtime.init_params(graph)  # the stored values
    got = forward(graph, {"x": saved["x"], "target": np.zeros(2, np.int64)}, params)
    np.testing.assert_allclose(got, saved["expected"], rtol=1e-5, atol=1e-5)
