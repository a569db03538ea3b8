"""Learning-rate schedules, gradient clipping and early stopping (runtime level, both engines)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import graphspec
import runtime
from graphspec import GraphBuilder
from runtime import TrainingSpec
from runtime.clipping import clip, global_norm
from runtime.schedules import Schedule, ScheduleError
from runtime.stopping import StoppingRules

ENGINES = ["interpreter", "compiled"]


def regression(dtype: str = "float64"):
    g = GraphBuilder("regression", dtype=dtype)
    x, y = g.input("x", ["N", 3]), g.input("y", ["N", 1])
    out = g.linear(g.tanh(g.linear(x, 8, name="hidden")), 1, name="out")
    g.loss(g.mse(out, y))
    return g.build()


def data(n: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    return {"x": x, "y": np.sin(x[:, :1]) + 0.5 * x[:, 1:2]}


# -- schedules -----------------------------------------------------------------------------

def test_the_schedules_closed_forms():
    """PyTorch's StepLR, ExponentialLR, CosineAnnealingLR (half a period) and LinearLR, stepped
    once per update, after a linear warmup, written out."""
    rates = lambda s, total=None: [s.rate(0.1, n, total) for n in range(1, 11)]  # noqa: E731
    assert rates(Schedule()) == [0.1] * 10
    assert rates(Schedule("step", decay_steps=3)) == pytest.approx([0.1] * 3 + [0.01] * 3 + [0.001] * 3 + [1e-4])
    assert rates(Schedule("step", decay_steps=4, decay_rate=0.5)) == pytest.approx([0.1] * 4 + [0.05] * 4 + [0.025] * 2)
    assert rates(Schedule("exponential", decay_rate=0.9)) == pytest.approx([0.1 * 0.9 ** t for t in range(10)])
    assert rates(Schedule("cosine"), 10) == pytest.approx([0.05 * (1 + math.cos(math.pi * t / 10)) for t in range(10)])
    assert rates(Schedule("linear", min_lr=0.02), 10) == pytest.approx([0.02 + 0.08 * (1 - t / 10) for t in range(10)])
    warm = rates(Schedule("cosine", warmup_steps=4, decay_steps=6, min_lr=0.01))
    assert warm[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])  # up to the base rate, then the decay starts there
    assert warm[4:] == pytest.approx([0.01 + 0.045 * (1 + math.cos(math.pi * t / 6)) for t in range(6)])
    assert Schedule("cosine", decay_steps=5).rate(0.1, 50) == 0.0  # past its span: min_lr
    assert rates(Schedule("exponential", decay_rate=0.5, min_lr=0.02)) == pytest.approx(
        [0.1, 0.05, 0.025] + [0.02] * 7)  # a floor for step and exponential


@pytest.mark.parametrize("settings, field", [
    ({"schedule": "step"}, "decay_steps"),
    ({"schedule": "exponential"}, "decay_rate"),
    ({"schedule": "cosine", "decay_rate": 0.5}, "decay_rate"),
    ({"schedule": "constant", "min_lr": 0.001}, "min_lr"),
    ({"schedule": "cosine", "min_lr": 0.5, "optimizer": {"name": "sgd", "lr": 0.1}}, "min_lr"),
    ({"schedule": "constant", "decay_steps": 10}, "decay_steps"),
    ({"decay_rate": 1.5}, "decay_rate"),
    ({"clip_norm": 0}, "clip_norm"),
    ({"clip_value": -1.0}, "clip_value"),
    ({"patience": 3}, "eval_every"),
    ({"min_delta": 0.1}, "min_delta"),
    ({"restore_best": True}, "eval_every"),
    ({"target_loss": "low"}, "target_loss"),
])
def test_settings_that_cannot_run_are_located(settings, field):
    with pytest.raises(runtime.SpecError) as info:
        TrainingSpec.from_dict({"steps": 10, **settings})
    assert [i["location"] for i in info.value.issues] == [f"/{field}"], info.value.issues


@pytest.mark.parametrize("engine", ENGINES)
def test_each_update_uses_its_scheduled_rate_and_reports_it(engine):
    graph = regression()
    schedule = Schedule("cosine", warmup_steps=3)
    reports = []
    trainer = runtime.Trainer(graph, runtime.SGD(lr=0.2), batch_size=None, compiled=engine == "compiled",
                              schedule=schedule)
    params = runtime.init_params(graph, seed=0)
    result = trainer.fit(data(), params, steps=12, callback=reports.append)
    assert [r.lr for r in reports] == [schedule.rate(0.2, n, 12) for n in range(1, 13)]
    assert trainer.optimizer.lr == 0.2  # given back as it came
    # the same run by hand: full-batch gradient descent at those rates, on the interpreter
    plan, manual = runtime.compile(graph), {k: v.copy() for k, v in params.items()}
    for number in range(1, 13):
        for name, g in plan.forward(data(), manual).backward().items():
            manual[name] -= schedule.rate(0.2, number, 12) * g
    for name in params:
        np.testing.assert_allclose(result.params[name], manual[name], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_run_resumed_mid_schedule_ends_bit_for_bit_as_the_whole_run(engine):
    graph = regression()
    make = lambda schedule=Schedule("step", decay_steps=5, decay_rate=0.5): runtime.Trainer(  # noqa: E731
        graph, runtime.make_optimizer("sgd", lr=0.1, momentum=0.9), batch_size=16, seed=1,
        compiled=engine == "compiled", schedule=schedule)
    params = runtime.init_params(graph, seed=0)
    whole = make().fit(data(), params, steps=20)
    checkpoints = []
    make().fit(data(), params, steps=20, checkpoint_every=7, on_checkpoint=checkpoints.append,
               callback=lambda r: "stop" if r.step == 7 else None)
    resumed = make().fit(data(), None, steps=20, resume=checkpoints[0])
    assert resumed.losses == whole.losses
    for name in whole.params:
        np.testing.assert_array_equal(resumed.params[name], whole.params[name])
    with pytest.raises(runtime.CheckpointError, match="schedule"):
        make(Schedule("exponential", decay_rate=0.9)).fit(data(), None, steps=20, resume=checkpoints[0])


def test_the_trainer_refuses_a_schedule_that_cannot_run():
    trainer = runtime.Trainer(regression(), runtime.SGD(lr=0.1), schedule=Schedule("cosine", min_lr=1.0))
    with pytest.raises(ScheduleError, match="min_lr 1 is above the learning rate 0.1"):
        trainer.fit(data(), runtime.init_params(trainer.plan.graph), steps=5)
    trainer = runtime.Trainer(regression(), runtime.SGD(lr=0.1), schedule=Schedule("linear", warmup_steps=5))
    with pytest.raises(ScheduleError, match="nothing is left to decay over"):
        trainer.fit(data(), runtime.init_params(trainer.plan.graph), steps=5)


# -- clipping ------------------------------------------------------------------------------

def test_clipping_by_norm_and_by_value_in_place():
    grads = [np.array([3.0, 0.0]), np.array([[4.0]])]
    assert clip(grads, clip_norm=1.0) == 5.0  # the norm before clipping
    assert global_norm(grads) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(grads[0], [0.6, 0.0], atol=1e-6)
    grads = [np.array([3.0, -0.5]), np.array([[-4.0]])]
    clip(grads, clip_value=1.0)
    np.testing.assert_array_equal(grads[0], [1.0, -0.5])
    np.testing.assert_array_equal(grads[1], [[-1.0]])
    small = [np.array([0.1, 0.2])]
    clip(small, clip_norm=10.0)  # below the bound: untouched
    np.testing.assert_array_equal(small[0], [0.1, 0.2])
    scaled = [np.array([30.0, 0.0], np.float32)]  # gradients times a folded learning rate of 10
    assert clip(scaled, clip_norm=1.0, scale=10.0) == 3.0
    np.testing.assert_allclose(scaled[0], [10.0, 0.0], rtol=1e-5)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("lr", [0.5, 2.0])  # 0.5: plain SGD folds its rate into the gradients; 2.0 does not
def test_the_engines_clip_the_gradients_the_update_uses_and_report_the_norm_before(engine, lr):
    graph = regression()
    params = runtime.init_params(graph, seed=0)
    plain, clipped = [], []
    for reports, options in ((plain, {}), (clipped, {"clip_norm": 0.05})):
        runtime.Trainer(graph, runtime.SGD(lr=lr), batch_size=None, compiled=engine == "compiled", **options).fit(
            data(), params, steps=1, callback=reports.append)
    before = plain[0].grad_norm
    assert before > 0.05
    assert clipped[0].grad_norm == pytest.approx(before, rel=1e-9)  # reported before clipping
    assert math.sqrt(sum(n * n for n in clipped[0].grad_norms.values())) == pytest.approx(0.05, rel=1e-4)
    for name, g in clipped[0].grads.items():
        np.testing.assert_allclose(g, plain[0].grads[name] * 0.05 / (before + 1e-6), rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("engine", ENGINES)
def test_clipping_tames_a_rate_that_diverges_without_it(engine):
    graph = regression()
    params = runtime.init_params(graph, seed=0)
    trainer = lambda **clip: runtime.Trainer(graph, runtime.SGD(lr=3.0), batch_size=None,  # noqa: E731
                                             compiled=engine == "compiled", **clip)
    with pytest.raises(runtime.NonFiniteError):
        trainer().fit({k: v * 30 for k, v in data().items()}, params, steps=200)
    result = trainer(clip_norm=0.5, clip_value=1.0).fit({k: v * 30 for k, v in data().items()}, params, steps=200)
    assert all(math.isfinite(v) for v in result.losses)


# -- stopping early ------------------------------------------------------------------------

def test_patience_counts_evaluations_without_an_improvement_beyond_min_delta():
    watch = StoppingRules(patience=2, min_delta=0.1).watch()
    assert watch.evaluated(10, 1.0)
    assert not watch.evaluated(20, 0.95)  # better, but not by more than min_delta
    assert watch.reason is None
    assert not watch.evaluated(30, 0.91)
    assert watch.reason == "patience" and watch.best_step == 10
    replayed = StoppingRules(patience=2, min_delta=0.1).watch([(10, 1.0), (20, 0.95), (30, 0.91)])
    assert (replayed.reason, replayed.best, replayed.waited) == ("patience", 1.0, 2)


@pytest.mark.parametrize("engine", ENGINES)
def test_early_stopping_stops_restores_the_best_and_resumes_to_the_same_end(engine):
    graph = regression()
    params = runtime.init_params(graph, seed=0)
    rules = StoppingRules(patience=3, restore_best=True)
    held_out = data(32, seed=5)
    make = lambda: runtime.Trainer(graph, runtime.SGD(lr=0.9), batch_size=8, seed=0,  # noqa: E731
                                   compiled=engine == "compiled")
    result = make().fit(data(), params, steps=2000, eval_data=held_out, eval_every=5, stopping=rules)
    assert result.stop_reason == "patience" and result.stopped_early and result.steps < 2000
    best_step, best_loss = min(result.eval_losses, key=lambda e: e[1])
    assert result.best_step == best_step
    assert runtime.compile(graph).forward(held_out, result.params, with_grad=False).loss == best_loss
    later = [loss for step, loss in result.eval_losses if step > best_step]
    assert len(later) == 3 and all(loss >= best_loss for loss in later)
    # resumed from a checkpoint taken after the best evaluation: the same stop, the same parameters
    checkpoints = []
    make().fit(data(), params, steps=best_step + 5, eval_data=held_out, eval_every=5, stopping=rules,
               checkpoint_every=best_step + 5, on_checkpoint=checkpoints.append)
    resumed = make().fit(data(), None, steps=2000, eval_data=held_out, eval_every=5, stopping=rules,
                         resume=runtime.Checkpoint.from_bytes(checkpoints[-1].to_bytes()))
    assert (resumed.stop_reason, resumed.steps, resumed.best_step) == ("patience", result.steps, best_step)
    for name in params:
        np.testing.assert_array_equal(resumed.params[name], result.params[name])


@pytest.mark.parametrize("engine", ENGINES)
def test_a_target_loss_stops_on_the_training_loss_or_on_the_eval_loss(engine):
    graph = regression()
    params = runtime.init_params(graph, seed=0)
    make = lambda: runtime.Trainer(graph, runtime.SGD(lr=0.5), batch_size=None,  # noqa: E731
                                   compiled=engine == "compiled")
    result = make().fit(data(), params, steps=5000, stopping=StoppingRules(target_loss=0.05))
    assert result.stop_reason == "target_loss" and result.losses[-1] <= 0.05 < min(result.losses[:-1])
    held_out = data(32, seed=5)
    result = make().fit(data(), params, steps=5000, eval_data=held_out, eval_every=10,
                        stopping=StoppingRules(target_loss=0.1))
    assert result.stop_reason == "target_loss" and result.eval_losses[-1][1] <= 0.1
    assert result.steps % 10 == 0
    assert make().fit(data(), params, steps=3).stop_reason == "steps"


# -- metrics -------------------------------------------------------------------------------

def classifier(loss: str = "softmax_cross_entropy"):
    g = GraphBuilder(f"classifier_{loss}", dtype="float32")
    x = g.input("x", ["N", 2])
    if loss == "softmax_cross_entropy":
        y = g.input("y", ["N"], dtype="int64")
        g.loss(g.softmax_cross_entropy(g.linear(x, 3, name="out"), y))
    elif loss == "bce_with_logits":
        g.loss(g.bce_with_logits(g.linear(x, 1, name="out"), g.input("y", ["N", 1])))
    else:
        g.loss(g.bce(g.sigmoid(g.linear(x, 1, name="out")), g.input("y", ["N", 1])))
    return g.build()


def labelled(loss: str, n: int = 48, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2)).astype(np.float32)
    if loss == "softmax_cross_entropy":
        return {"x": x, "y": (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5)}
    return {"x": x, "y": (x[:, :1] + x[:, 1:] > 0).astype(np.float32)}


def expected_accuracy(loss: str, graph, params, batch) -> float:
    out = runtime.compile(graph).forward(batch, params, keep_values=True)
    scores = out.values["out"] if "out" in out.values else None
    if loss == "softmax_cross_entropy":
        return float(np.mean(np.argmax(scores, axis=-1) == batch["y"]))
    probability = scores if loss == "bce_with_logits" else 1 / (1 + np.exp(-scores))
    threshold = 0.0 if loss == "bce_with_logits" else 0.5
    return float(np.mean((probability > threshold) == (batch["y"] > 0.5)))


@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "bce", "bce_with_logits"])
def test_a_classification_loss_reports_accuracy_on_batches_and_held_out_data(loss):
    graph = classifier(loss)
    params = runtime.init_params(graph, seed=0)
    held_out = labelled(loss, 20, seed=9)
    runs = {}
    for engine in ENGINES:
        reports = []
        trainer = runtime.Trainer(graph, runtime.SGD(lr=0.5), batch_size=None, compiled=engine == "compiled")
        assert trainer.metric_names == ["accuracy"]
        result = trainer.fit(labelled(loss), params, steps=6, eval_data=held_out, eval_every=3,
                             callback=reports.append)
        runs[engine] = (reports, result)
    reports, result = runs["interpreter"]
    compiled_reports, compiled_result = runs["compiled"]
    assert [r.metrics for r in reports] == [r.metrics for r in compiled_reports]
    assert [r.eval_metrics for r in reports] == [r.eval_metrics for r in compiled_reports]
    assert [r.eval_metrics is not None for r in reports] == [False, False, True, False, False, True]
    # the first step's accuracy is the initial parameters' on the whole batch
    assert reports[0].metrics["accuracy"] == pytest.approx(expected_accuracy(loss, graph, params, labelled(loss)))
    assert result.eval_metrics == {"accuracy": pytest.approx(expected_accuracy(loss, graph, result.params, held_out))}
    assert result.metrics == reports[-1].metrics


def test_regression_has_no_accuracy_and_a_graph_s_own_scalar_outputs_are_metrics():
    assert runtime.Trainer(regression(), runtime.SGD(lr=0.1)).metric_names == []
    g = GraphBuilder("with_a_metric", dtype="float64")
    x, y = g.input("x", ["N", 3]), g.input("y", ["N", 1])
    out = g.linear(x, 1, name="out")
    g.output("mean_abs_error", g.mean(g.abs(g.sub(out, y))))
    g.loss(g.mse(out, y))
    graph = g.build()
    reports = []
    trainer = runtime.Trainer(graph, runtime.SGD(lr=0.1), batch_size=None)
    trainer.fit(data(), runtime.init_params(graph), steps=2, callback=reports.append)
    assert trainer.metric_names == ["mean_abs_error"]
    run = runtime.compile(graph).forward(data(), runtime.init_params(graph))
    assert reports[0].metrics == {"mean_abs_error": float(run.outputs["mean_abs_error"])}
    assert trainer.graph_hash == graphspec.content_hash(graph)


def test_a_changing_rate_is_folded_into_the_seed_only_where_that_is_cheaper():
    """Plain SGD folds its rate into the backward pass's seed; a schedule changes it every step, which
    re-runs the seed tape: worth it only while that tape touches fewer elements than the update would."""
    def engine_for(graph, batch):
        step = runtime.CompiledStep(graph, runtime.SGD(lr=0.1))
        step.load_params(runtime.init_params(graph, seed=0))
        return step, step.program(batch)
    # bce's seed tape negates a per-row array: 4,096 rows against 3 parameters
    g = GraphBuilder("logistic", dtype="float64")
    g.loss(g.bce(g.sigmoid(g.linear(g.input("x", ["N", 2]), 1, name="out")), g.input("y", ["N", 1])))
    rng = np.random.default_rng(0)
    wide_batch = {"x": rng.normal(size=(4096, 2)), "y": (rng.random((4096, 1)) > 0.5).astype(float)}
    step, program = engine_for(g.build(), wide_batch)
    assert program.seed_elements > 4096
    assert step.folds(program, rate_changes=False) and not step.folds(program, rate_changes=True)
    # mse's seed tape is one scalar division: folding stays cheaper than a pass over 41 parameters
    step, program = engine_for(regression(), data(4096))
    assert step.folds(program, rate_changes=True)
