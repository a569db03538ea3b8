"""The tracer (runtime/compiled/trace.py): what it records of a kernel and how it places buffers.

The equivalence of the two engines is tested in test_compiled.py and test_gradcheck.py; these
tests pin the planning itself — in-place chains, targets, dead code, the seed tape, views,
float32 — and the refusals that send a kernel to the adapter.
"""

from __future__ import annotations

import numpy as np
import pytest

import graphspec
import runtime
from runtime.compiled.emit import Emitter
from runtime.compiled.lower import _TEMPLATES
from runtime.compiled.trace import TraceError, Tracer
from runtime.kernels import KERNELS, Meta


def template(fn, *args, wanted=None, static=None):
    tracer = Tracer("test kernel")
    result = fn(*[tracer.argument(a) for a in args])
    results = list(result) if isinstance(result, tuple) else [result]
    return tracer.template(results, wanted, static or (False,) * len(args))


def run(e: Emitter) -> None:
    for fn, args in e.seed_tape + e.tape:
        fn(*args)


def outs(e: Emitter) -> list:
    """The array each tape entry writes (its out= keyword, else its last positional argument)."""
    return [fn.keywords["out"] if "out" in getattr(fn, "keywords", {}) else args[-1] for fn, args in e.tape]


def test_sigmoid_is_one_chain_written_into_its_target():
    x = np.linspace(-800, 800, 12).reshape(4, 3)
    target = np.empty_like(x)
    e = Emitter()
    (out,), owned = template(KERNELS["sigmoid"].forward, x).instantiate(e, [x], [target])
    assert out is target and owned == [True]
    written = outs(e)
    assert len(written) == 7
    # exp(min(x, 0)) is computed in the target and divided there; e^-|x| + 1 in one scratch array
    assert written[0] is target and written[1] is target and written[-1] is target
    assert all(w is written[2] for w in written[2:6]) and written[2] is not target
    run(e)
    with np.errstate(over="raise", invalid="raise"):
        np.testing.assert_array_equal(target, KERNELS["sigmoid"].forward(x))


def test_writing_over_an_input_waits_until_the_input_is_read_for_the_last_time():
    """In place (the output overwrites x): x is read again by abs(x), so the chain that starts
    with min(x, 0) runs in scratch and only the final division writes into x."""
    x = np.linspace(-5, 5, 12).reshape(4, 3)
    expected = KERNELS["sigmoid"].forward(x)
    e = Emitter()
    (out,), _ = template(KERNELS["sigmoid"].forward, x).instantiate(e, [x], [x])
    assert out is x
    written = outs(e)
    assert written[-1] is x and all(w is not x for w in written[:-1])
    run(e)
    np.testing.assert_array_equal(x, expected)


def test_an_activation_gradient_overwrites_the_incoming_gradient_when_nothing_else_reads_it():
    out = np.tanh(np.linspace(-2, 2, 6))
    g = np.linspace(1, 2, 6)
    expected = g * (1 - out * out)
    e = Emitter()
    tmpl = template(KERNELS["tanh"].vjp, g, out, Meta(out.shape, out.dtype))
    (gx,), _ = tmpl.instantiate(e, [g, out, Meta(out.shape, out.dtype)], [None], reuse=g)
    assert gx is g  # g * (1 - out^2) into g itself; 1 - out^2 in scratch
    run(e)
    np.testing.assert_array_equal(g, expected)
    # without permission to reuse g, a buffer of its own
    e2 = Emitter()
    g2 = np.linspace(1, 2, 6)
    (gx2,), _ = tmpl.instantiate(e2, [g2, out, Meta(out.shape, out.dtype)], [None])
    assert gx2 is not g2
    run(e2)
    np.testing.assert_array_equal(gx2, expected)


def test_gradients_nobody_wants_are_not_computed():
    a, b, g = np.ones((3, 4)), np.ones((4, 5)), np.ones((3, 5))
    both = template(KERNELS["matmul"].vjp, g, Meta((3, 5), a.dtype), a, b)
    only_b = template(KERNELS["matmul"].vjp, g, Meta((3, 5), a.dtype), a, b, wanted=(False, True))
    assert len(both.program) == 2 and len(only_b.program) == 1
    e = Emitter()
    (ga, gb), _ = only_b.instantiate(e, [g, Meta((3, 5), a.dtype), a, b], [None, None])
    assert ga is None
    run(e)
    np.testing.assert_array_equal(gb, a.T @ g)


def test_what_depends_only_on_the_seed_is_computed_when_the_seed_changes():
    """mean's VJP divides the seed by the count: on the seed tape, not on every step."""
    x = np.ones((4, 5))
    seed = np.ones(())
    tmpl = template(lambda g, out, x: KERNELS["mean"].vjp(g, out, x, axis=None, keepdims=False),
                    seed, Meta((), x.dtype), Meta(x.shape, x.dtype), static=(True, False, False))
    e = Emitter()
    static: set[int] = set()
    (gx,), owned = tmpl.instantiate(e, [seed, Meta((), x.dtype), Meta(x.shape, x.dtype)], [None], static_ids=static)
    assert [fn for fn, _ in e.seed_tape] == [np.true_divide] and e.tape == []
    assert not owned[0] and gx.shape == (4, 5)  # a broadcast view of the 0-d quotient
    seed[...] = 2.0
    run(e)
    np.testing.assert_array_equal(gx, np.full((4, 5), 0.1))


def test_views_are_made_once_on_the_real_buffers():
    x = np.arange(6.0).reshape(2, 3)
    tmpl = template(lambda x: x.reshape(3, 2).T * 2, x)
    e = Emitter()
    (out,), _ = tmpl.instantiate(e, [x], [None])
    assert len(e.tape) == 1  # the multiply; the reshape and transpose are views of x's buffer
    x[...] = np.arange(6.0).reshape(2, 3) + 10  # new values in the same buffer
    run(e)
    np.testing.assert_array_equal(out, x.reshape(3, 2).T * 2)


def test_a_reshape_that_would_copy_is_a_recorded_copy():
    x = np.arange(6.0).reshape(2, 3)
    tmpl = template(lambda x: np.transpose(x).reshape(6), x)  # a transposed array cannot be reshaped as a view
    e = Emitter()
    (out,), owned = tmpl.instantiate(e, [x], [None])
    assert owned == [True] and len(e.tape) == 1
    x += 100
    run(e)
    np.testing.assert_array_equal(out, x.T.reshape(6))


def test_float32_stays_float32_and_a_numpy_scalar_that_would_promote_is_refused():
    x = np.ones(3, np.float32)
    assert template(lambda x: x * 2.0 + np.exp(-x) / 3, x).groups[-1].dtype == np.float32
    with pytest.raises(TraceError, match="promotes float32 to float64"):
        template(lambda x: x * np.float64(2.0), x)
    with pytest.raises(TraceError, match="promotes float32 to float64"):
        template(lambda x: x + np.ones(3), x)


def test_a_kernel_that_promotes_float32_fails_the_lowering_with_a_clear_error(monkeypatch):
    monkeypatch.setitem(runtime.kernels.KERNELS, "exp", runtime.kernels.Kernel(
        "exp", lambda x: np.exp(x) * np.float64(1.0), lambda g, out, x: (g * out,), saves_out=True))
    g = graphspec.GraphBuilder("f32", dtype="float32")
    g.loss(g.sum(g.exp(g.param("w", [3]))))
    step = runtime.CompiledStep(g.build())
    step.load_params({"w": np.ones(3, np.float32)})
    with pytest.raises(TypeError, match=r"kernel 'exp' \(forward\).*promotes float32 to float64"):
        step.program({})


@pytest.mark.parametrize("kernel, message", [
    (lambda x: x if x.sum() > 0 else -x, "bool()"),
    (lambda x: np.exp(x, out=np.empty(3)), "out="),
    (lambda x: float(x.sum()) * x, "float()"),
    (lambda x: [v for v in x], "iteration"),
    (lambda x: np.asarray(x) + 1, "np.asarray"),
])
def test_what_a_trace_cannot_record_is_refused_with_the_reason(kernel, message):
    with pytest.raises(TraceError, match=message.replace("(", r"\(").replace(")", r"\)")):
        template(kernel, np.ones(3))


def test_writing_into_an_array_is_refused():
    def scatter(x):
        y = x * 1
        np.put_along_axis(y, np.zeros((3, 1), np.intp), 0.0, axis=1)
        return y
    with pytest.raises(TraceError, match="writes into an array"):
        template(scatter, np.ones((3, 2)))


def test_identical_layers_share_one_trace():
    _TEMPLATES.clear()
    g = graphspec.GraphBuilder("deep", dtype="float64")
    h = g.input("x", [2, 4])
    for i in range(12):
        h = g.tanh(g.add(g.matmul(h, g.param(f"w{i}", [4, 4])), g.param(f"b{i}", [4])))
    g.loss(g.mse(h, g.input("y", [2, 4])))
    graph = g.build()
    step = runtime.CompiledStep(graph)
    step.load_params({name: np.full(spec.shape, 0.1) for name, spec in graph.parameters.items()})
    step.program({"x": np.ones((2, 4)), "y": np.ones((2, 4))})
    # matmul/add/tanh forward and VJP, the first layer's matmul VJP without d/dx, mse: about a dozen
    assert len(_TEMPLATES) <= 14, len(_TEMPLATES)


def test_a_value_check_is_a_call_on_every_step():
    labels = np.array([0, 2, 1])
    z = np.zeros((3, 3))
    def forward(z, labels):
        loss, residuals = KERNELS["softmax_cross_entropy"].forward(z, labels, reduction="mean")
        return (loss, *residuals)
    tmpl = template(forward, z, labels)
    e = Emitter()
    (loss, *_), _ = tmpl.instantiate(e, [z, labels], [None, None, None])
    run(e)
    assert loss == pytest.approx(np.log(3))
    labels[1] = 7
    with pytest.raises(ValueError, match="class label 7 is out of range for 3 classes"):
        run(e)


def test_dividing_by_one_is_no_call():
    """A mean over one element (a batch of one) divides by 1: x / 1 is x to the bit, so the
    trace records only the sum (W1_b1's step is 15 calls, not 16)."""
    x = np.ones((1, 1))
    tmpl = template(lambda x: x.mean(), x)
    assert [ins[1] for ins in tmpl.program] == [np.add.reduce]
    assert [ins[1] for ins in template(lambda x: x.mean(), np.ones((2, 1))).program] == [np.add.reduce,
                                                                                         np.true_divide]


def test_a_routine_is_one_recorded_call_that_runs_every_step():
    """gather's gradient is a scatter-add (np.add.at writes into an array): a routine, recorded
    as one call; repeated indices add up."""
    table = Meta((4, 2), np.dtype(np.float64))
    indices = np.array([[1, 3], [1, 1]])
    g = np.arange(8.0).reshape(2, 2, 2)
    tmpl = template(lambda g, indices: KERNELS["gather"].vjp(g, None, table, indices, axis=0), g, indices)
    assert len(tmpl.program) == 1
    e = Emitter()
    (grad, none), _ = tmpl.instantiate(e, [g, indices], [None, None])
    run(e)
    expected = np.zeros((4, 2))
    np.add.at(expected, indices, g)
    assert none is None and np.array_equal(grad, expected) and expected[1].tolist() == [0 + 4 + 6, 1 + 5 + 7]
    g[...] = 1.0  # the next step's gradient
    run(e)
    assert grad[1].tolist() == [3.0, 3.0]
