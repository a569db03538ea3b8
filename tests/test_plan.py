"""The execution engine: forward, reverse-mode backward, fan-out, memory, and input checking."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import EXAMPLES

import graphspec
import runtime
from graphspec import GraphBuilder
from runtime import InputError
from runtime.kernels import KERNELS, unbroadcast

SEED_INPUTS = {"x1": np.array([1.0, 2.0, -1.0]), "x2": np.array([0.5, -1.0, 2.0]), "y": np.array([1.0, 0.0, 1.0])}
SEED_PARAMS = {"w1": np.array(0.5), "w2": np.array(-0.3), "b": np.array(0.1)}


def seed_plan(name="logistic_regression"):
    return runtime.compile(graphspec.load(EXAMPLES / f"{name}.json"))


def test_fan_out_sums_gradients():
    g = GraphBuilder("fan", dtype="float64")
    w = g.param("w", [3], init="zeros")
    x = g.input("x", [3])
    h = w * w                    # w feeds both operands
    g.loss(g.sum(h * x + h))     # h feeds two consumers
    plan = runtime.compile(g.build())
    w0, x0 = np.array([1.0, -2.0, 3.0]), np.array([0.5, 1.0, 2.0])
    grads = plan.forward({"x": x0}, {"w": w0}).backward()
    np.testing.assert_allclose(grads["w"], 2 * w0 * (x0 + 1), rtol=1e-15)


def test_broadcast_gradients_are_summed_back_to_the_operand_shape():
    g = GraphBuilder("bias", dtype="float64")
    x = g.input("x", ["N", 3])
    b = g.param("b", [3], init="zeros")
    s = g.param("s", [], init="ones")
    g.loss(g.sum((x + b) * s))
    grads = runtime.compile(g.build()).forward({"x": np.ones((5, 3))}, {"b": np.zeros(3), "s": np.array(2.0)}).backward()
    np.testing.assert_array_equal(grads["b"], np.full(3, 10.0))
    assert grads["s"].shape == () and grads["s"] == 15.0


@pytest.mark.parametrize("grad_shape, shape", [((4, 3), (3,)), ((4, 3), (1, 3)), ((2, 4, 3), (4, 1)),
                                               ((4, 3), ()), ((4, 3), (4, 3))])
def test_unbroadcast_inverts_numpy_broadcasting(grad_shape, shape):
    g = np.arange(np.prod(grad_shape), dtype=np.float64).reshape(grad_shape)
    out = unbroadcast(g, shape)
    assert out.shape == shape
    # the adjoint of broadcasting: <unbroadcast(g), v> == <g, broadcast(v)>
    v = np.random.default_rng(0).standard_normal(shape)
    np.testing.assert_allclose(np.sum(out * v), np.sum(g * np.broadcast_to(v, grad_shape)))


def test_forward_values_nobody_needs_are_freed():
    g = GraphBuilder("chain", dtype="float64")
    x = g.input("x", ["N"])
    w = g.param("w", [], init="zeros")
    h1 = g.add(x, w, name="h1")
    h2 = g.add(h1, w, name="h2")      # add's VJP reads nothing: h1 can go once h2 is computed
    h3 = g.tanh(h2, name="h3")        # tanh's VJP reads its output
    g.loss(g.sum(h3, name="L"))
    plan = runtime.compile(g.build())
    run = plan.forward({"x": np.ones(4)}, {"w": np.array(0.1)})
    assert "h1" not in run.values and "h2" not in run.values and "h3" in run.values
    kept = plan.forward({"x": np.ones(4)}, {"w": np.array(0.1)}, keep_values=True)
    assert {"h1", "h2", "h3", "L"} <= set(kept.values)
    np.testing.assert_allclose(run.backward()["w"], kept.backward()["w"])


def test_vjps_run_only_on_the_parameter_to_loss_path(monkeypatch):
    calls = []
    for op in ("log", "mul"):
        original = KERNELS[op]

        def counting(g, out, *args, _op=op, _vjp=original.vjp, **attrs):
            calls.append(_op)
            return _vjp(g, out, *args, **attrs)

        monkeypatch.setitem(KERNELS, op, dataclasses.replace(original, vjp=counting))
    g = GraphBuilder("path", dtype="float64")
    x = g.input("x", [2])
    w = g.param("w", [2], init="ones")
    feature = g.log(x)                  # depends on the input only: no VJP needed
    g.loss(g.sum(feature * w))
    runtime.compile(g.build()).forward({"x": np.array([1.0, 2.0])}, {"w": np.ones(2)}).backward()
    assert calls == ["mul"]


def test_node_and_input_gradients_on_request():
    run = seed_plan().forward(SEED_INPUTS, SEED_PARAMS, grad_inputs=True)
    grads = run.backward(keep_grads=True)
    assert {"x1", "x2", "z", "a", "L"} <= set(grads) and "y" in grads
    assert float(grads["L"]) == 1.0
    np.testing.assert_allclose(grads["x1"], grads["z"] * 0.5)
    plain = seed_plan().forward(SEED_INPUTS, SEED_PARAMS).backward()
    assert set(plain) == {"w1", "w2", "b"}


def test_gradients_are_fresh_writable_arrays():
    g = GraphBuilder("sum", dtype="float64")
    w = g.param("w", [2, 3], init="zeros")
    g.loss(g.sum(w))
    grads = runtime.compile(g.build()).forward({}, {"w": np.zeros((2, 3))}).backward()
    assert grads["w"].flags.writeable and grads["w"].flags.c_contiguous
    grads["w"] += 1  # a broadcast view would refuse this


def test_a_plan_runs_many_times_with_different_batch_sizes():
    plan = seed_plan()
    for n in (1, 7, 64):
        rng = np.random.default_rng(n)
        inputs = {"x1": rng.standard_normal(n), "x2": rng.standard_normal(n), "y": (rng.random(n) > 0.5) * 1.0}
        run = plan.forward(inputs, SEED_PARAMS)
        assert run.outputs["a"].shape == (n,) and np.isfinite(run.loss)


def test_float32_graphs_stay_float32():
    graph = graphspec.load(EXAMPLES / "small_mlp.json")
    params = runtime.init_params(graph, seed=1)
    assert all(p.dtype == np.float32 for p in params.values())
    rng = np.random.default_rng(0)
    run = runtime.compile(graph).forward(
        {"x": rng.standard_normal((5, 4)).astype(np.float32), "labels": np.array([0, 1, 2, 1, 0])}, params,
        keep_values=True)
    assert all(v.dtype == np.float32 for k, v in run.values.items() if k != "labels")
    assert all(gr.dtype == np.float32 for gr in run.backward().values())


def test_extreme_values_raise_no_numpy_warnings():
    # pytest turns warnings into errors: this passes only if nothing warns
    run = seed_plan().forward({"x1": np.array([1e4, -1e4]), "x2": np.array([0.0, 0.0]), "y": np.array([0.0, 1.0])},
                              {"w1": np.array(10.0), "w2": np.array(0.0), "b": np.array(0.0)})
    assert np.isfinite(run.loss)
    assert all(np.isfinite(v).all() for v in run.backward().values())


# -- bad inputs --------------------------------------------------------------------------

@pytest.mark.parametrize("change, fragment, name", [
    (lambda i, p: i.pop("x2"), "missing input 'x2'", "x2"),
    (lambda i, p: p.pop("b"), "missing parameter 'b'", "b"),
    (lambda i, p: i.update(x3=np.ones(3)), "unexpected input 'x3'", "x3"),
    (lambda i, p: i.update(x1=np.ones((3, 1))), "expected ['N']", "x1"),
    (lambda i, p: i.update(x1=np.ones(4)), "'x2' has N=3 on axis 0, but 'x1' has N=4", "x2"),
    (lambda i, p: i.update(x1=np.ones(3, dtype=np.float32)), "float32, the graph declares float64", "x1"),
    (lambda i, p: i.update(x1=np.array([1.0, np.nan, 0.0])), "contains NaN or inf", "x1"),
    (lambda i, p: p.update(w1=np.array([0.5])), "parameter 'w1' has shape [1], expected []", "w1"),
    (lambda i, p: i.update(x1=["a", "b", "c"]), "cannot be read as float64", "x1"),
    (lambda i, p: i.update(x1=np.ones(0), x2=np.ones(0), y=np.ones(0)), "empty", "x1"),
])
def test_bad_inputs_name_the_input_and_the_expectation(change, fragment, name):
    inputs, params = dict(SEED_INPUTS), dict(SEED_PARAMS)
    change(inputs, params)
    with pytest.raises(InputError) as info:
        seed_plan().forward(inputs, params)
    assert fragment in str(info.value)
    assert info.value.name == name
    assert not isinstance(info.value, RuntimeError)


def test_unexpected_name_gets_a_did_you_mean():
    inputs = {**SEED_INPUTS, "x_1": SEED_INPUTS["x1"]}
    del inputs["x1"]
    with pytest.raises(InputError, match="did you mean 'x1'"):
        seed_plan().forward(inputs, SEED_PARAMS)


def test_python_lists_are_accepted_and_converted():
    run = seed_plan().forward({k: v.tolist() for k, v in SEED_INPUTS.items()}, {k: float(v) for k, v in
                                                                                SEED_PARAMS.items()})
    assert run.outputs["a"].dtype == np.float64


def test_label_out_of_range_names_the_node():
    graph = graphspec.load(EXAMPLES / "small_mlp.json")
    with pytest.raises(runtime.ExecutionError) as info:
        runtime.compile(graph).forward({"x": np.zeros((2, 4), np.float32), "labels": np.array([0, 3])},
                                       runtime.init_params(graph))
    assert info.value.node == "L" and "label 3" in str(info.value) and "3 classes" in str(info.value)


def test_backward_needs_a_run_made_for_it():
    run = seed_plan().forward(SEED_INPUTS, SEED_PARAMS, with_grad=False)
    assert np.isfinite(run.loss)
    with pytest.raises(InputError):
        run.backward()


def test_compile_validates_a_graph_built_in_memory():
    graph = graphspec.load(EXAMPLES / "logistic_regression.json")
    graph.analysis = None
    assert runtime.compile(graph).steps


def test_init_params_is_seeded_and_copies_stored_values():
    graph = graphspec.load(EXAMPLES / "small_mlp.json")
    a, b, c = runtime.init_params(graph, 0), runtime.init_params(graph, 0), runtime.init_params(graph, 1)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["w1"], c["w1"])
    limit = np.sqrt(6 / (4 + 16))
    assert np.abs(a["w1"]).max() <= limit and np.abs(a["w1"]).max() > limit / 2
    assert not a["b1"].any()


def test_each_parameter_gets_its_own_gradient_array():
    g = GraphBuilder("alias", dtype="float64")
    p, q = g.param("p", [3], init="zeros"), g.param("q", [3], init="zeros")
    g.loss(g.sum(g.add(p, q)))
    grads = runtime.compile(g.build()).forward({}, {"p": np.ones(3), "q": np.ones(3)}).backward()
    assert grads["p"] is not grads["q"]
    grads["p"] += 5  # in-place clipping of one gradient must not touch another
    np.testing.assert_array_equal(grads["q"], np.ones(3))


def test_a_loss_no_parameter_reaches_has_zero_gradients():
    g = GraphBuilder("detached", dtype="float64")
    w = g.param("w", [2], init="ones")
    g.output("side", g.exp(w))
    g.loss(g.sum(g.constant(np.array([1.0, 2.0]))))
    grads = runtime.compile(g.build()).forward({}, {"w": np.ones(2)}).backward()
    np.testing.assert_array_equal(grads["w"], np.zeros(2))
