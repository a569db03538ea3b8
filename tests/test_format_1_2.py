"""Format 1.2's ops beyond their gradient checks (tests/op_samples.py): dropout's training-only
randomness, concat's variadic inputs and accuracy's values, on both engines."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import doc, issues_of

import graphspec
import runtime
from graphspec import GraphBuilder
from runtime import Noise

ENGINES = ["interpreter", "compiled"]


def node(id, op, inputs=(), **attrs):
    return {"id": id, "op": op, "inputs": list(inputs), "attrs": attrs}


def dropout_net(rate: float = 0.5, dtype: str = "float64"):
    g = GraphBuilder("dropout_net", dtype=dtype)
    x = g.input("x", ["N", 6])
    y = g.input("y", ["N"], dtype="int64")
    h = g.dropout(g.relu(g.linear(x, 16, name="hidden")), rate, name="drop")
    z = g.linear(h, 3, name="head")
    g.output("accuracy", g.accuracy(z, y, name="acc"))
    g.loss(g.softmax_cross_entropy(z, y, name="loss"))
    return g.build()


def data(n: int = 40, seed: int = 0, dtype: str = "float64"):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(dtype)
    return {"x": x, "y": (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1)}


# -- dropout -------------------------------------------------------------------------------

def test_a_mask_depends_on_seed_step_and_node_only():
    kernel = runtime.KERNELS["dropout"]
    draw = lambda seed, step, node: Noise(seed, step).draw(kernel, node, (1000,), "float64", {"rate": 0.5})  # noqa: E731
    assert np.array_equal(draw(1, 5, "a"), draw(1, 5, "a"))
    for other in (draw(2, 5, "a"), draw(1, 6, "a"), draw(1, 5, "b")):
        assert not np.array_equal(draw(1, 5, "a"), other)


@pytest.mark.parametrize("rate", [0.0, 0.25, 0.9])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dropout_zeroes_rate_of_the_elements_and_scales_the_rest(rate, dtype):
    g = GraphBuilder("drop", dtype=dtype)
    w = g.param("w", [200_000])
    out = g.dropout(w, rate, name="d")
    g.output("d", out)
    g.loss(g.sum(out))
    plan = runtime.compile(g.build())
    w_value = np.ones(200_000, dtype)
    run = plan.forward({}, {"w": w_value}, noise=Noise(0, 1))
    value = run.outputs["d"]
    assert value.dtype == np.dtype(dtype)
    dropped = float(np.mean(value == 0))
    assert abs(dropped - rate) < 0.01, dropped  # 200k draws: the standard error is ~0.001
    kept = value[value != 0]
    np.testing.assert_allclose(kept, 1 / (1 - rate), rtol=1e-6)
    # the gradient passes exactly where the value does, scaled the same way
    np.testing.assert_array_equal(run.backward()["w"], value)


@pytest.mark.parametrize("engine", ENGINES)
def test_dropout_is_the_identity_outside_training(engine):
    graph = dropout_net(rate=0.9)
    params = runtime.init_params(graph, seed=1)
    batch = data()
    plan = runtime.compile(graph)
    run = plan.forward(batch, params, keep_values=True)
    relu = next(s.id for s in plan.steps if s.op == "relu")
    np.testing.assert_array_equal(run.values["drop"], run.values[relu])
    explanation = runtime.explain(graph, batch, params)
    np.testing.assert_array_equal(explanation.row("drop").value, explanation.row(relu).value)
    np.testing.assert_array_equal(explanation.row("drop").grad, explanation.row(relu).grad)
    if engine == "compiled":
        step = runtime.CompiledStep(plan)
        step.load_params(params)
        loss, _ = step.gradients(batch)
        assert loss == run.loss
    # and while training it is not
    assert plan.forward(batch, params, noise=Noise(0, 1)).loss != run.loss


def test_the_engines_draw_the_same_masks_bit_for_bit():
    graph = dropout_net()
    params = runtime.init_params(graph, seed=1)
    plan = runtime.compile(graph)
    step = runtime.CompiledStep(plan)
    step.load_params(params)
    for number in (1, 2, 3):
        noise = Noise(7, number)
        run = plan.forward(data(), params, noise=noise)
        expected = run.backward()
        loss, grads = step.gradients(data(), noise)
        assert loss == run.loss
        for name in expected:
            np.testing.assert_array_equal(grads[name], expected[name])


def test_a_compiled_training_tape_without_noise_says_what_it_needs():
    plan = runtime.compile(dropout_net())
    step = runtime.CompiledStep(plan, runtime.SGD(lr=0.1))
    step.load_params(runtime.init_params(plan.graph, seed=0))
    program = step.program(data(), random=True)
    with pytest.raises(runtime.InputError, match=r"Noise\(seed, step\)"):
        step.run(program)


@pytest.mark.parametrize("engine", ENGINES)
def test_training_with_dropout_is_reproducible_and_resumes_bit_for_bit(engine):
    graph = dropout_net()
    params = runtime.init_params(graph, seed=0)
    compiled = engine == "compiled"

    def trainer(seed: int = 3):
        return runtime.Trainer(graph, runtime.SGD(lr=0.2), batch_size=8, seed=seed, compiled=compiled)

    whole = trainer().fit(data(), params, steps=12)
    again = trainer().fit(data(), params, steps=12)
    assert whole.losses == again.losses
    assert trainer(seed=4).fit(data(), params, steps=12).losses != whole.losses  # the seed reaches the masks
    checkpoints = []
    trainer().fit(data(), params, steps=5, checkpoint_every=5, on_checkpoint=checkpoints.append)
    resumed = trainer().fit(data(), None, steps=12, resume=checkpoints[0])
    assert resumed.losses == whole.losses
    for name in whole.params:
        np.testing.assert_array_equal(resumed.params[name], whole.params[name])


def test_dropout_graphs_evaluate_without_dropout():
    graph = dropout_net(rate=0.5)
    params = runtime.init_params(graph, seed=0)
    trainer = runtime.Trainer(graph, runtime.SGD(lr=0.0), batch_size=None, seed=0)
    result = trainer.fit(data(), params, steps=1, eval_data=data(seed=1), eval_every=1)
    expected = runtime.compile(graph).forward(data(seed=1), params, with_grad=False).loss
    assert result.eval_losses == [(1, expected)]
    assert result.losses[0] != runtime.compile(graph).forward(data(), params, with_grad=False).loss


@pytest.mark.parametrize("rate, fragment", [(1.0, "less than 1.0"), (-0.1, "at least 0.0"), ("half", "number")])
def test_a_dropout_rate_outside_0_to_1_is_refused_where_it_is(rate, fragment):
    tree = doc([node("d", "dropout", ["x"], rate=rate), node("loss", "sum", ["d"])], version="1.2")
    (issue,) = issues_of(tree)
    assert issue.location == "/nodes/0/attrs/rate" and fragment in issue.message


# -- concat --------------------------------------------------------------------------------

def test_concat_takes_one_input_or_more():
    none = doc([node("c", "concat", [], axis=0), node("loss", "sum", ["x"])], version="1.2")
    (issue,) = issues_of(none)
    assert issue.code == "arity" and issue.location == "/nodes/0/inputs"
    assert "1 or more input(s) (x, ...)" in issue.message
    many = doc([node("c", "concat", ["x"] * 5, axis=1), node("loss", "sum", ["c"])], version="1.2")
    assert tuple(graphspec.from_data(many).analysis.types["c"].shape) == ("N", 15)


@pytest.mark.parametrize("shapes, axis, message", [
    ([[2, 3], [2, 3, 1]], 0, "input 1 has rank 3"),
    ([[2, 3], [4, 4]], 0, "differ on an axis other than 0"),
    ([[], []], 0, "rank >= 1"),
])
def test_concat_inputs_that_do_not_fit_are_located(shapes, axis, message):
    g = GraphBuilder("c", dtype="float64")
    values = [g.param(f"p{i}", s) for i, s in enumerate(shapes)]
    with pytest.raises(graphspec.GraphSpecError) as info:
        g.loss(g.sum(g.concat(*values, axis=axis, name="c")))
        g.build()
    assert message in str(info.value)


@pytest.mark.parametrize("engine", ENGINES)
def test_concat_joins_along_its_axis_with_symbolic_batches(engine):
    g = GraphBuilder("c", dtype="float32")
    a, b = g.input("a", ["N", 2]), g.input("b", ["N", 3])
    w = g.param("w", [1, 4])
    joined = g.concat(a, b, g.broadcast_to(w, shape=[5, 4]), axis=1, name="joined")
    assert tuple(joined.shape) == (5, 9)  # N meets the broadcast's 5: the batch must be 5
    g.output("joined", joined)
    g.loss(g.sum(joined * joined))
    graph = g.build()
    rng = np.random.default_rng(0)
    inputs = {"a": rng.normal(size=(5, 2)).astype("float32"), "b": rng.normal(size=(5, 3)).astype("float32")}
    params = {"w": rng.normal(size=(1, 4)).astype("float32")}
    run = runtime.compile(graph).forward(inputs, params)
    expected = np.concatenate([inputs["a"], inputs["b"], np.broadcast_to(params["w"], (5, 4))], axis=1)
    np.testing.assert_array_equal(run.outputs["joined"], expected)
    assert runtime.assert_gradcheck(graph, inputs, params, wrt="all", engine=engine).ok


# -- accuracy ------------------------------------------------------------------------------

@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("one_hot", [False, True])
def test_accuracy_counts_rows_whose_top_score_is_the_label(engine, one_hot):
    scores = np.array([[0.1, 0.9, 0.0], [2.0, 1.0, 2.0], [0.0, 0.0, 5.0], [1.0, 3.0, 2.0]], np.float32)
    labels = np.array([1, 2, 2, 0])  # right; a tie goes to the first (0), wrong; right; wrong
    g = GraphBuilder("acc", dtype="float32")
    z = g.param("z", [4, 3])
    y = g.input("y", [4, 3] if one_hot else [4], dtype="float32" if one_hot else "int64")
    g.output("accuracy", g.accuracy(z, y, name="acc"))
    g.loss(g.add(g.softmax_cross_entropy(z, y), g.accuracy(z, y, name="acc_in_loss")))
    graph = g.build()
    y_value = np.eye(3, dtype=np.float32)[labels] if one_hot else labels
    run = runtime.compile(graph).forward({"y": y_value}, {"z": scores})
    assert run.outputs["accuracy"].dtype == np.float32 and float(run.outputs["accuracy"]) == 0.5
    if engine == "compiled":  # accuracy feeds the loss here, so the tape runs it
        step = runtime.CompiledStep(graph)
        step.load_params({"z": scores})
        loss, grads = step.gradients({"y": y_value})
        assert loss == run.loss
        np.testing.assert_array_equal(grads["z"], run.backward()["z"])


def test_accuracy_labels_of_the_wrong_kind_are_refused():
    g = GraphBuilder("acc", dtype="float32")
    z = g.param("z", [4, 3])
    with pytest.raises(graphspec.GraphSpecError, match="int64 class indices of shape"):
        g.loss(g.accuracy(z, g.input("y", [4], dtype="float32")))
        g.build()
