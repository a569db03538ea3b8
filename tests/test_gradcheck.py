"""Every op's backward, proved against finite differences (runtime/gradcheck.py).

* ``test_op_gradients``: for every op of the registry ``graphspec.OPS``, random samples
  from tests/op_samples.py (broadcasting, fan-out, random axes/shapes/reductions...)
  must pass :func:`runtime.gradcheck.gradcheck`. An op without a sample fails here, so
  a new op cannot land without a checked backward.
* gradcheck itself can fail: a wrong VJP (for every op) is caught, and the report names it.
* float32 graphs stay float32: every forward value and every gradient, for every op.
* numerical stability at extreme logits and probabilities.

The per-op checks (samples, every axis, float32, stability) run on both engines: the
reference interpreter and the compiled engine (``gradcheck(..., engine="compiled")``,
:class:`runtime.CompiledStep`), whose loss is also compared with the interpreter's.
Tests of the gradcheck tool itself run on the interpreter.

Hypothesis runs derandomized so that CI is reproducible; set CHAINRULE_GRADCHECK_EXAMPLES=<n>
to run n examples per property with fresh randomness.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import graphspec
import runtime
import runtime.kernels
from graphspec import GraphBuilder
from runtime.gradcheck import GradcheckResult, assert_gradcheck, cast_graph, gradcheck

from op_samples import OP_NODE, SAMPLES, Sample, matmul, to_float32

_N = int(os.environ.get("CHAINRULE_GRADCHECK_EXAMPLES", "0"))


def examples(n: int) -> settings:
    return settings(max_examples=_N or n, deadline=None, derandomize=not _N, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


ALL_OPS = sorted(graphspec.OPS)
ENGINES = ["interpreter", "compiled"]
both_engines = pytest.mark.parametrize("engine", ENGINES)
OPS_WITH_INPUTS = [op for op in ALL_OPS if graphspec.OPS[op].arity > 0]


def sample_strategy(op: str):
    if op not in SAMPLES:
        pytest.fail(f"op {op!r} is in graphspec.OPS but has no gradient-check sample: add a strategy for it to "
                    f"SAMPLES in tests/op_samples.py (a small float64 graph applying {op!r}, with random shapes "
                    f"and fan-out), so that its VJP is checked against finite differences")
    return SAMPLES[op]


@contextlib.contextmanager
def patched_kernel(op: str, **changes):
    """Swap one entry of the kernel table (plans compiled inside see it)."""
    original = runtime.kernels.KERNELS[op]
    runtime.kernels.KERNELS[op] = dataclasses.replace(original, **changes)
    try:
        yield
    finally:
        runtime.kernels.KERNELS[op] = original


def applies(sample: Sample, op: str) -> bool:
    return any(n.id == OP_NODE and n.op == op for n in sample.graph.nodes)


# -- the registry ---------------------------------------------------------------------------------

def test_kernel_table_matches_the_catalogue():
    assert set(runtime.KERNELS) == set(graphspec.OPS)
    assert runtime.KERNELS is runtime.kernels.KERNELS


def test_samples_name_only_catalogue_ops():
    assert set(SAMPLES) <= set(graphspec.OPS), f"stale samples: {sorted(set(SAMPLES) - set(graphspec.OPS))}"


def test_an_op_without_a_sample_fails_rather_than_skips():
    with pytest.raises(pytest.fail.Exception, match="add a strategy for it to SAMPLES in tests/op_samples.py"):
        sample_strategy("an_op_added_to_graphspec_tomorrow")


def _gradcheck_sample(sample: Sample, engine: str) -> GradcheckResult:
    return gradcheck(sample.graph, sample.inputs, sample.params, wrt=sample.wrt, engine=engine, noise=sample.noise)


@both_engines
@pytest.mark.parametrize("op", ALL_OPS)
def test_op_gradients(op, engine):
    strategy = sample_strategy(op)
    checked = []

    @examples(100)
    @given(strategy)
    def check(sample: Sample):
        assert applies(sample, op), f"the {op!r} sample does not apply {op!r} as node {OP_NODE!r}"
        result = _gradcheck_sample(sample, engine)
        assert result.entries, "the sample has nothing to check"
        if engine == "compiled":
            assert "(loss)" in result.entries, "the compiled loss was not compared with the interpreter's"
        assert result.ok, f"{sample!r}\n{result}"
        checked.append(sample)

    check()
    assert len(checked) >= (_N or 100) // 4, f"only {len(checked)} {op} samples were checked on the {engine} engine"


def test_the_registry_is_gradchecked_on_both_engines():
    """test_op_gradients covers every op of the kernel table, on each engine."""
    assert set(runtime.KERNELS) == set(ALL_OPS) <= set(SAMPLES)
    assert ENGINES == ["interpreter", "compiled"]


def test_compiled_step_of_a_graph_without_parameters():
    g = GraphBuilder("noparams", dtype="float64")
    x = g.input("x", [3])
    g.loss(g.sum(g.mul(x, x)))
    graph = g.build()
    inputs = {"x": np.array([1.0, -2.0, 0.5])}
    step = runtime.CompiledStep(graph, grad_inputs=True)
    step.load_params({})
    loss, grads = step.gradients(inputs)
    assert loss == pytest.approx(5.25)
    np.testing.assert_allclose(grads["x"], 2 * inputs["x"])
    assert assert_gradcheck(graph, inputs, {}, wrt="inputs", engine="compiled").ok


@both_engines
def test_matmul_vector_dot_product(engine):
    """1-D @ 1-D (a scalar output), every draw: the VJP once broke on the 0-d upstream gradient."""
    @examples(10)
    @given(matmul(vector_dot=True))
    def check(sample: Sample):
        assert [n.op for n in sample.graph.nodes if n.id == OP_NODE] == ["matmul"]
        assert all(len(s.shape) == 1 for s in [*sample.graph.inputs.values(), *sample.graph.parameters.values()])
        result = _gradcheck_sample(sample, engine)
        assert result is None or result.ok, f"{sample!r}\n{result}"

    check()


def _exhaustive_cases():
    """Every axis choice of a rank-3 [2, 3, 4] tensor: the corners random draws reach rarely."""
    subsets = [None] + [list(c) for r in range(4) for c in itertools.combinations(range(3), r)]
    for op in ("sum", "mean"):
        for axis in subsets + [-1, 1, [-1, 0], [2, -3]]:
            for keepdims in (False, True):
                yield op, {"axis": axis, "keepdims": keepdims}
    for perm in [None, *map(list, itertools.permutations(range(3)))]:
        yield "transpose", {"perm": perm}
    for op in ("softmax", "log_softmax"):
        for axis in (-3, -2, -1, 0, 1, 2):
            yield op, {"axis": axis}


@both_engines
@pytest.mark.parametrize("op, attrs", [pytest.param(op, attrs, id=f"{op}-{attrs}")
                                       for op, attrs in _exhaustive_cases()])
def test_every_axis_of_a_rank_3_tensor(op, attrs, engine):
    g = GraphBuilder(op, dtype="float64")
    w = g.param("w", [2, 3, 4], init="zeros")
    out = g.op(op, w, name=OP_NODE, **attrs)
    rng = np.random.default_rng(0)
    g.loss(g.sum(g.mul(out, g.constant(rng.uniform(-1, 1, out.shape)))))
    result = assert_gradcheck(g.build(), {}, {"w": rng.uniform(-2, 2, (2, 3, 4))}, engine=engine)
    assert ("(loss)" in result.entries) == (engine == "compiled")


# -- gradcheck can fail -------------------------------------------------------------------------------

def _logreg():
    g = GraphBuilder("logreg", dtype="float64")
    x = g.input("x", ["N", 3])
    y = g.input("y", ["N", 1])
    w = g.param("w", [3, 1], init="zeros")
    b = g.param("b", [1], init="zeros")
    a = g.sigmoid(g.add(g.matmul(x, w), b))
    g.output("a", a)
    g.loss(g.bce(a, y))
    graph = g.build()
    rng = np.random.default_rng(7)
    inputs = {"x": rng.normal(size=(5, 3)), "y": rng.integers(0, 2, size=(5, 1)).astype(np.float64)}
    params = {"w": rng.normal(size=(3, 1)), "b": rng.normal(size=(1,))}
    return graph, inputs, params


def test_gradcheck_passes_and_reports():
    graph, inputs, params = _logreg()
    result = gradcheck(graph, inputs, params)
    assert isinstance(result, GradcheckResult)
    assert result.ok and result.failures == []
    assert set(result.entries) == {"w", "b"}
    assert set(result.max_abs_error) == set(result.max_rel_error) == {"w", "b"}
    assert all(0 <= e < 1e-8 for e in result.max_abs_error.values())
    text = str(result)
    assert "passed" in text and "'w' [3, 1]" in text and "max abs error" in text and "max rel error" in text
    assert assert_gradcheck(graph, inputs, params).ok


def test_a_wrong_vjp_is_caught():
    graph, inputs, params = _logreg()
    # off by 1%: d(sigmoid) = 1.01 * out * (1 - out)
    with patched_kernel("sigmoid", vjp=lambda g, out, x: (1.01 * g * out * (1 - out),)):
        result = gradcheck(graph, inputs, params)
        assert not result.ok
        assert result.failures == ["w", "b"]
        text = str(result)
        assert "FAILED for 'w', 'b'" in text and "FAIL parameter 'w'" in text and "outside tolerance" in text
        with pytest.raises(AssertionError) as info:
            assert_gradcheck(graph, inputs, params)
        assert str(info.value) == text
    assert gradcheck(graph, inputs, params).ok  # the table is restored


def test_a_forgotten_operand_gradient_is_caught():
    """mul's VJP returning g * b for both operands: right for one, wrong for the other."""
    g = GraphBuilder("m", dtype="float64")
    u = g.param("u", [2, 3], init="zeros")
    v = g.param("v", [3], init="zeros")
    g.loss(g.sum(g.mul(u, v)))
    graph = g.build()
    params = {"u": np.arange(6.0).reshape(2, 3) - 2, "v": np.array([0.5, -1.0, 2.0])}
    with patched_kernel("mul", vjp=lambda g_, out, a, b: (g_ * b, g_ * b)):
        result = gradcheck(graph, {}, params)
    assert result.failures == ["v"]
    assert result.entries["u"].ok


@pytest.mark.parametrize("op", [op for op in OPS_WITH_INPUTS if graphspec.OPS[op].grad_inputs])
def test_gradcheck_catches_a_wrong_vjp_for_every_op(op):
    """Shift each gradient the op's VJP returns by 0.1: gradcheck must notice wherever that
    changes the engine's gradients (and it must, in some draws)."""
    strategy = sample_strategy(op)
    original = runtime.kernels.KERNELS[op]

    def shifted(*args, **attrs):
        return tuple(None if gi is None else np.asarray(gi) + 0.1 for gi in original.vjp(*args, **attrs))

    effective = []

    @examples(20)
    @given(strategy)
    def check(sample: Sample):
        g64 = sample.graph
        right = runtime.compile(g64).forward(sample.inputs, sample.params, grad_inputs=True,
                                             noise=sample.noise).backward()
        with patched_kernel(op, vjp=shifted):
            wrong = runtime.compile(g64).forward(sample.inputs, sample.params, grad_inputs=True,
                                                 noise=sample.noise).backward()
            result = gradcheck(sample.graph, sample.inputs, sample.params, wrt=sample.wrt, noise=sample.noise)
        changed = [name for name in result.entries if not np.allclose(right[name], wrong[name], rtol=1e-4,
                                                                      atol=1e-4)]
        if changed:
            effective.append(sample)
            assert not result.ok, f"gradcheck missed a wrong {op} VJP changing {changed}:\n{sample!r}\n{result}"
            assert set(changed) <= set(result.failures)

    check()
    assert effective, f"the wrong {op} VJP never changed a gradient: the samples do not reach it"


@pytest.mark.parametrize("op", [op for op in ALL_OPS if not graphspec.OPS[op].grad_inputs and graphspec.OPS[op].arity])
def test_ops_without_a_gradient_pass_none_back(op):
    """argmax, one_hot: their inputs are indices or data; the VJP says so, on both engines."""
    @examples(10)
    @given(sample_strategy(op))
    def check(sample: Sample):
        for engine in ENGINES:
            assert _gradcheck_sample(sample, engine).ok
    check()


def test_an_unbroadcast_gradient_is_caught():
    """A VJP returning a broadcast-shaped gradient of the wrong value: the engine sums it down, 2x too big."""
    g = GraphBuilder("s", dtype="float64")
    w = g.param("w", [3], init="zeros")
    g.loss(g.sum(g.exp(w)))
    graph = g.build()
    with patched_kernel("sum", vjp=lambda g_, out, x, *, axis, keepdims: (np.ones((2, 3)),)):
        result = gradcheck(graph, {}, {"w": np.zeros(3)})
    assert result.failures == ["w"]
    np.testing.assert_allclose(result.entries["w"].analytic, 2.0)


def test_an_engine_gradient_of_the_wrong_shape_fails_the_check(monkeypatch):
    g = GraphBuilder("s", dtype="float64")
    w = g.param("w", [3], init="zeros")
    g.loss(g.sum(w))
    graph = g.build()
    monkeypatch.setattr(runtime.Run, "backward", lambda self, **kw: {"w": np.ones((1, 3))})
    result = gradcheck(graph, {}, {"w": np.zeros(3)})
    assert result.failures == ["w"]
    assert "the engine's gradient has shape [1, 3]" in str(result)


# -- what gradcheck checks ----------------------------------------------------------------------------

def _labelled():
    g = GraphBuilder("clf", dtype="float32")
    x = g.input("x", ["N", 3])
    labels = g.input("labels", ["N"], dtype="int64")
    target = g.input("target", ["N", 2])
    w = g.param("w", [3, 2], value=np.linspace(-1, 1, 6).reshape(3, 2))
    logits = g.add(g.matmul(x, w), g.constant(np.array([0.25, -0.5])))
    g.output("logits", logits)
    g.loss(g.add(g.softmax_cross_entropy(logits, labels), g.mse(logits, target)))
    graph = g.build()
    rng = np.random.default_rng(3)
    inputs = {"x": rng.normal(size=(4, 3)).astype(np.float32), "labels": np.array([0, 1, 1, 0]),
              "target": rng.normal(size=(4, 2)).astype(np.float32)}
    return graph, inputs, {"w": graph.parameters["w"].value.copy()}


def test_wrt_selects_what_is_checked():
    graph, inputs, params = _labelled()
    assert set(gradcheck(graph, inputs, params).entries) == {"w"}
    only_inputs = gradcheck(graph, inputs, params, wrt="inputs")
    assert set(only_inputs.entries) == {"x"}  # never the int64 labels; the mse target is data
    assert set(only_inputs.skipped) == {"target"}
    assert "skipped 'target'" in str(only_inputs)
    everything = gradcheck(graph, inputs, params, wrt="all")
    assert set(everything.entries) == {"w", "x"} and everything.ok
    assert {e.kind for e in everything.entries.values()} == {"parameter", "input"}
    # named explicitly, the target is checked: its gradient is not the engine's business (zero)
    named = gradcheck(graph, inputs, params, wrt=["target", "w"])
    assert list(named.entries) == ["target", "w"] and named.failures == ["target"]
    with pytest.raises(ValueError, match="int64"):
        gradcheck(graph, inputs, params, wrt=["labels"])
    with pytest.raises(ValueError, match="neither"):
        gradcheck(graph, inputs, params, wrt=["nope"])
    with pytest.raises(ValueError, match="wrt"):
        gradcheck(graph, inputs, params, wrt="parameters")


def test_float32_graphs_are_checked_in_float64():
    graph, inputs, params = _labelled()
    before = {k: v.copy() for k, v in {**inputs, **params}.items()}
    result = gradcheck(graph, inputs, params, wrt="all")
    # float32 arithmetic would be far outside 1e-5: the check really ran in float64
    assert result.ok, str(result)
    assert all(e.analytic.dtype == np.float64 and e.numeric.dtype == np.float64 for e in result.entries.values())
    assert max(result.max_abs_error.values()) < 1e-8
    for name, value in {**inputs, **params}.items():  # the caller's arrays are untouched
        assert value.dtype == before[name].dtype and np.array_equal(value, before[name])
    assert graph.inputs["x"].dtype == "float32"  # and so is the graph


def test_cast_graph():
    graph, _, _ = _labelled()
    g64 = cast_graph(graph, "float64")
    assert {s.dtype for s in g64.inputs.values()} == {"float64", "int64"}
    assert g64.inputs["labels"].dtype == "int64"
    assert g64.parameters["w"].dtype == "float64" and g64.parameters["w"].value.dtype == np.float64
    np.testing.assert_array_equal(g64.parameters["w"].value, graph.parameters["w"].value)
    constants = [n.attrs["value"] for n in g64.nodes if n.op == "constant"]
    assert [c.dtype for c in constants] == [np.float64]
    assert all(t.dtype in ("float64", "int64") for t in g64.analysis.types.values())
    assert cast_graph(g64, "float32") == graph
    with pytest.raises(ValueError):
        cast_graph(graph, "int64")


def test_parameters_off_the_loss_path_have_zero_gradient():
    g = GraphBuilder("off", dtype="float64")
    g.param("w", [2], init="zeros")
    unused = g.param("unused", [2], init="zeros")
    g.output("side", g.exp(unused))
    g.loss(g.sum(g.constant(np.ones(2))))
    graph = g.build()
    result = gradcheck(graph, {}, {"w": np.ones(2), "unused": np.ones(2)})
    assert result.ok and set(result.entries) == {"w", "unused"}
    assert all(not e.analytic.any() and not e.numeric.any() for e in result.entries.values())


# -- float32 stays float32 ----------------------------------------------------------------------------

def test_float32_check_detects_an_upcast():
    """The dtype check below can fail: an exp that computes in float64 is caught."""
    g = GraphBuilder("up", dtype="float32")
    w = g.param("w", [2], init="zeros")
    g.loss(g.sum(g.exp(w)))
    graph = g.build()
    with patched_kernel("exp", forward=lambda x: np.exp(x.astype(np.float64))):
        with pytest.raises(AssertionError, match="float64"):
            assert_float32_throughout(Sample("exp", graph, {}, {"w": np.zeros(2, np.float32)}, "params"))


def test_compiled_float32_check_detects_a_float64_buffer():
    """The compiled dtype check can fail too: a step returning float64 gradients is caught."""
    g = GraphBuilder("up", dtype="float32")
    w = g.param("w", [2], init="zeros")
    g.loss(g.sum(g.exp(w)))
    graph = g.build()
    sample = Sample("exp", graph, {}, {"w": np.zeros(2, np.float32)}, "params")
    assert_float32_throughout_compiled(sample)
    real_gradients = runtime.CompiledStep.gradients

    def upcast(self, inputs):
        loss, grads = real_gradients(self, inputs)
        return loss, {k: v.astype(np.float64) for k, v in grads.items()}

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runtime.CompiledStep, "gradients", upcast)
        with pytest.raises(AssertionError, match="float64"):
            assert_float32_throughout_compiled(sample)


def assert_float32_throughout(sample: Sample) -> None:
    """Every value the forward pass computes and every gradient the backward pass returns
    (parameters, inputs and every node on the path) is float32; int64 labels stay int64."""
    graph = sample.graph
    plan = runtime.compile(graph)
    run = plan.forward(sample.inputs, sample.params, keep_values=True, grad_inputs=True)
    grads = run.backward(keep_grads=True)
    checked = [("value", name, array) for name, array in run.values.items()]
    checked += [("output", graph.outputs[name], array) for name, array in run.outputs.items()]
    checked += [("gradient", name, array) for name, array in grads.items()]
    _assert_float32_or_int64(graph, checked)
    assert set(sample.params) <= set(grads)


def _assert_float32_or_int64(graph, checked) -> None:
    """Each (what, name, array) is float32, or int64/bool where the graph declares it (labels, conditions)."""
    for what, name, array in checked:
        dtype = np.asarray(array).dtype
        if graph.analysis.types[name].dtype in ("int64", "bool"):
            assert dtype == np.dtype(graph.analysis.types[name].dtype), f"{what} of {name!r} is {dtype}"
        else:
            assert dtype == np.float32, f"{what} of {name!r} is {dtype}, not float32"


def assert_float32_throughout_compiled(sample: Sample) -> None:
    """The compiled engine's version: every buffer of the lowered program (values, inputs,
    the loss, input gradients) and every gradient it returns is float32 (int64 stays int64),
    and its gradients agree with the interpreter's to float32 precision."""
    graph = sample.graph
    step = runtime.CompiledStep(graph, grad_inputs=True)
    step.load_params(sample.params)
    loss, grads = step.gradients(sample.inputs)
    program = step.program(sample.inputs)
    checked = [("value", name, array) for name, array in program.values.items()]
    checked += [("input buffer", name, array) for name, array in program.inputs.items()]
    checked += [("input gradient", name, array) for name, array in program.input_grads.items()]
    checked += [("gradient", name, array) for name, array in grads.items()]
    checked += [("parameter", name, array) for name, array in step.params.items()]
    _assert_float32_or_int64(graph, checked)
    assert program.loss.dtype == np.float32
    assert set(sample.params) <= set(grads)
    reference = runtime.compile(graph).forward(sample.inputs, sample.params, grad_inputs=True)
    expected = reference.backward()
    assert loss == pytest.approx(reference.loss, rel=1e-4, abs=1e-4)
    for name, g in grads.items():
        scale = max(1.0, float(np.max(np.abs(expected[name]), initial=0.0)))
        np.testing.assert_allclose(g, expected[name], rtol=1e-3, atol=1e-4 * scale, err_msg=name)


@both_engines
@pytest.mark.parametrize("op", ALL_OPS)
def test_float32_stays_float32(op, engine):
    strategy = sample_strategy(op)
    check_dtypes = assert_float32_throughout if engine == "interpreter" else assert_float32_throughout_compiled

    @examples(25)
    @given(strategy)
    def check(sample: Sample):
        sample32 = to_float32(sample)
        assert {t.dtype for t in sample32.graph.analysis.types.values()} <= {"float32", "int64", "bool"}  # labels, conditions
        check_dtypes(sample32)

    check()


@both_engines
def test_documented_gradients_at_the_kinks(engine):
    """The catalogue says: relu and abs have gradient 0 at 0 (finite differences cannot check a kink)."""
    for op in ("relu", "abs"):
        graph = _one_param_graph("float64", [3], lambda g, w, op=op: g.op(op, w))
        _, grads = _run(graph, {"w": np.array([0.0, -0.5, 2.0])}, engine=engine)
        expected = [0.0, 0.0, 1.0] if op == "relu" else [0.0, -1.0, 1.0]
        np.testing.assert_array_equal(grads["w"], expected, err_msg=op)


# -- numerical stability ---------------------------------------------------------------------------

@contextlib.contextmanager
def strict_numpy():
    """No numpy warning and no overflow, invalid or divide-by-zero (underflow to 0 is exact enough)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
            yield


def _one_param_graph(dtype: str, shape, build):
    g = GraphBuilder("stability", dtype=dtype)
    w = g.param("w", shape, init="zeros")
    out = build(g, w)
    g.output("out", out)
    g.loss(out if out.shape == () else g.sum(out))
    return g.build()


@dataclasses.dataclass
class _CompiledRun:
    """What the stability tests read of a run (``loss``, ``outputs``), from the compiled engine."""
    loss: float
    outputs: dict


def _run(graph, params, inputs=None, engine="interpreter"):
    plan = runtime.compile(graph)
    if engine == "interpreter":
        run = plan.forward(inputs or {}, params)
        return run, run.backward()
    step = runtime.CompiledStep(plan)
    step.load_params(params)
    loss, grads = step.gradients(inputs or {})
    values = step.program(inputs or {}).values
    # an output is read from its buffer: these graphs never let a later node overwrite it
    outputs = {name: values[node].copy() for name, node in graph.outputs.items() if node in values}
    return _CompiledRun(loss, outputs), grads


@both_engines
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_sigmoid_saturates_exactly(dtype, engine):
    x = np.array([1000.0, -1000.0, 0.0, 40.0, -800.0], dtype=dtype)
    with strict_numpy():
        direct = runtime.KERNELS["sigmoid"].forward(x)
    np.testing.assert_array_equal(direct[:3], np.array([1.0, 0.0, 0.5], dtype=dtype))
    assert direct.dtype == dtype
    graph = _one_param_graph(dtype, [5], lambda g, w: g.sigmoid(w))
    with strict_numpy():
        run, grads = _run(graph, {"w": x}, engine=engine)
    np.testing.assert_array_equal(run.outputs["out"][:3], [1.0, 0.0, 0.5])
    assert np.isfinite(grads["w"]).all()
    np.testing.assert_array_equal(grads["w"][:3], [0.0, 0.0, 0.25])


@both_engines
def test_softmax_and_log_softmax_of_huge_logits(engine):
    z = np.array([1000.0, 0.0, -1000.0])
    with strict_numpy():
        np.testing.assert_array_equal(runtime.KERNELS["log_softmax"].forward(z, axis=-1), [0.0, -1000.0, -2000.0])
        np.testing.assert_array_equal(runtime.KERNELS["softmax"].forward(z, axis=-1), [1.0, 0.0, 0.0])
    for op, expected in (("log_softmax", [0.0, -1000.0, -2000.0]), ("softmax", [1.0, 0.0, 0.0])):
        graph = _one_param_graph("float64", [3], lambda g, w, op=op: g.mul(g.op(op, w, axis=0),
                                                                            g.constant(np.array([1.0, 2.0, 3.0]))))
        with strict_numpy():
            run, grads = _run(graph, {"w": z}, engine=engine)
        np.testing.assert_array_equal(run.outputs["out"], np.array(expected) * [1.0, 2.0, 3.0])
        assert np.isfinite(grads["w"]).all(), grads
    # d/dz sum(c * log_softmax(z)) = c - softmax(z) * sum(c) = [1 - 6, 2, 3]
    graph = _one_param_graph("float64", [3], lambda g, w: g.mul(g.log_softmax(w), g.constant(np.array([1.0, 2, 3]))))
    _, grads = _run(graph, {"w": z}, engine=engine)
    np.testing.assert_array_equal(grads["w"], [-5.0, 2.0, 3.0])


@both_engines
def test_bce_with_logits_at_huge_logits(engine):
    g = GraphBuilder("bcel", dtype="float64")
    z = g.param("z", [4], init="zeros")
    y = g.input("y", [4])
    g.loss(g.bce_with_logits(z, y, reduction="sum"))
    graph = g.build()
    logits = np.array([1000.0, 1000.0, -1000.0, -1000.0])
    labels = np.array([1.0, 0.0, 0.0, 1.0])
    with strict_numpy():
        direct = runtime.KERNELS["bce_with_logits"].forward(logits, labels, reduction="none")
        run, grads = _run(graph, {"z": logits}, {"y": labels}, engine=engine)
    np.testing.assert_array_equal(direct, [0.0, 1000.0, 0.0, 1000.0])
    assert run.loss == 2000.0
    np.testing.assert_array_equal(grads["z"], [0.0, 1.0, 0.0, -1.0])


@both_engines
@pytest.mark.parametrize("labels", ["int64", "probabilities"])
def test_softmax_cross_entropy_with_huge_logits(labels, engine):
    g = GraphBuilder("sce", dtype="float64")
    z = g.param("z", [2, 3], init="zeros")
    lab = g.input("labels", [2], dtype="int64") if labels == "int64" else g.input("labels", [2, 3])
    g.loss(g.softmax_cross_entropy(z, lab, reduction="sum"))
    graph = g.build()
    logits = np.array([[1000.0, -1000.0, 0.0], [-1e4, 1e4, 5e3]])
    label_values = np.array([1, 1]) if labels == "int64" else np.array([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    with strict_numpy():
        run, grads = _run(graph, {"z": logits}, {"labels": label_values}, engine=engine)
    assert run.loss == 2000.0  # -log_softmax: 2000 for the first row, 0 for the second
    assert np.isfinite(grads["z"]).all()
    np.testing.assert_array_equal(grads["z"], [[1.0, -1.0, 0.0], [0.0, 0.0, 0.0]])


@both_engines
def test_bce_on_saturated_probabilities_is_clipped(engine):
    g = GraphBuilder("bce", dtype="float64")
    a = g.param("a", [6], init="zeros")
    y = g.input("y", [6])
    g.loss(g.bce(a, y, reduction="sum", eps=1e-7))
    graph = g.build()
    probabilities = np.array([0.0, 1.0, 0.0, 1.0, 1e-9, 0.5])
    labels = np.array([0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    with strict_numpy():
        direct = runtime.KERNELS["bce"].forward(probabilities, labels, eps=1e-7, reduction="none")
        run, grads = _run(graph, {"a": probabilities}, {"y": labels}, engine=engine)
    assert np.isfinite(direct).all() and np.isfinite(run.loss)
    # 0 vs 1 costs -log(eps) (about 16.1), not inf
    np.testing.assert_allclose(direct[[1, 2, 4]], -np.log(1e-7), rtol=1e-9)  # 1 - (1 - eps) is not exactly eps
    np.testing.assert_allclose(direct[[0, 3]], -np.log1p(-1e-7), rtol=1e-9)
    # outside [eps, 1 - eps] the clip is flat: zero gradient; inside it is (a - y) / (a (1 - a))
    np.testing.assert_array_equal(grads["a"][:5], 0.0)
    assert grads["a"][5] == pytest.approx(-2.0)

