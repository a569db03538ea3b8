"""The seed example, as tests: examples/logistic_regression.json and examples/sigmoid_primitives.json.

    z = x1*w1 + x2*w2 + b,  a = sigmoid(z),  L = -mean(y log a + (1 - y) log(1 - a))

With mean BCE the gradients have a closed form: dL/dz = (a - y)/N per example, so
dL/dw1 = mean(x1 (a - y)), dL/dw2 = mean(x2 (a - y)), dL/db = mean(a - y).

The primitive graph builds sigma from nodes, a = 1 / (1 + exp(-1 * z)), and its backward
pass tells the seed's story node by node: '/' passes -1/d^2, '+' passes through, 'exp'
multiplies by exp(-z), 'x -1' flips the sign; together sigma(z)(1 - sigma(z)).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import graphspec
import runtime
from runtime.gradcheck import gradcheck

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
_N = int(os.environ.get("CHAINRULE_GRADCHECK_EXAMPLES", "0"))
EXAMPLES_SETTINGS = settings(max_examples=_N or 60, deadline=None, derandomize=not _N, database=None)


@pytest.fixture(scope="module")
def logreg():
    return runtime.compile(graphspec.load(EXAMPLES / "logistic_regression.json"))


@pytest.fixture(scope="module")
def primitives():
    return runtime.compile(graphspec.load(EXAMPLES / "sigmoid_primitives.json"))


@st.composite
def seed_data(draw):
    """A batch of N examples and parameters; |z| <= 7 keeps a well inside bce's clip."""
    n = draw(st.integers(1, 16))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    soft = draw(st.booleans())
    inputs = {
        "x1": rng.uniform(-2, 2, n),
        "x2": rng.uniform(-2, 2, n),
        "y": rng.uniform(0, 1, n) if soft else rng.integers(0, 2, n).astype(np.float64),
    }
    params = {"w1": np.float64(rng.uniform(-1.5, 1.5)), "w2": np.float64(rng.uniform(-1.5, 1.5)),
              "b": np.float64(rng.uniform(-1, 1))}
    return inputs, params


def _stable_sigmoid(z):
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


def _run(plan, inputs, params):
    run = plan.forward(inputs, params, keep_values=True)
    return run, run.backward(keep_grads=True)


def test_the_seed_by_hand(logreg, primitives):
    """Zero parameters (the examples' init): a = 1/2 everywhere, gradients in round numbers."""
    inputs = {"x1": [1.0, 2.0], "x2": [3.0, -1.0], "y": [1.0, 0.0]}
    for plan in (logreg, primitives):
        params = runtime.init_params(plan.graph)
        assert all(float(v) == 0.0 for v in params.values())
        run, grads = _run(plan, inputs, params)
        np.testing.assert_array_equal(run.outputs["a"], [0.5, 0.5])
        assert run.loss == pytest.approx(np.log(2), rel=1e-12)
        # (a - y) = [-1/2, 1/2]: dw1 = mean([-1/2, 1]), dw2 = mean([-3/2, -1/2]), db = mean([-1/2, 1/2])
        assert float(grads["w1"]) == pytest.approx(0.25, rel=1e-12)
        assert float(grads["w2"]) == pytest.approx(-1.0, rel=1e-12)
        assert float(grads["b"]) == pytest.approx(0.0, abs=1e-12)
        np.testing.assert_allclose(grads["z"], [-0.25, 0.25], rtol=1e-12)


def test_logistic_regression_matches_the_closed_form(logreg):
    @EXAMPLES_SETTINGS
    @given(seed_data())
    def check(data):
        inputs, params = data
        x1, x2, y = inputs["x1"], inputs["x2"], inputs["y"]
        n = len(y)
        run, grads = _run(logreg, inputs, params)
        z = x1 * params["w1"] + x2 * params["w2"] + params["b"]
        np.testing.assert_array_equal(run.values["z"], z)
        a = run.values["a"]
        np.testing.assert_allclose(a, 1 / (1 + np.exp(-z)), rtol=1e-14)
        np.testing.assert_allclose(run.loss, -np.mean(y * np.log(a) + (1 - y) * np.log(1 - a)), rtol=1e-12)
        assert set(grads) >= {"w1", "w2", "b", "z", "a", "L"}
        # dL/dz per example is (a - y)/N: bce's (a - y)/(a(1 - a))/N times sigmoid's a(1 - a)
        np.testing.assert_allclose(grads["z"], (a - y) / n, rtol=1e-10, atol=1e-16)
        np.testing.assert_allclose(grads["w1"], np.mean(x1 * (a - y)), rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(grads["w2"], np.mean(x2 * (a - y)), rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(grads["b"], np.mean(a - y), rtol=1e-10, atol=1e-14)
        for name in ("w1", "w2", "b"):
            assert np.shape(grads[name]) == () and grads[name].dtype == np.float64

    check()


def test_primitive_sigmoid_tells_the_seed_story(logreg, primitives):
    @EXAMPLES_SETTINGS
    @given(seed_data())
    def check(data):
        inputs, params = data
        run, grads = _run(primitives, inputs, params)
        ref_run, ref_grads = _run(logreg, inputs, params)
        v = run.values
        z = v["z"]
        # forward: the primitive a is the sigmoid example's a
        np.testing.assert_array_equal(z, ref_run.values["z"])
        np.testing.assert_allclose(v["a"], ref_run.values["a"], rtol=1e-14)
        np.testing.assert_array_equal(v["neg_z"], -z)
        d = 1 + np.exp(-z)
        np.testing.assert_allclose(v["one_plus_exp"], d, rtol=1e-15)

        g_a = grads["a"]  # L's upstream gradient at "a" = 1/x
        assert np.all(g_a != 0)
        # '1/x' (div(one, one_plus_exp)) passes -1/d^2
        np.testing.assert_allclose(grads["one_plus_exp"], g_a * (-1 / d**2), rtol=1e-12)
        # '+' passes through
        np.testing.assert_array_equal(grads["exp_neg_z"], grads["one_plus_exp"])
        # 'exp' multiplies by exp(-z)
        np.testing.assert_allclose(grads["neg_z"], grads["exp_neg_z"] * np.exp(-z), rtol=1e-12)
        # 'x -1' flips the sign
        np.testing.assert_array_equal(grads["z"], -grads["neg_z"])
        # together: sigma(z)(1 - sigma(z)), with 1 - sigma(z) = sigma(-z) (no cancellation)
        np.testing.assert_allclose(grads["z"] / g_a, _stable_sigmoid(z) * _stable_sigmoid(-z), rtol=1e-12)
        # constants take no gradient
        assert "one" not in grads and "minus_one" not in grads
        # and both graphs train the same parameters the same way
        for name in ("w1", "w2", "b"):
            np.testing.assert_allclose(grads[name], ref_grads[name], rtol=1e-11, atol=1e-14, err_msg=name)
        np.testing.assert_allclose(grads["z"], ref_grads["z"], rtol=1e-11, atol=1e-16)

    check()


@pytest.mark.parametrize("example", ["logistic_regression", "sigmoid_primitives"])
def test_seed_examples_pass_gradcheck(example):
    graph = graphspec.load(EXAMPLES / f"{example}.json")

    @settings(EXAMPLES_SETTINGS, max_examples=_N or 15)
    @given(seed_data())
    def check(data):
        inputs, params = data
        result = gradcheck(graph, inputs, params, wrt="all")
        assert result.ok, str(result)
        assert set(result.entries) == {"w1", "w2", "b", "x1", "x2"} and set(result.skipped) == {"y"}

    check()
