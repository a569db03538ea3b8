"""ONNX export (runtime.to_onnx, `chainrule export-onnx`): onnxruntime gives chainrule's forward
values (1e-6 in float64, 1e-5 in float32) for every exportable op — over its gradient-check
samples — and for every example graph; the model passes onnx.checker."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import graphspec
import runtime
from conftest import EXAMPLES
from op_samples import SAMPLES, to_float32
from runtime.onnx_export import EXPORT, NOT_EXPORTED, OPSET

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

# onnxruntime's CPU build has float32 kernels only for these (its float64 graph would not load)
FLOAT32_ONLY_IN_ONNXRUNTIME = {"conv2d", "avg_pool2d", "one_hot"}


def run_onnx(model, inputs: dict) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: inputs[i.name] for i in session.get_inputs()})


def assert_same(got: np.ndarray, expected: np.ndarray, what: str) -> None:
    tolerance = 1e-6 if expected.dtype == np.float64 else 1e-5
    assert got.dtype == expected.dtype and got.shape == expected.shape, (what, got.dtype, got.shape, expected.shape)
    np.testing.assert_allclose(got, expected, rtol=tolerance, atol=tolerance, err_msg=what)


def test_every_op_is_exported_or_is_a_loss_and_docs_onnx_md_lists_it():
    assert set(EXPORT) | set(NOT_EXPORTED) == set(graphspec.OPS) and not set(EXPORT) & set(NOT_EXPORTED)
    table = (EXAMPLES.parent / "docs" / "onnx.md").read_text()
    assert all(f"`{op}`" in table for op in graphspec.OPS), [op for op in graphspec.OPS if f"`{op}`" not in table]


@pytest.mark.parametrize("op", sorted(EXPORT))
def test_onnxruntime_computes_what_chainrule_computes(op):
    checked = []

    @settings(max_examples=20, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(SAMPLES[op])
    def check(sample):
        variants = [to_float32(sample)] + ([] if op in FLOAT32_ONLY_IN_ONNXRUNTIME else [sample])
        for variant in variants:
            model = runtime.to_onnx(variant.graph, variant.params, outputs=["out"])
            assert model.opset_import[0].version == OPSET
            (got,) = run_onnx(model, variant.inputs)
            expected = runtime.compile(variant.graph).forward(variant.inputs, variant.params,
                                                              with_grad=False).outputs["out"]
            assert_same(got, expected, repr(variant))
        checked.append(sample)

    check()
    assert len(checked) >= 10


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.json")), ids=lambda p: p.name)
def test_every_example_graph_exports_its_prediction(path):
    graph = graphspec.load(path)
    predictions = [name for name in graph.outputs if name != graph.loss]
    if not predictions:
        with pytest.raises(runtime.ExportError, match="no output but its loss"):
            runtime.to_onnx(graph, runtime.init_params(graph))
        return
    params = runtime.init_params(graph, seed=1)
    rng = np.random.default_rng(0)
    inputs = {}
    for name, spec in graph.inputs.items():
        shape = tuple(4 if isinstance(d, str) else d for d in spec.shape)
        inputs[name] = (rng.integers(0, 2, size=shape) if spec.dtype == "int64" else rng.normal(size=shape)).astype(
            spec.dtype)
    model = runtime.to_onnx(graph, params)
    assert {o.name for o in model.graph.output} == set(predictions)
    assert graph.loss not in {o.name for o in model.graph.output}
    outputs = runtime.compile(graph).forward(inputs, params, with_grad=False).outputs
    for name, got in zip([o.name for o in model.graph.output], run_onnx(model, inputs)):
        assert_same(got, outputs[name], name)


def test_targets_and_the_loss_are_left_out_and_batch_dims_stay_symbolic():
    graph = graphspec.load(EXAMPLES / "logistic_regression.json")
    model = runtime.to_onnx(graph, runtime.init_params(graph))
    assert [i.name for i in model.graph.input] == ["x1", "x2"]  # y only feeds the loss
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert {i.name for i in model.graph.initializer} >= {"w1", "w2", "b"}


def test_a_missing_parameter_and_an_unknown_output_are_clear_errors():
    graph = graphspec.load(EXAMPLES / "logistic_regression.json")
    with pytest.raises(runtime.ExportError, match="parameter 'w1' has no value"):
        runtime.to_onnx(graph, {})
    with pytest.raises(runtime.ExportError, match="no output 'prob'"):
        runtime.to_onnx(graph, runtime.init_params(graph), outputs=["prob"])


def test_the_command_line_writes_a_model(tmp_path):
    graph_path = EXAMPLES / "logistic_regression.json"
    graph = graphspec.load(graph_path)
    params = runtime.init_params(graph, seed=3)
    runtime.save_tensors(tmp_path / "params.npz", params)
    out = tmp_path / "model.onnx"
    result = subprocess.run([sys.executable, "-m", "service.cli", "export-onnx", str(graph_path), "--params",
                             str(tmp_path / "params.npz"), "-o", str(out)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and out.exists()
    model = onnx.load(str(out))
    inputs = {"x1": np.array([0.5, -1.0]), "x2": np.array([1.5, 2.0])}
    (a,) = run_onnx(model, inputs)
    assert_same(a, runtime.compile(graph).forward({**inputs, "y": np.zeros(2)}, params).outputs["a"], "a")
