"""The trainer: convergence, batching, reproducibility, bit-for-bit resumption from checkpoints,
non-finite diagnosis, callbacks, evaluation, float32 training and input errors.

Every test that trains runs on both engines (the ``compiled`` fixture: the compiled engine,
``Trainer(..., compiled=True)``, the default, and the reference interpreter,
``compiled=False``); bit-for-bit comparisons are between runs on the same engine, and
``test_the_engines_agree`` compares the two."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

import graphspec
import runtime
from graphspec import GraphBuilder
from graphspec.codec import _msgpack_default
from runtime.checkpoint import CHECKPOINT_FORMAT, Checkpoint, CheckpointError
from runtime.errors import InputError, NonFiniteError
from runtime.optim import make_optimizer
from runtime.plan import Plan
from runtime.trainer import StepReport, Trainer, TrainResult

from conftest import EXAMPLES


@pytest.fixture(scope="module", params=[True, False], ids=["compiled", "interpreter"])
def compiled(request) -> bool:
    """Which engine the trainer runs on."""
    return request.param


@pytest.fixture(scope="module")
def logreg():
    graph = graphspec.load(EXAMPLES / "logistic_regression.json")
    return graph, runtime.compile(graph)


def separable(n: int, seed: int = 1) -> dict[str, np.ndarray]:
    """Points with a margin around the line x1 + 2*x2 = 0.5, labelled by its side."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=(2, 4 * n))
    score = x1 + 2 * x2 - 0.5
    keep = np.abs(score) > 0.3
    x1, x2, score = x1[keep][:n], x2[keep][:n], score[keep][:n]
    return {"x1": x1, "x2": x2, "y": (score > 0).astype(np.float64)}


def same_bytes(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes() for k in a)


# -- it learns -------------------------------------------------------------------------------
@pytest.mark.parametrize("batch_size,steps", [(None, 300), (16, 300)])
def test_sgd_drives_the_loss_down(logreg, batch_size, steps, compiled):
    graph, plan = logreg
    data = separable(200)
    trainer = Trainer(plan, make_optimizer("sgd", lr=1.0), batch_size=batch_size, seed=0, compiled=compiled)
    result = trainer.fit(data, runtime.init_params(graph), steps=steps)
    assert isinstance(result, TrainResult)
    assert result.steps == steps and len(result.losses) == steps
    assert result.losses[0] == pytest.approx(np.log(2))  # zero weights: every prediction is 1/2
    assert trainer.evaluate(data, result.params) < 0.1
    assert result.epochs == (steps if batch_size is None else steps // 13)  # 200 examples = 13 batches of 16
    assert not result.stopped_early
    # the weights found point along the true normal (1, 2)
    w = np.array([result.params["w1"], result.params["w2"]])
    assert w @ np.array([1, 2]) / np.linalg.norm(w) / np.sqrt(5) > 0.98


def test_fit_does_not_touch_the_callers_params(logreg, compiled):
    graph, plan = logreg
    params = runtime.init_params(graph)
    before = {k: v.copy() for k, v in params.items()}
    result = Trainer(plan, make_optimizer("sgd", lr=1.0), compiled=compiled).fit(separable(50), params, steps=5)
    assert same_bytes(params, before)
    assert not same_bytes(result.params, before)


def test_fit_restarts_the_optimizer_state(logreg, compiled):
    graph, plan = logreg
    trainer = Trainer(plan, make_optimizer("adam", lr=0.1), batch_size=8, seed=0, compiled=compiled)
    first = trainer.fit(separable(50), runtime.init_params(graph), steps=10)
    second = trainer.fit(separable(50), runtime.init_params(graph), steps=10)
    assert same_bytes(first.params, second.params) and first.losses == second.losses


# -- batches ---------------------------------------------------------------------------------
class SpyPlan(Plan):  # the interpreter's training steps (the compiled engine never calls Plan.forward to train)
    """A plan that records the inputs of every training forward pass (those with gradients)."""

    def __init__(self, graph):
        super().__init__(graph)
        self.seen: list[dict[str, np.ndarray]] = []

    def forward(self, inputs, params, **kw):
        if kw.get("with_grad", True) and not kw.get("keep_values", False):
            self.seen.append({k: np.array(v, copy=True) for k, v in inputs.items()})
        return super().forward(inputs, params, **kw)


def scaled_graph():
    """loss = mean((x * w - t)^2) * scale; ``scale`` has a fixed first dim and is not per-example."""
    g = GraphBuilder("scaled", dtype="float64")
    x = g.input("x", ["N", 2])
    t = g.input("t", ["N"])
    scale = g.input("scale", [1])
    w = g.param("w", [2], init="zeros")
    pred = g.sum(x * w, axis=-1, name="pred")
    g.loss(g.mean(g.mse(pred, t, reduction="none") * g.sum(scale), name="L"))
    return g.build()


def spied(graph, compiled: bool, monkeypatch) -> tuple[Plan, list[dict[str, np.ndarray]]]:
    """A plan for ``graph`` and the list the inputs of every training step land in: on the
    interpreter a :class:`SpyPlan`; on the compiled engine, copies of the tape's input
    buffers each time :meth:`runtime.CompiledStep.run` runs a program."""
    if not compiled:
        plan = SpyPlan(graph)
        return plan, plan.seen
    seen: list[dict[str, np.ndarray]] = []
    real_run = runtime.compiled.step.CompiledStep.run

    def run(self, program, **options):
        seen.append({k: np.array(v, copy=True) for k, v in program.inputs.items()})
        return real_run(self, program, **options)

    monkeypatch.setattr(runtime.compiled.step.CompiledStep, "run", run)
    return runtime.compile(graph), seen


@pytest.mark.parametrize("shuffle", [True, False])
def test_epochs_cover_every_example_once_and_fixed_inputs_pass_whole(shuffle, compiled, monkeypatch):
    plan, seen = spied(scaled_graph(), compiled, monkeypatch)
    n = 10
    data = {"x": np.stack([np.arange(n), -np.arange(n)], axis=1).astype(float), "t": np.arange(n, dtype=float),
            "scale": np.array([0.5])}
    reports: list[StepReport] = []
    result = Trainer(plan, make_optimizer("sgd", lr=1e-3), batch_size=4, shuffle=shuffle, seed=5,
                     compiled=compiled).fit(
        data, {"w": np.zeros(2)}, epochs=3, callback=reports.append)
    assert result.steps == 9 and result.epochs == 3  # ceil(10 / 4) = 3 batches per epoch
    assert [len(s["t"]) for s in seen] == [4, 4, 2] * 3
    assert [(r.epoch, r.batch_index) for r in reports] == [(e, b) for e in range(3) for b in range(3)]
    # one epoch count everywhere: a report's `epochs` (what a job shows) is the result's count so far
    assert [r.epochs for r in reports] == [0, 0, 1, 1, 1, 2, 2, 2, 3]
    assert reports[-1].epochs == result.epochs
    orders = []
    for epoch in range(3):
        rows = np.concatenate([s["t"] for s in seen[3 * epoch: 3 * epoch + 3]]).astype(int)
        assert sorted(rows) == list(range(n))  # every example exactly once per epoch
        orders.append(list(rows))
        for s in seen[3 * epoch: 3 * epoch + 3]:
            np.testing.assert_array_equal(s["x"][:, 0], s["t"])  # rows stay aligned across inputs
            np.testing.assert_array_equal(s["scale"], [0.5])  # passed whole
    if shuffle:
        assert orders[0] != list(range(n)) and orders[0] != orders[1]  # a fresh permutation each epoch
    else:
        assert orders == [list(range(n))] * 3


def test_without_per_example_inputs_every_step_sees_all_data(compiled, monkeypatch):
    # "x" has a fixed first dimension: nothing is sliced, an epoch is one step
    g = GraphBuilder("fixed", dtype="float64")
    x = g.input("x", [3])
    w = g.param("w", [3], init="zeros")
    g.loss(g.mse(w, x, name="L"))
    plan, seen = spied(g.build(), compiled, monkeypatch)
    result = Trainer(plan, make_optimizer("sgd", lr=0.25), batch_size=2, compiled=compiled).fit(
        {"x": np.array([1.0, 2.0, 3.0])}, {"w": np.zeros(3)}, epochs=4)
    assert result.steps == result.epochs == 4
    assert len(seen) == 4 and all(s["x"].tolist() == [1.0, 2.0, 3.0] for s in seen)
    # w <- w - 0.25 * (2/3)(w - x): w = x (1 - (5/6)^4)
    np.testing.assert_allclose(result.params["w"], np.array([1.0, 2.0, 3.0]) * (1 - (5 / 6) ** 4), rtol=1e-12)


# -- reproducibility -------------------------------------------------------------------------
def test_same_seed_same_bytes_different_seed_different(logreg, compiled):
    graph, plan = logreg
    data = separable(60)

    def run(seed, shuffle=True):
        trainer = Trainer(plan, make_optimizer("momentum", lr=0.5), batch_size=8, shuffle=shuffle, seed=seed,
                          compiled=compiled)
        return trainer.fit(data, runtime.init_params(graph), steps=40)

    a, b, c = run(0), run(0), run(1)
    assert same_bytes(a.params, b.params) and a.losses == b.losses
    assert a.checkpoint.to_bytes() == b.checkpoint.to_bytes()
    assert not same_bytes(a.params, c.params) and a.losses != c.losses
    # without shuffling the seed plays no part
    assert same_bytes(run(0, shuffle=False).params, run(1, shuffle=False).params)


@pytest.mark.parametrize("optimizer", [("sgd", {"lr": 0.5}), ("momentum", {"lr": 0.3, "nesterov": True}),
                                       ("adam", {"lr": 0.05})], ids=["sgd", "momentum", "adam"])
def test_the_engines_agree(logreg, optimizer):
    """The compiled engine and the interpreter train the logistic regression alike: 30 steps,
    batches of 8 of 44 examples (the last of each epoch short), shuffled, every loss and
    gradient and the final parameters within float64 rounding."""
    graph, plan = logreg
    data, eval_data = separable(44), separable(30, seed=9)
    runs = {}
    for compiled in (True, False):
        reports: list[StepReport] = []
        trainer = Trainer(plan, make_optimizer(optimizer[0], **optimizer[1]), batch_size=8, seed=3,
                          compiled=compiled)
        result = trainer.fit(data, runtime.init_params(graph, seed=1), steps=30, eval_data=eval_data,
                             eval_every=10, callback=reports.append)
        runs[compiled] = result, reports
    (fast, fast_reports), (slow, slow_reports) = runs[True], runs[False]
    assert fast.steps == slow.steps == 30 and fast.epochs == slow.epochs == 5
    np.testing.assert_allclose(fast.losses, slow.losses, rtol=1e-9, atol=1e-12)
    assert fast.losses[-1] < fast.losses[0]
    assert [s for s, _ in fast.eval_losses] == [s for s, _ in slow.eval_losses] == [10, 20, 30]
    np.testing.assert_allclose([l for _, l in fast.eval_losses], [l for _, l in slow.eval_losses], rtol=1e-9)
    assert fast.params.keys() == slow.params.keys()
    for name in slow.params:
        assert fast.params[name].dtype == slow.params[name].dtype == np.float64
        np.testing.assert_allclose(fast.params[name], slow.params[name], rtol=1e-9, atol=1e-12, err_msg=name)
        assert not np.array_equal(fast.params[name], runtime.init_params(graph, seed=1)[name])
    for a, b in zip(fast_reports, slow_reports, strict=True):
        assert (a.step, a.epoch, a.batch_index) == (b.step, b.epoch, b.batch_index)
        for name in b.grads:
            np.testing.assert_allclose(a.grads[name], b.grads[name], rtol=1e-9, atol=1e-12, err_msg=name)


# -- resumption ------------------------------------------------------------------------------
@pytest.mark.parametrize("optimizer", [("adam", {"lr": 0.05}), ("momentum", {"lr": 0.3, "nesterov": True})])
def test_resume_is_bit_for_bit(logreg, tmp_path, optimizer, compiled):
    graph, plan = logreg
    data = separable(44)  # 6 batches of 8 per epoch, the last one of 4
    eval_data = separable(30, seed=9)
    total = 40

    def trainer():
        return Trainer(plan, make_optimizer(optimizer[0], **optimizer[1]), batch_size=8, seed=3, compiled=compiled)

    checkpoints: list[Checkpoint] = []
    full = trainer().fit(data, runtime.init_params(graph), steps=total, checkpoint_every=1,
                         on_checkpoint=checkpoints.append, eval_data=eval_data, eval_every=5)
    assert [c.step for c in checkpoints] == list(range(1, total + 1))
    assert (checkpoints[5].epoch, checkpoints[5].batch_index) == (1, 0)  # step 6 ends epoch 0
    assert (checkpoints[8].epoch, checkpoints[8].batch_index) == (1, 3)

    for k in (1, 4, 6, 9, 13, 33, total):  # mid-epoch, epoch boundaries, the very end
        stored = checkpoints[k - 1]
        for ckpt in (stored, Checkpoint.from_bytes(stored.to_bytes())):
            resumed = trainer().fit(data, None, steps=total, resume=ckpt, eval_data=eval_data, eval_every=5)
            assert same_bytes(resumed.params, full.params), k
            assert resumed.losses == full.losses
            assert resumed.eval_losses == full.eval_losses
            assert resumed.steps == full.steps and resumed.epochs == full.epochs
            assert resumed.checkpoint.to_bytes() == full.checkpoint.to_bytes()  # optimizer state, RNG, history
    # and through a file
    path = tmp_path / "run.ckpt"
    checkpoints[10].save(path)
    resumed = trainer().fit(data, None, steps=total, resume=Checkpoint.load(path), eval_data=eval_data,
                            eval_every=5)
    assert resumed.checkpoint.to_bytes() == full.checkpoint.to_bytes()


def test_resume_from_the_final_checkpoint_extends_the_run(logreg, compiled):
    graph, plan = logreg
    data = separable(44)

    def trainer():
        return Trainer(plan, make_optimizer("adam", lr=0.05), batch_size=8, seed=3, compiled=compiled)

    long = trainer().fit(data, runtime.init_params(graph), steps=30)
    short = trainer().fit(data, runtime.init_params(graph), steps=17)
    assert short.checkpoint.step == 17 and (short.checkpoint.epoch, short.checkpoint.batch_index) == (2, 5)
    more = trainer().fit(data, None, steps=30, resume=Checkpoint.from_bytes(short.checkpoint.to_bytes()))
    assert same_bytes(more.params, long.params) and more.losses == long.losses
    assert more.checkpoint.to_bytes() == long.checkpoint.to_bytes()


def test_resume_refuses_a_checkpoint_that_does_not_fit(logreg, compiled):
    graph, plan = logreg
    data = separable(44)
    ckpt = Trainer(plan, make_optimizer("sgd", lr=0.1), batch_size=8, compiled=compiled).fit(
        data, runtime.init_params(graph), steps=3).checkpoint
    with pytest.raises(CheckpointError, match="batch_size=8.*batch_size=16"):
        Trainer(plan, make_optimizer("sgd", lr=0.1), batch_size=16, compiled=compiled).fit(data, None, steps=5,
                                                                                            resume=ckpt)
    with pytest.raises(CheckpointError, match="examples=44.*examples=43"):
        Trainer(plan, make_optimizer("sgd", lr=0.1), batch_size=8, compiled=compiled).fit(
            {k: v[:43] for k, v in data.items()}, None, steps=5, resume=ckpt)
    with pytest.raises(CheckpointError, match="optimizer 'sgd'.*'adam'"):
        Trainer(plan, make_optimizer("adam"), batch_size=8, compiled=compiled).fit(data, None, steps=5, resume=ckpt)
    other = graphspec.load(EXAMPLES / "sigmoid_primitives.json")
    with pytest.raises(CheckpointError, match="the checkpoint is for graph sha256:"):
        Trainer(other, make_optimizer("sgd", lr=0.1), batch_size=8, compiled=compiled).fit(data, None, steps=5,
                                                                                           resume=ckpt)
    with pytest.raises(ValueError, match="pass params=None"):
        Trainer(plan, make_optimizer("sgd", lr=0.1), batch_size=8, compiled=compiled).fit(
            data, runtime.init_params(graph), steps=5, resume=ckpt)
    # the engines agree only to within rounding, so a run is resumed on the engine that made it
    assert ckpt.settings["engine"] == ("compiled" if compiled else "interpreter")
    with pytest.raises(CheckpointError, match=f"resume with compiled={compiled}"):
        Trainer(plan, make_optimizer("sgd", lr=0.1), batch_size=8, compiled=not compiled).fit(
            data, None, steps=5, resume=ckpt)
    legacy = Checkpoint.from_bytes(ckpt.to_bytes())
    del legacy.settings["engine"]  # checkpoints from before the compiled engine: resumed on either
    assert Trainer(plan, make_optimizer("sgd", lr=0.1), batch_size=8, compiled=not compiled).fit(
        data, None, steps=5, resume=legacy).steps == 5


# -- the checkpoint format ---------------------------------------------------------------------
def small_checkpoint(logreg, compiled=True) -> Checkpoint:
    graph, plan = logreg
    return Trainer(plan, make_optimizer("adam", lr=0.1), batch_size=8, compiled=compiled).fit(
        separable(20), runtime.init_params(graph), steps=4).checkpoint


def test_checkpoint_is_msgpack_with_raw_tensor_extensions(logreg, compiled):
    ckpt = small_checkpoint(logreg, compiled)
    codes = []

    def hook(code, payload):
        codes.append(code)
        return payload

    tree = msgpack.unpackb(ckpt.to_bytes(), ext_hook=hook, raw=False)
    assert tree["format"] == CHECKPOINT_FORMAT and tree["version"] == 1
    assert tree["graph_hash"] == graphspec.content_hash(logreg[0])
    assert (tree["step"], tree["epoch"], tree["batch_index"]) == (4, 1, 1)  # 20 examples = 3 batches of 8
    assert set(codes) == {1} and len(codes) == 3 + 2 * 3 + 1  # params, adam moments, losses
    assert tree["params"]["w1"]["dtype"] == "float64" and tree["params"]["w1"]["shape"] == []
    assert tree["params"]["w1"]["data"] == ckpt.params["w1"].astype("<f8").tobytes()
    assert tree["optimizer"] == {"name": "adam", "lr": 0.1, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0}
    assert tree["rng_state"]["bit_generator"] == "PCG64"
    back = Checkpoint.from_bytes(ckpt.to_bytes())
    assert back.to_bytes() == ckpt.to_bytes()
    assert back.params["w1"].flags.writeable
    assert back.last_loss == ckpt.losses[-1] and back.best_loss == min(ckpt.losses)


def retree(ckpt: Checkpoint, **changes) -> bytes:
    tree = graphspec.parse(ckpt.to_bytes(), "msgpack")
    tree.update(changes)
    for key in [k for k, v in changes.items() if v is KeyError]:
        del tree[key]
    return msgpack.packb(tree, default=_msgpack_default, use_bin_type=True)


@pytest.mark.parametrize("change,message", [
    ({"version": 3}, "unsupported checkpoint version 3: this reader reads versions 1 to 2"),
    ({"version": "1"}, "unsupported checkpoint version '1'"),
    ({"format": "chainrule.graph"}, "not a checkpoint: format is 'chainrule.graph'"),
    ({"format": KeyError}, "not a checkpoint: format is None"),
    ({"losses": KeyError}, "missing field.*losses"),
    ({"extra": 1}, "unknown field.*extra"),
    ({"step": -1}, "step must be a non-negative integer"),
    ({"step": 5}, "5 steps"),
])
def test_checkpoint_refuses_unknown_or_broken_documents(logreg, change, message, compiled):
    with pytest.raises(CheckpointError, match=message):
        Checkpoint.from_bytes(retree(small_checkpoint(logreg, compiled), **change))


def test_checkpoint_refuses_garbage(logreg, tmp_path, compiled):
    with pytest.raises(CheckpointError, match="looks like JSON"):
        Checkpoint.from_bytes(b'{"format": "chainrule.checkpoint"}')
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        Checkpoint.from_bytes(b"\xc1\x00")
    with pytest.raises(CheckpointError, match="expected a map"):
        Checkpoint.from_bytes(msgpack.packb([1, 2]))
    data = small_checkpoint(logreg, compiled).to_bytes()
    with pytest.raises(CheckpointError):
        Checkpoint.from_bytes(data[:-3])  # truncated
    with pytest.raises(CheckpointError, match="cannot read"):
        Checkpoint.load(tmp_path / "missing.ckpt")


# -- non-finite values -----------------------------------------------------------------------
def log_graph():
    """loss = mean(log(x * w)): gradient descent shrinks w until x*w < 0 and log gives NaN."""
    g = GraphBuilder("logs", dtype="float64")
    x = g.input("x", ["N"])
    w = g.param("w", [], value=1.0)
    g.loss(g.mean(g.log(g.mul(x, w, name="xw"), name="lg"), name="L"))
    return g.build()


def test_nonfinite_names_the_first_node_and_the_step(compiled):
    # w: 1 -> 0.7 -> 0.271 -> -0.836: the forward pass of step 4 takes the log of a negative number
    trainer = Trainer(log_graph(), make_optimizer("sgd", lr=0.3), compiled=compiled)
    reports = []
    with pytest.raises(NonFiniteError) as info:
        trainer.fit({"x": np.ones(4)}, {"w": np.array(1.0)}, steps=10, callback=reports.append)
    err = info.value
    assert (err.node, err.op, err.step) == ("lg", "log", 4)
    assert "step 4" in str(err) and "'lg' (log)" in str(err) and "NaN" in str(err)
    assert [r.step for r in reports] == [1, 2, 3]


def test_nonfinite_from_one_bad_batch(compiled):
    # x has one negative example, in the third batch of the first epoch (no shuffling)
    x = np.ones(12)
    x[9] = -1.0
    trainer = Trainer(log_graph(), make_optimizer("sgd", lr=1e-3), batch_size=4, shuffle=False, compiled=compiled)
    with pytest.raises(NonFiniteError) as info:
        trainer.fit({"x": x}, {"w": np.array(1.0)}, epochs=2)
    assert (info.value.node, info.value.step) == ("lg", 3)


def test_nonfinite_gradient_names_the_node_whose_backward_broke(compiled):
    # sqrt(0) = 0 is finite, its derivative 1/(2 sqrt(0)) is not
    g = GraphBuilder("roots", dtype="float64")
    x = g.input("x", ["N"])
    w = g.param("w", [], value=1.0)
    g.loss(g.mean(g.sqrt(g.mul(x, w, name="xw"), name="sq"), name="L"))
    with pytest.raises(NonFiniteError) as info:
        Trainer(g.build(), make_optimizer("sgd", lr=0.1), compiled=compiled).fit({"x": np.zeros(3)},
                                                                                 {"w": np.array(1.0)}, steps=2)
    assert (info.value.node, info.value.op, info.value.step) == ("sq", "sqrt", 1)
    assert "backward" in str(info.value)


def test_nonfinite_parameter_after_an_update(compiled):
    # loss = mean(x * w) with x = [1]: dL/dw = 1, and a learning rate of 1e308 takes w to -1e308
    # (finite, and so is the loss) and then to -inf on the second step
    g = GraphBuilder("lin", dtype="float64")
    x = g.input("x", ["N"])
    w = g.param("w", [], value=0.0)
    g.loss(g.mean(g.mul(x, w), name="L"))
    reports = []
    with pytest.raises(NonFiniteError, match="step 2: the update made parameter 'w' NaN/inf") as info:
        Trainer(g.build(), make_optimizer("sgd", lr=1e308), compiled=compiled).fit(
            {"x": np.ones(1)}, {"w": np.array(0.0)}, steps=5, callback=reports.append)
    assert (info.value.node, info.value.step) == ("w", 2)
    assert [r.loss for r in reports] == [0.0]


# -- callbacks, early stop, evaluation -------------------------------------------------------
def test_callback_reports_every_step(logreg, compiled):
    graph, plan = logreg
    reports: list[StepReport] = []
    data = separable(25)
    result = Trainer(plan, make_optimizer("sgd", lr=0.5), batch_size=10, shuffle=False, compiled=compiled).fit(
        data, runtime.init_params(graph), steps=7, callback=reports.append)
    assert [r.step for r in reports] == list(range(1, 8))
    assert [r.epoch for r in reports] == [0, 0, 0, 1, 1, 1, 2]
    assert [r.loss for r in reports] == result.losses
    for r in reports:
        assert set(r.grads) == set(r.grad_norms) == {"w1", "w2", "b"}
        for name, g in r.grads.items():
            assert r.grad_norms[name] == pytest.approx(float(np.linalg.norm(g)))
        assert r.eval_loss is None
    # zero weights predict 1/2 everywhere: on the first batch (rows 0-9) dL/dz = 1/2 - y
    first = slice(0, 10)
    residual = 0.5 - data["y"][first]
    assert reports[0].loss == pytest.approx(np.log(2))
    assert reports[0].grads["b"] == pytest.approx(residual.mean())
    assert reports[0].grads["w1"] == pytest.approx((residual * data["x1"][first]).mean())
    assert reports[0].grads["w2"] == pytest.approx((residual * data["x2"][first]).mean())
    assert reports[0].grad_norms["w2"] == pytest.approx(abs((residual * data["x2"][first]).mean()))


def wide_mlp() -> graphspec.Graph:
    """float32, with a 64x64 weight: gradients of 4,096 values take the float32 dot product
    path of runtime.reports.grad_norm, the small ones the float64 path."""
    g = GraphBuilder("wide", dtype="float32")
    x, labels = g.input("x", ["N", 64]), g.input("labels", ["N"], dtype="int64")
    w, b = g.param("w", [64, 64], init="glorot"), g.param("b", [64], init="zeros")
    v = g.param("v", [64, 3], init="glorot")
    g.loss(g.softmax_cross_entropy((x @ w + b).relu() @ v, labels, name="L"))
    return g.build()


@pytest.mark.parametrize("optimizer,options", [
    (("sgd", {"lr": 0.5}), {}),  # the compiled engine folds the rate into the gradients
    (("adam", {"lr": 0.05}), {}),
    (("sgd", {"lr": 0.5}), {"clip_norm": 0.01}),  # clipped after the finiteness check's pass
], ids=["sgd", "adam", "clipped"])
def test_copy_grads_false_reports_the_same_gradients_read_during_the_callback(optimizer, options, compiled):
    """fit(copy_grads=False) (the worker's reporter): read during the callback, each report
    holds the same gradients and norms as a copied one, float32 included. Folded SGD's
    gradients are read back divided, not lr times them; the norms come from the engine's
    finiteness check unless clipping changed the gradients after it."""
    graph = wide_mlp()
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 64)).astype(np.float32)
    data = {"x": x, "labels": (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1)}
    read: dict[bool, list] = {True: [], False: []}
    kept: list[StepReport] = []
    for copy in (True, False):
        def callback(r: StepReport, copy=copy) -> None:
            norms = dict(r.grad_norms)
            # the worker's reporter reads them as items() and the global norm from values(): the same numbers
            assert dict(r.grad_norms.items()) == norms and list(r.grad_norms.values()) == list(norms.values())
            if r.clipped_from is None:  # else the global norm is the one before clipping
                assert r.grad_norm == pytest.approx(float(np.sqrt(sum(n * n for n in norms.values()))), rel=1e-12)
            read[copy].append((r.step, {n: np.array(g) for n, g in r.grads.items()}, norms))
            kept.append(r)
        Trainer(graph, make_optimizer(optimizer[0], **optimizer[1]), batch_size=16, seed=0, compiled=compiled,
                **options).fit(data, runtime.init_params(graph, seed=0), steps=6, callback=callback, copy_grads=copy)
    assert len(read[True]) == len(read[False]) == 6
    for (step, grads, norms), (step_live, grads_live, norms_live) in zip(read[True], read[False]):
        assert step == step_live and grads.keys() == grads_live.keys() == norms_live.keys() == {"w", "b", "v"}
        for name in grads:
            assert grads_live[name].dtype == np.float32
            np.testing.assert_allclose(grads_live[name], grads[name], rtol=1e-5, atol=1e-7, err_msg=name)
            assert norms_live[name] == pytest.approx(norms[name], rel=1e-5, abs=1e-9)
            assert norms[name] == pytest.approx(float(np.linalg.norm(grads[name].astype(np.float64))), rel=1e-5)
    # the copies stay: a kept report's gradients are still its step's after training
    for report, (_, grads, _) in zip(kept[:6], read[True]):
        for name in grads:
            np.testing.assert_array_equal(report.grads[name], grads[name])


@pytest.mark.parametrize("answer", [True, "stop"])
def test_callback_stops_early(logreg, answer, compiled):
    graph, plan = logreg
    result = Trainer(plan, make_optimizer("sgd", lr=0.5), compiled=compiled).fit(
        separable(20), runtime.init_params(graph), steps=50,
        callback=lambda r: answer if r.step == 5 else None)
    assert result.stopped_early and result.steps == 5 and len(result.losses) == 5
    assert result.checkpoint.step == 5


def test_other_callback_answers_do_not_stop(logreg, compiled):
    graph, plan = logreg
    result = Trainer(plan, make_optimizer("sgd", lr=0.5), compiled=compiled).fit(
        separable(20), runtime.init_params(graph), steps=6, callback=lambda r: "continue" if r.step % 2 else False)
    assert not result.stopped_early and result.steps == 6


def test_eval_split(logreg, compiled):
    graph, plan = logreg
    train, held_out = separable(40), separable(30, seed=2)
    trainer = Trainer(plan, make_optimizer("sgd", lr=1.0), batch_size=10, seed=0, compiled=compiled)
    reports, snapshots = [], []

    def callback(report):
        reports.append(report)

    checkpoints = []
    result = trainer.fit(train, runtime.init_params(graph), steps=30, eval_data=held_out, eval_every=7,
                         callback=callback, checkpoint_every=7, on_checkpoint=checkpoints.append)
    assert [s for s, _ in result.eval_losses] == [7, 14, 21, 28, 30]  # and once at the end
    for ckpt, (step, loss) in zip(checkpoints, result.eval_losses):
        assert ckpt.step == step
        assert loss == trainer.evaluate(held_out, ckpt.params)  # the held-out loss after that step
        snapshots.append(loss)
    assert result.eval_losses[-1][1] == trainer.evaluate(held_out, result.params)
    assert [r.eval_loss for r in reports if r.eval_loss is not None] == snapshots
    assert [r.step for r in reports if r.eval_loss is not None] == [7, 14, 21, 28]
    assert result.eval_losses[-1][1] < result.eval_losses[0][1]


def test_eval_data_is_checked(logreg, compiled):
    graph, plan = logreg
    trainer = Trainer(plan, make_optimizer("sgd", lr=1.0), compiled=compiled)
    with pytest.raises(InputError, match=r"eval_data: missing input 'y' \(float64\['N'\]\); give every input: x1, x2, y"):
        trainer.fit(separable(10), runtime.init_params(graph), steps=1, eval_data={"x1": np.ones(3),
                                                                                  "x2": np.ones(3)})
    with pytest.raises(ValueError, match="eval_every needs eval_data"):
        trainer.fit(separable(10), runtime.init_params(graph), steps=1, eval_every=1)


# -- float32 ---------------------------------------------------------------------------------
def test_float32_mlp_trains_in_float32(compiled):
    graph = graphspec.load(EXAMPLES / "small_mlp.json")
    rng = np.random.default_rng(0)
    centers = np.array([[2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0]], dtype=np.float32)
    labels = rng.integers(0, 3, size=150)
    x = (centers[labels] + rng.normal(scale=0.5, size=(150, 4))).astype(np.float32)
    dtypes = []
    checkpoints = []
    trainer = Trainer(graph, make_optimizer("adamw", lr=0.02), batch_size=32, seed=0, compiled=compiled)
    result = trainer.fit({"x": x, "labels": labels}, runtime.init_params(graph, seed=0), epochs=8,
                         callback=lambda r: dtypes.append({g.dtype for g in r.grads.values()}),
                         checkpoint_every=10, on_checkpoint=checkpoints.append)
    assert all(p.dtype == np.float32 for p in result.params.values())
    assert dtypes and all(d == {np.dtype(np.float32)} for d in dtypes)
    state = result.checkpoint.optimizer_state
    assert all(a.dtype == np.float32 for key in ("exp_avg", "exp_avg_sq") for a in state[key].values())
    assert trainer.evaluate({"x": x, "labels": labels}, result.params) < 0.25 < result.losses[0]
    back = Checkpoint.from_bytes(checkpoints[-1].to_bytes())
    assert all(p.dtype == np.float32 for p in back.params.values())
    resumed = trainer.fit({"x": x, "labels": labels}, None, epochs=8, resume=back)
    assert same_bytes(resumed.params, result.params)


# -- input errors ----------------------------------------------------------------------------
def test_data_must_cover_every_input(logreg, compiled):
    graph, plan = logreg
    data = separable(10)
    trainer = Trainer(plan, make_optimizer("sgd", lr=1.0), compiled=compiled)
    with pytest.raises(InputError, match=r"^data: missing input 'x2' .*give every input: x1, x2, y$") as info:
        trainer.fit({"x1": data["x1"], "y": data["y"]}, runtime.init_params(graph), steps=1)
    assert info.value.name == "x2"
    with pytest.raises(InputError, match=r"unexpected input 'x22' \(did you mean 'x2'.*\); the graph's inputs are"):
        trainer.fit({**data, "x22": data["x1"]}, runtime.init_params(graph), steps=1)
    # a misspelt key is named as such (it is also "missing x2", the less useful message)
    with pytest.raises(InputError, match=r"^data: unexpected input 'x_2' \(did you mean 'x2'\?\); the graph's "
                                         r"inputs are: x1, x2, y$"):
        trainer.fit({"x1": data["x1"], "x_2": data["x2"], "y": data["y"]}, runtime.init_params(graph), steps=1)


def test_batch_dimensions_must_agree(logreg, compiled):
    graph, plan = logreg
    data = separable(10)
    with pytest.raises(InputError, match="N="):
        Trainer(plan, make_optimizer("sgd", lr=1.0), compiled=compiled).fit(
            {**data, "y": data["y"][:9]}, runtime.init_params(graph), steps=1)
    # inputs with differently named batch dims still have to agree, example for example
    g = GraphBuilder("two", dtype="float64")
    a, b = g.input("a", ["N"]), g.input("b", ["M"])
    w = g.param("w", [], value=1.0)
    g.loss(g.add(g.mean(a * w), g.mean(b * w), name="L"))
    with pytest.raises(InputError, match="'b' has 4 examples .* but 'a' has 5") as info:
        Trainer(g.build(), make_optimizer("sgd", lr=1.0), batch_size=2, compiled=compiled).fit(
            {"a": np.ones(5), "b": np.ones(4)}, {"w": np.array(1.0)}, steps=1)
    assert info.value.name == "b"


def test_fit_argument_errors(logreg, compiled):
    graph, plan = logreg
    trainer = Trainer(plan, make_optimizer("sgd", lr=1.0), compiled=compiled)
    params = runtime.init_params(graph)
    with pytest.raises(ValueError, match="steps=..., epochs=..."):
        trainer.fit(separable(10), params)
    with pytest.raises(ValueError, match="steps must be an integer >= 0"):
        trainer.fit(separable(10), params, steps=-1)
    with pytest.raises(ValueError, match="checkpoint_every and on_checkpoint go together"):
        trainer.fit(separable(10), params, steps=1, checkpoint_every=1)
    with pytest.raises(ValueError, match="needs params"):
        trainer.fit(separable(10), None, steps=1)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        Trainer(plan, make_optimizer("sgd", lr=1.0), batch_size=0, compiled=compiled)
    with pytest.raises(InputError, match="float32"):
        trainer.fit(separable(10), {k: v.astype(np.float32) for k, v in params.items()}, steps=1)
    result = trainer.fit(separable(10), params, steps=0)
    assert result.steps == 0 and result.losses == [] and same_bytes(result.params, params)


def test_result_has_a_short_repr_and_its_last_losses(logreg, compiled):
    graph, plan = logreg
    data = separable(200)
    result = Trainer(plan, make_optimizer("sgd", lr=0.5), batch_size=4, compiled=compiled).fit(
        data, runtime.init_params(graph), steps=500, eval_data=data, eval_every=100)
    text = repr(result)
    assert len(text) < 200 and "\n" not in text, text
    assert text.startswith("TrainResult(steps=500, epochs=10, loss 0.693147 -> ")
    assert "params={w1: float64[], w2: float64[], b: float64[]}" in text
    assert result.loss == result.losses[-1] and result.eval_loss == result.eval_losses[-1][1]
    assert f"eval_loss {result.eval_loss:.6g}" in text
