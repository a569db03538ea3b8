"""ONNX export (runtime.to_onnx, `chainrule export-onnx`): onnxruntime gives chainrule's forward
values (1e-6 in float64, 1e-5 in float32) for every exportable op — over its gradient-check
samples — and for every example graph; the model passes onnx.checker. With keep_loss=True the
losses too: every loss op, reduction and label form, at clipped probabilities and extreme logits."""

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
from graphspec import GraphBuilder
from runtime.onnx_export import EXPORT, LOSSES, NOT_EXPORTED, OPSET

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


def assert_outputs_match(model, inputs: dict, expected: dict, what: str) -> None:
    """Every output of ``model`` run by onnxruntime equals chainrule's output of that name."""
    names = [o.name for o in model.graph.output]
    for name, got in zip(names, run_onnx(model, inputs)):
        assert_same(got, expected[name], f"{what}: {name}")


def test_every_op_is_exported_or_is_a_loss_and_docs_onnx_md_lists_it():
    assert set(EXPORT) | set(LOSSES) == set(graphspec.OPS) and not set(EXPORT) & set(LOSSES)
    assert set(NOT_EXPORTED) == set(LOSSES)  # by default
    table = (EXAMPLES.parent / "docs" / "onnx.md").read_text()
    assert all(f"`{op}`" in table for op in graphspec.OPS), [op for op in graphspec.OPS if f"`{op}`" not in table]


@pytest.mark.parametrize("op", sorted(EXPORT) + sorted(LOSSES))
def test_onnxruntime_computes_what_chainrule_computes(op):
    checked = []

    @settings(max_examples=20, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(SAMPLES[op])
    def check(sample):
        variants = [to_float32(sample)] + ([] if op in FLOAT32_ONLY_IN_ONNXRUNTIME else [sample])
        for variant in variants:  # a loss op: kept, with the sample's loss (the op, or a sum over it)
            model = runtime.to_onnx(variant.graph, variant.params, outputs=["out"], keep_loss=op in LOSSES)
            assert model.opset_import[0].version == OPSET
            assert [o.name for o in model.graph.output] == ["out"] + (["loss"] if op in LOSSES else [])
            expected = runtime.compile(variant.graph).forward(variant.inputs, variant.params, with_grad=False).outputs
            assert_outputs_match(model, variant.inputs, expected, repr(variant))
        checked.append(sample)

    check()
    assert len(checked) >= 10


@pytest.mark.parametrize("keep_loss", [False, True], ids=["inference", "keep_loss"])
@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.json")), ids=lambda p: p.name)
def test_every_example_graph_exports_its_prediction(path, keep_loss):
    graph = graphspec.load(path)
    predictions = [name for name in graph.outputs if name != graph.loss]
    if not predictions and not keep_loss:
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
    model = runtime.to_onnx(graph, params, keep_loss=keep_loss)
    assert [o.name for o in model.graph.output] == predictions + ([graph.loss] if keep_loss else [])
    if keep_loss:  # every input reaches the loss in the examples: the targets and labels are back
        assert [i.name for i in model.graph.input] == list(graph.inputs)
    outputs = runtime.compile(graph).forward(inputs, params, with_grad=False).outputs
    assert_outputs_match(model, inputs, outputs, path.name)


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


# -- keep_loss ------------------------------------------------------------------------------------

PAIRWISE_SHAPES = [[], [5], ["N", 3], [2, "N", 3]]
CLASS_SHAPES = [[4], ["N", 4], [2, "N", 3]]  # classes last
LOSS_CASES = [(op, None) for op in ("mse", "bce", "bce_with_logits")] + [
    ("softmax_cross_entropy", "int64"), ("softmax_cross_entropy", "probabilities")]


def loss_values(op: str, labels: str | None, shape: tuple[int, ...], dtype: str, rng) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and targets for ``op``, with the edges the kernels handle: bce's clip (0, 1 and
    beyond eps), logits whose exp would overflow (bce_with_logits, softmax_cross_entropy)."""
    if op == "mse":
        x, y = rng.normal(size=shape) * 2, rng.normal(size=shape)
    elif op == "bce":
        x = rng.choice([0.0, 1.0, 1e-12, 1 - 1e-12, 0.02, 0.5, 0.97], size=shape)
        y = rng.choice([0.0, 1.0, 0.3], size=shape)
    elif op == "bce_with_logits":
        x = rng.choice([-100.0, -30.0, -2.5, 0.0, 1.5, 40.0, 100.0], size=shape)
        y = rng.choice([0.0, 1.0, 0.6], size=shape)
    else:
        x = rng.normal(size=shape) * 3
        x.reshape(-1, shape[-1])[0] += 90.0  # exp(90) is inf in float32: only a shifted softmax survives
        if labels == "int64":
            return x.astype(dtype), rng.integers(0, shape[-1], size=shape[:-1]).astype(np.int64)
        y = rng.dirichlet(np.ones(shape[-1]), size=shape[:-1]).reshape(shape)
    return np.asarray(x, dtype), np.asarray(y, dtype)


def loss_graph(op: str, labels: str | None, shape: list, dtype: str, reduction: str, **attrs) -> graphspec.Graph:
    """x and y into ``op``; a scalar reduction is the graph's loss itself, 'none' is output 'out' under
    a summed loss."""
    g = GraphBuilder(f"keep_{op}", dtype=dtype)
    x = g.input("x", shape)
    y = g.input("y", shape[:-1], dtype="int64") if labels == "int64" else g.input("y", shape)
    value = g.op(op, x, y, reduction=reduction, name="per" if reduction == "none" else "L", **attrs)
    if reduction == "none":
        g.output("out", value)
        value = g.sum(value, name="L")
    g.loss(value)
    return g.build()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("op, labels", LOSS_CASES, ids=[f"{op}-{lab}" if lab else op for op, lab in LOSS_CASES])
def test_a_kept_loss_is_chainrules_loss_in_onnxruntime(op, labels, reduction, dtype):
    rng = np.random.default_rng(7)
    for shape in CLASS_SHAPES if op == "softmax_cross_entropy" else PAIRWISE_SHAPES:
        for attrs in [{"eps": 1e-7}, {"eps": 0.05}] if op == "bce" else [{}]:
            graph = loss_graph(op, labels, shape, dtype, reduction, **attrs)
            x, y = loss_values(op, labels, tuple(4 if d == "N" else d for d in shape), dtype, rng)
            model = runtime.to_onnx(graph, {}, keep_loss=True)
            onnx.checker.check_model(model, full_check=True)
            assert [i.name for i in model.graph.input] == ["x", "y"]  # the targets are inputs again
            assert [o.name for o in model.graph.output] == (["out"] if reduction == "none" else []) + ["loss"]
            assert "N" in [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim] or "N" not in shape
            expected = runtime.compile(graph).forward({"x": x, "y": y}, {}, with_grad=False).outputs
            assert np.all(np.isfinite(expected["loss"]))
            assert_outputs_match(model, {"x": x, "y": y}, expected, f"{op} {labels} {reduction} {shape} {attrs}")


def test_keep_loss_false_is_the_default_and_leaves_the_loss_out():
    graph = graphspec.load(EXAMPLES / "small_mlp.json")
    params = runtime.init_params(graph, seed=2)
    default = runtime.to_onnx(graph, params)
    assert default.SerializeToString() == runtime.to_onnx(graph, params, keep_loss=False).SerializeToString()
    assert graph.loss not in [o.name for o in default.graph.output]
    assert not {node.op_type for node in default.graph.node} & {"GatherElements"}
    with pytest.raises(runtime.ExportError, match=r"a loss is training only.*keep_loss=True"):
        runtime.to_onnx(graph, params, outputs=[graph.loss])


def test_keep_loss_adds_the_loss_to_the_outputs_named():
    graph = graphspec.load(EXAMPLES / "logistic_regression.json")
    params = runtime.init_params(graph, seed=4)
    model = runtime.to_onnx(graph, params, outputs=["a"], keep_loss=True)
    assert [o.name for o in model.graph.output] == ["a", "loss"]
    assert [i.name for i in model.graph.input] == ["x1", "x2", "y"]
    assert model.graph.output[1].type.tensor_type.shape.dim == []  # a scalar
    only_loss = runtime.to_onnx(graph, params, outputs=["loss"], keep_loss=True)
    assert [o.name for o in only_loss.graph.output] == ["loss"]


def test_the_command_line_keeps_the_loss(tmp_path):
    graph_path = EXAMPLES / "logistic_regression.json"
    graph = graphspec.load(graph_path)
    params = runtime.init_params(graph, seed=5)
    params = {name: value + 0.3 for name, value in params.items()}  # not all zeros: a loss that says something
    runtime.save_tensors(tmp_path / "params.npz", params)
    out = tmp_path / "model.onnx"
    result = subprocess.run([sys.executable, "-m", "service.cli", "export-onnx", str(graph_path), "--params",
                             str(tmp_path / "params.npz"), "-o", str(out), "--keep-loss"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "outputs a, loss" in result.stdout
    model = onnx.load(str(out))
    assert [i.name for i in model.graph.input] == ["x1", "x2", "y"]
    inputs = {"x1": np.array([0.5, -1.0, 2.0]), "x2": np.array([1.5, 2.0, -0.5]), "y": np.array([1.0, 0.0, 1.0])}
    assert_outputs_match(model, inputs, runtime.compile(graph).forward(inputs, params).outputs, "cli")
