"""The training loop: mini-batches, an optimizer, evaluation, checkpoints and resumption.

    trainer = Trainer(plan, make_optimizer("sgd", lr=0.5), batch_size=32, seed=0)
    result = trainer.fit({"x1": x1, "x2": x2, "y": y}, init_params(graph), epochs=20)
    result.params, result.losses

**Batches.** Every graph input whose first declared dimension is symbolic (``"N"`` or
unknown) is a per-example array, sliced along axis 0; other inputs are passed whole to
every step. An epoch is ``ceil(examples / batch_size)`` batches, the last one possibly
smaller; ``batch_size=None`` is full-batch training.

**Order.** With ``shuffle`` (and more than one batch per epoch) each epoch draws a fresh
permutation from ``np.random.default_rng(seed)``; nothing else uses that generator, so a
run is a pure function of the graph, data, initial parameters, optimizer and seed, bit
for bit. Dropout's masks come from the same seed and the step's number
(:class:`runtime.noise.Noise`), one generator per step and node, so they too are the same
in every run, resumed or not; evaluation (``eval_data``) runs without them.

**Resumption.** A :class:`~runtime.checkpoint.Checkpoint` records the next batch's
position (epoch, batch index) and the generator's state before that epoch's
permutation, with the parameters, the optimizer's state and the loss history.
``fit(..., resume=checkpoint)`` redraws that permutation and continues with the same
batch, so a run resumed at step k ends exactly as the uninterrupted run does.
``steps`` and ``epochs`` count from the start of the run, not from the resumption.

**Engines.** By default a step runs on the compiled engine (:class:`runtime.CompiledStep`:
the graph lowered once per batch shape to preallocated buffers, see docs/performance.md);
``compiled=False`` uses the reference interpreter (``Plan.forward``/``Run.backward``).
Both give the same results to within float rounding (the test suites run on both); a run
is bit-for-bit reproducible, and resumable, on the engine it was made with.

This module is the loop (past 300 lines because ``fit`` and the two engines' steps, the
diagnosis of a NaN and the resume checks share one run's state); what it reports is
:mod:`runtime.reports`, and the controls it applies are their own modules: schedules,
clipping, stopping, metrics and noise (dropout).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import numpy as np

import graphspec

from .checkpoint import Checkpoint, CheckpointError, rng_state_from_plain, rng_state_to_plain
from .clipping import clip
from .compiled import CompiledStep
from .metrics import with_metrics
from .errors import InputError, NonFiniteError
from .noise import Noise
from .optim import Optimizer
from .plan import Plan, compile
from .reports import GradNorms, ScaledGrads, StepReport, TrainResult
from .schedules import Schedule
from .spec import TrainingSpec
from .stopping import StoppingRules

Arrays = dict[str, np.ndarray]


# Without a checkpoint_every of its own a run that checkpoints does so every this many steps
# (the worker then writes one at most every Settings.checkpoint_every_s; `chainrule train` each).
DEFAULT_CHECKPOINT_STEPS = 100


def _count(name: str, value: Any, minimum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum} or None, got {value!r}")
    return int(value)


def _length(rows) -> int:
    return rows.stop - rows.start if isinstance(rows, slice) else len(rows)


def _is_stop(answer: Any) -> bool:
    return answer is True or (isinstance(answer, str) and answer == "stop")


class Trainer:
    """Trains a compiled graph's parameters with an optimizer. See the module docstring."""

    def __init__(self, plan: Plan | graphspec.Graph, optimizer: Optimizer, *, batch_size: int | None = None,
                 shuffle: bool = True, seed: int = 0, compiled: bool = True, schedule: Schedule | None = None,
                 clip_norm: float | None = None, clip_value: float | None = None):
        if isinstance(plan, graphspec.Graph):
            plan = compile(plan)
        if not isinstance(plan, Plan):
            raise TypeError(f"Trainer needs a runtime Plan (runtime.compile(graph)), got {type(plan).__name__}")
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"Trainer needs a runtime.optim optimizer, got {type(optimizer).__name__}")
        if not isinstance(shuffle, bool):
            raise ValueError(f"shuffle must be true or false, got {shuffle!r}")
        if not isinstance(compiled, bool):
            raise ValueError(f"compiled must be true or false, got {compiled!r}")
        self.compiled = compiled
        self.graph_hash = graphspec.content_hash(plan.graph)  # of the graph as given: checkpoints name it
        graph, self.metric_names = with_metrics(plan.graph)
        if graph is not plan.graph:
            plan = compile(graph)
        self.metric_nodes = tuple(graph.outputs[name] for name in self.metric_names)
        self.plan = plan
        self.optimizer = optimizer
        self.batch_size = _count("batch_size", batch_size, 1)
        self.shuffle = shuffle
        self.seed = _count("seed", seed, 0)
        if self.seed is None:
            raise ValueError("seed must be an integer >= 0, got None")
        self.schedule = schedule if schedule is not None else Schedule()
        self.base_lr = optimizer.lr  # the schedule's rates are relative to it
        for name, value in (("clip_norm", clip_norm), ("clip_value", clip_value)):
            if value is not None and not (isinstance(value, (int, float)) and 0 < value < float("inf")):
                raise ValueError(f"{name} must be a positive number or None, got {value!r}")
        self.clip_norm, self.clip_value = clip_norm, clip_value
        # per-example inputs: first declared dimension symbolic (a name) or unknown
        self.batched = tuple(name for name, spec in plan.graph.inputs.items()
                             if len(spec.shape) > 0 and not isinstance(spec.shape[0], int))

    @classmethod
    def from_spec(cls, plan: Plan | graphspec.Graph, spec: "TrainingSpec", *, compiled: bool = True) -> "Trainer":
        """A trainer configured by a :class:`~runtime.spec.TrainingSpec` (its optimizer, batch size,
        shuffling and seed); train with ``fit(data, params, **spec.fit_options())``."""
        return cls(plan, spec.make_optimizer(), batch_size=spec.batch_size, shuffle=spec.shuffle, seed=spec.seed,
                   compiled=compiled, schedule=spec.lr_schedule(), clip_norm=spec.clip_norm,
                   clip_value=spec.clip_value)

    # -- data ------------------------------------------------------------------------------
    def check_data(self, data: Mapping[str, Any], label: str = "data") -> int | None:
        """Check ``data`` against the graph as :meth:`fit` will (names, dtypes, shapes, symbols,
        finiteness, one batch dimension); the number of examples (None when no input is
        per-example). Raises :class:`~runtime.errors.InputError` naming the input (its message
        starts with ``label``, unless that is empty)."""
        placeholders = {name: np.broadcast_to(np.zeros((), dtype=spec.dtype), tuple(spec.shape))
                        for name, spec in self.plan.graph.parameters.items()}  # zero-cost stand-ins
        return self._prepare(data, placeholders, label)[1]

    def total_steps(self, examples: int | None, steps: int | None, epochs: int | None) -> int | None:
        """The updates :meth:`fit` runs on ``examples`` rows: min(steps, epochs x batches per epoch)."""
        candidates = [steps] if steps is not None else []
        if epochs is not None:
            candidates.append(epochs * self._layout(examples)[1])
        return min(candidates) if candidates else None

    def _prepare(self, data: Mapping[str, Any], params: Mapping[str, Any], label: str) -> tuple[Arrays, int | None]:
        """Check ``data`` (and ``params``) against the graph once; return the bound arrays (inputs
        and parameters) and the number of examples (None when no input is per-example)."""
        if not isinstance(data, Mapping):
            raise InputError(f"{label} must be a dict of arrays keyed by graph input, got {type(data).__name__}")
        try:  # the plan's check names a misspelt or missing input, with a did-you-mean
            bound = self.plan.check_inputs(data, params)
        except InputError as exc:
            if exc.kind != "input":
                raise
            raise InputError(f"{label}: {exc}" if label else str(exc), name=exc.name, expected=exc.expected,
                             actual=exc.actual, kind=exc.kind, code=exc.code) from None
        examples: int | None = None
        first = None
        for name in self.batched:
            n = bound[name].shape[0]
            if examples is None:
                examples, first = n, name
            elif n != examples:
                prefix = f"{label}: " if label else ""
                raise InputError(f"{prefix}input {name!r} has {n} examples (axis 0) but {first!r} has {examples}; "
                                 "every per-example input needs the same batch dimension", name=name,
                                 expected=f"{examples} along axis 0", actual=f"{n} along axis 0",
                                 code="batch_mismatch")
        return bound, examples

    def _layout(self, examples: int | None) -> tuple[int, int, bool]:
        """(batch size, batches per epoch, whether epochs are shuffled)."""
        if examples is None:  # no per-example input: every step sees everything
            return 0, 1, False
        size = examples if self.batch_size is None else min(self.batch_size, examples)
        batches = -(-examples // size)
        return size, batches, self.shuffle and batches > 1

    # -- evaluation ------------------------------------------------------------------------
    def evaluate(self, data: Mapping[str, Any], params: Mapping[str, Any]) -> float:
        """The loss on ``data`` (all of it, one forward pass, no gradients)."""
        bound, _ = self._prepare(data, params, "eval_data")
        return self.plan.forward({n: bound[n] for n in self.plan.input_names}, params, with_grad=False).loss

    # -- diagnosis -------------------------------------------------------------------------
    def diagnose(self, inputs: Mapping[str, Any], params: Mapping[str, Any], step: int | None = None,
                 noise: Noise | None = None) -> NonFiniteError:
        """Re-run a batch (with the step's dropout ``noise``) keeping every value and name the first
        node (in plan order) that is NaN/inf; when the forward pass is finite, the first non-finite
        gradient (in backward order)."""
        where = f"step {step}: " if step is not None else ""
        run = self.plan.forward(inputs, params, keep_values=True, noise=noise)
        for s in self.plan.steps:
            value = run.values.get(s.id)
            if value is not None and value.dtype.kind == "f" and not np.isfinite(value).all():
                bad = int(np.size(value) - np.isfinite(value).sum())
                kinds = "NaN" if np.isnan(value).any() else "inf"
                inputs_note = ", ".join(
                    f"{n!r}" + ("" if np.isfinite(run.values[n]).all() else " (non-finite)")
                    for n in s.inputs if n in run.values and run.values[n].dtype.kind == "f")
                return NonFiniteError(
                    f"{where}node {s.id!r} ({s.op}) is the first to produce {kinds} ({bad} of {np.size(value)} "
                    f"value(s)); its inputs: {inputs_note or 'none'}", node=s.id, step=step, op=s.op)
        grads = run.backward(keep_grads=True)
        for s in reversed(self.plan.steps):
            g = grads.get(s.id)
            if g is None or g.dtype.kind != "f":
                continue
            if not np.isfinite(g).all():  # not attributed to a consumer's VJP below: name the value itself
                return NonFiniteError(f"{where}the gradient d(loss)/d({s.id}) at node {s.id!r} ({s.op}) is the first "
                                      "to become NaN/inf in the backward pass (the forward pass is finite)",
                                      node=s.id, step=step, op=s.op)
            culprit = self._vjp_blame(s, g, run, grads)
            if culprit is not None:
                return NonFiniteError(f"{where}the backward pass of node {s.id!r} ({s.op}) turned a finite gradient "
                                      f"into NaN/inf for its input {culprit!r} (the forward pass is finite)",
                                      node=s.id, step=step, op=s.op)
        for name in self.plan.param_names:
            if not np.isfinite(grads[name]).all():
                return NonFiniteError(f"{where}the gradient of parameter {name!r} is NaN/inf (every node's value "
                                      "and gradient is finite)", node=name, step=step)
        return NonFiniteError(f"{where}the loss or a gradient was NaN/inf, but re-running the batch did not "
                              "reproduce it", node=None, step=step)

    def _vjp_blame(self, s, g: np.ndarray, run, grads: Arrays) -> str | None:
        """The input of step ``s`` whose gradient is non-finite because of ``s``'s own VJP, if any."""
        if not any(s.inputs[i] in grads and not np.isfinite(grads[s.inputs[i]]).all() for i in s.grad_inputs):
            return None
        try:
            with np.errstate(all="ignore"):
                parts = run.vjp(s, g, [run.values[n] for n in s.inputs])
        except Exception:  # noqa: BLE001 - a replay that fails just attributes nothing
            return None
        for i in s.grad_inputs:
            part = parts[i]
            if part is not None and not np.isfinite(np.asarray(part)).all():
                return s.inputs[i]
        return None

    # -- training --------------------------------------------------------------------------
    def fit(self, data: Mapping[str, Any], params: Mapping[str, Any] | None = None, *, steps: int | None = None,
            epochs: int | None = None, callback: Callable[[StepReport], Any] | None = None,
            eval_data: Mapping[str, Any] | None = None, eval_every: int | None = None,
            checkpoint_every: int | None = None, on_checkpoint: Callable[[Checkpoint], Any] | None = None,
            resume: Checkpoint | None = None, stopping: StoppingRules | None = None,
            copy_grads: bool = True) -> TrainResult:
        """Train until ``steps`` updates or ``epochs`` epochs (counted from the start of the run;
        whichever comes first), until ``callback`` returns True or ``"stop"``, or until the
        ``stopping`` rules (patience on the eval loss, a target loss: :mod:`runtime.stopping`) say so;
        ``TrainResult.stop_reason`` says which.

        ``params`` are copied, never modified; with ``resume`` they come from the checkpoint
        (pass ``params=None``), and the optimizer's state and the data position too; without
        it the optimizer starts fresh. ``eval_data`` is evaluated every ``eval_every`` steps
        and at the end; every ``checkpoint_every`` steps ``on_checkpoint`` gets a
        :class:`Checkpoint`. A NaN/inf loss, gradient or parameter raises
        :class:`~runtime.errors.NonFiniteError` naming the first node that produced it.

        Each :class:`StepReport` the ``callback`` gets holds copies of the step's gradients, so a
        kept report stays valid. ``copy_grads=False`` is for a callback that reads a report only
        while it is called (the worker's reporter): the compiled engine then hands over its own
        gradient arrays, which the next step overwrites, and saves a copy of every gradient per
        step (a few per cent of a step on a large model: bench/README.md).
        """
        steps = _count("steps", steps, 0)
        epochs = _count("epochs", epochs, 0)
        eval_every = _count("eval_every", eval_every, 1)
        checkpoint_every = _count("checkpoint_every", checkpoint_every, 1)
        if steps is None and epochs is None:
            raise ValueError("fit needs steps=..., epochs=... or both (training stops at whichever comes first)")
        if eval_every is not None and eval_data is None:
            raise ValueError("eval_every needs eval_data")
        if (checkpoint_every is None) != (on_checkpoint is None):
            raise ValueError("checkpoint_every and on_checkpoint go together")
        if resume is not None and params is not None:
            raise ValueError("when resuming, the checkpoint's parameters are used: pass params=None")
        if resume is not None and not isinstance(resume, Checkpoint):
            raise TypeError(f"resume must be a Checkpoint (Checkpoint.load(path)), got {type(resume).__name__}")
        if resume is None and params is None:
            raise ValueError("fit needs params (e.g. runtime.init_params(graph, seed)) or resume=checkpoint")
        stopping = stopping if stopping is not None else StoppingRules()
        if (stopping.patience is not None or stopping.restore_best) and eval_every is None:
            raise ValueError("early stopping on the eval loss (patience, restore_best) needs eval_data and eval_every")
        plan, opt = self.plan, self.optimizer

        start = resume.params if resume is not None else params
        bound, examples = self._prepare(data, start, "data")
        arrays = {name: bound[name] for name in plan.input_names}
        engine, programs = None, {}
        if self.compiled:
            engine = CompiledStep(plan, opt, keep=self.metric_nodes)
            engine.load_params({name: bound[name] for name in plan.param_names})
            params = engine.params  # views into the engine's parameter arena, updated in place
        else:
            params = {name: np.array(bound[name], copy=True, order="C") for name in plan.param_names}
        eval_arrays = None
        if eval_data is not None:
            eval_bound = self._prepare(eval_data, params, "eval_data")[0]
            eval_arrays = {name: eval_bound[name] for name in plan.input_names}
        size, batches, shuffled = self._layout(examples)
        settings = {"batch_size": self.batch_size, "shuffle": self.shuffle, "seed": self.seed, "examples": examples,
                    "engine": "compiled" if self.compiled else "interpreter"}
        total = self.total_steps(examples, steps, epochs)
        schedule, base_lr = self.schedule, self.base_lr
        schedule.check(base_lr, total)
        if schedule.varies:  # a resumed run must continue the same schedule (the rate is a function of the step)
            settings["schedule"] = {**schedule.config(), "lr": base_lr, "total": total}

        rng = np.random.default_rng(self.seed)
        if resume is not None:
            self._check_resume(resume, settings, batches)
            opt.load_state_dict(resume.optimizer_state)
            if resume.rng_state is not None:
                rng.bit_generator.state = rng_state_from_plain(resume.rng_state)
            step, epoch, batch = resume.step, resume.epoch, resume.batch_index
            losses = list(resume.losses)
            eval_losses = list(resume.eval_losses)
            best, last = resume.best_loss, resume.last_loss
            best_params = resume.best_params
        else:
            opt.reset()
            step, epoch, batch = 0, 0, 0
            losses, eval_losses = [], []
            best = last = None
            best_params = None
        watch = stopping.watch(eval_losses)  # replayed: a resumed run stops where the whole run would

        def checkpoint(epoch_state: dict | None) -> Checkpoint:
            state = epoch_state if epoch_state is not None else rng.bit_generator.state
            return Checkpoint(graph_hash=self.graph_hash, step=step, epoch=epoch, batch_index=batch,
                              params={n: p.copy() for n, p in params.items()}, optimizer=opt.config(),
                              optimizer_state=opt.state_dict(), rng_state=rng_state_to_plain(state),
                              settings=dict(settings), best_loss=best, last_loss=last, losses=list(losses),
                              eval_losses=list(eval_losses),
                              best_params=None if best_params is None else {
                                  n: p.copy() for n, p in best_params.items()})

        def evaluated(at: int, loss: float) -> None:
            nonlocal best_params
            eval_losses.append((at, loss))
            if watch.evaluated(at, loss) and stopping.restore_best:
                best_params = {n: p.copy() for n, p in params.items()}

        order: np.ndarray | None = None
        epoch_state: dict | None = None  # the generator's state before this epoch's permutation, once drawn
        stopped = False
        reason = None
        metrics: dict[str, float] = {}
        eval_metrics: dict[str, float] | None = None
        while (steps is None or step < steps) and (epochs is None or epoch < epochs):
            if epoch_state is None:
                epoch_state = rng.bit_generator.state
                order = rng.permutation(examples) if shuffled else None
            number = step + 1
            if examples is None:
                rows = None
            else:
                lo, hi = batch * size, min((batch + 1) * size, examples)
                rows = order[lo:hi] if order is not None else slice(lo, hi)
            # dropout's masks: drawn per step from the run's seed, so a resumed run draws the same
            noise = Noise(self.seed, number) if plan.random else None
            if schedule.varies:
                opt.lr = schedule.rate(base_lr, number, total)
            if engine is not None:
                loss, grads, norm, metrics = self._compiled_step(engine, programs, arrays, rows, number,
                                                                 callback is not None, copy_grads, noise)
            else:
                loss, grads, norm, metrics = self._interpreted_step(arrays, rows, params, number, noise)
            step, last = number, loss
            best = loss if best is None else min(best, loss)
            losses.append(loss)
            report_epoch, report_batch = epoch, batch
            batch += 1
            if batch == batches:
                epoch, batch, epoch_state = epoch + 1, 0, None
            eval_loss = step_eval_metrics = None
            if eval_every is not None and step % eval_every == 0:
                eval_loss, step_eval_metrics = self._evaluate(eval_arrays, params)
                evaluated(step, eval_loss)
                eval_metrics = step_eval_metrics
            elif eval_every is None:
                watch.reached(loss)  # without evaluations the target watches the training loss
            if callback is not None:
                stopped = _is_stop(callback(StepReport(step, report_epoch, loss, grads, GradNorms(grads), eval_loss,
                                                       report_batch, epochs=epoch, lr=opt.lr, clipped_from=norm,
                                                       metrics=metrics, eval_metrics=step_eval_metrics)))
            if checkpoint_every is not None and step % checkpoint_every == 0:
                on_checkpoint(checkpoint(epoch_state))
            if stopped or watch.reason is not None:
                reason = "callback" if stopped else watch.reason
                break
        opt.lr = base_lr  # the optimizer as it was given (the schedule set each update's rate)

        if eval_arrays is not None and (not eval_losses or eval_losses[-1][0] != step or eval_metrics is None):
            final_eval, eval_metrics = self._evaluate(eval_arrays, params)
            if not eval_losses or eval_losses[-1][0] != step:
                evaluated(step, final_eval)
        final = checkpoint(epoch_state)
        best_step = None
        if stopping.restore_best and best_params is not None:
            params, best_step = best_params, watch.best_step
        elif engine is not None:  # the caller's own arrays, not views into the engine
            params = {name: p.copy() for name, p in params.items()}
        if reason is None:
            reason = "steps" if steps is not None and step >= steps else "epochs"
        return TrainResult(params=params, losses=losses, eval_losses=eval_losses, steps=step, epochs=epoch,
                           stopped_early=reason in ("callback", "patience", "target_loss"), checkpoint=final,
                           stop_reason=reason, best_step=best_step, metrics=metrics, eval_metrics=eval_metrics)

    def _evaluate(self, arrays: Arrays, params: Arrays) -> tuple[float, dict[str, float]]:
        """The held-out loss and metrics (no dropout: evaluation is not training)."""
        run = self.plan.forward(arrays, params, with_grad=False)
        return run.loss, {name: float(run.outputs[name]) for name in self.metric_names}

    def _batch(self, arrays: Arrays, rows) -> Arrays:
        if rows is None:
            return arrays
        return {n: (a[rows] if n in self.batched else a) for n, a in arrays.items()}

    def _interpreted_step(self, arrays: Arrays, rows, params: Arrays, number: int,
                          noise: Noise | None) -> tuple[float, Arrays, float | None, dict[str, float]]:
        """One update on the reference interpreter; returns the loss, the gradients used, their
        global norm before clipping (None when the run does not clip) and the batch's metrics."""
        inputs = self._batch(arrays, rows)
        run = self.plan.forward(inputs, params, noise=noise)
        loss = run.loss
        if not math.isfinite(loss):
            raise self.diagnose(inputs, params, number, noise)
        grads = run.backward()
        if not all(np.isfinite(grads[n]).all() for n in self.plan.param_names):
            raise self.diagnose(inputs, params, number, noise)
        norm = self._clip([grads[n] for n in self.plan.param_names])
        with np.errstate(all="ignore"):  # overflow is detected explicitly below, not warned about
            self.optimizer.step(params, grads)
        self._check_params(params, lambda name: not np.isfinite(params[name]).all(), number)
        return loss, grads, norm, {name: float(run.outputs[name]) for name in self.metric_names}

    def _clip(self, grads: list[np.ndarray], scale: float = 1.0) -> float | None:
        if self.clip_norm is None and self.clip_value is None:
            return None
        return clip(grads, clip_norm=self.clip_norm, clip_value=self.clip_value, scale=scale)

    def _compiled_step(self, engine: CompiledStep, programs: dict, arrays: Arrays, rows, number: int,
                       report: bool, keep_grads: bool,
                       noise: Noise | None) -> tuple[float, Mapping[str, np.ndarray], float | None, dict[str, float]]:
        """One update on the compiled engine: the batch is gathered straight into the tape's
        input buffers. The gradients are copied only when a callback will see them (``report``)
        and may keep them (``keep_grads``); else they are the engine's arrays, read back unscaled."""
        key = None if rows is None else _length(rows)  # a tape per batch length: the last may be short
        program = programs.get(key)
        if program is None:
            program = programs[key] = engine.program(self._batch(arrays, rows), random=noise is not None)
            for name, buffer in program.inputs.items():
                if name not in self.batched or rows is None:
                    np.copyto(buffer, arrays[name])  # whole inputs: the same every step
        if rows is not None:
            for name in self.batched:
                if isinstance(rows, slice):
                    np.copyto(program.inputs[name], arrays[name][rows])
                else:
                    np.take(arrays[name], rows, axis=0, out=program.inputs[name])
        loss = engine.run(program, update=False, noise=noise, fold=engine.folds(program, self.schedule.varies))
        # a callback that reads the engine's own gradients gets their norms from the finiteness
        # check's pass over them (unless clipping changes them after it)
        squares = report and not keep_grads and self.clip_norm is None and self.clip_value is None
        if not math.isfinite(loss) or not engine.gradients_finite(program, noise, squares=squares):
            raise self.diagnose(dict(program.inputs), engine.params, number, noise)
        norm = self._clip(engine.gradient_arenas(), engine.grad_scale)
        if not report:
            grads = engine.grads  # nobody reads them
        elif keep_grads:
            grads = engine.true_grads()
        else:
            grads = ScaledGrads(engine.grads, engine.grad_scale, engine.grad_squares)
        with np.errstate(all="ignore"):
            engine.update()
        if not engine.params_finite():
            self._check_params(engine.params, lambda name: not np.isfinite(engine.params[name]).all(), number)
        values = program.values
        return loss, grads, norm, {name: float(values[node]) for name, node in zip(self.metric_names, self.metric_nodes)}

    @staticmethod
    def _check_params(params: Arrays, broken: Callable[[str], bool], number: int) -> None:
        for name in params:
            if broken(name):
                raise NonFiniteError(f"step {number}: the update made parameter {name!r} NaN/inf "
                                     f"(the loss and gradients were finite; is the learning rate too large?)",
                                     node=name, step=number)

    def _check_resume(self, ckpt: Checkpoint, settings: dict, batches: int) -> None:
        if ckpt.graph_hash != self.graph_hash:
            raise CheckpointError(f"the checkpoint is for graph {ckpt.graph_hash}, this trainer's graph is "
                                  f"{self.graph_hash}")
        name = ckpt.optimizer.get("name") if isinstance(ckpt.optimizer, Mapping) else None
        if name != self.optimizer.name:
            raise CheckpointError(f"the checkpoint was made with optimizer {name!r}, this trainer uses "
                                  f"{self.optimizer.name!r}")
        if ckpt.settings.get("schedule") != settings.get("schedule"):
            raise CheckpointError(f"the checkpoint was made with the learning-rate schedule "
                                  f"{ckpt.settings.get('schedule')}, this run has {settings.get('schedule')}; a "
                                  "resumed run continues its own schedule")
        for key in ("batch_size", "shuffle", "examples"):
            if key in ckpt.settings and ckpt.settings[key] != settings[key]:
                raise CheckpointError(f"the checkpoint was made with {key}={ckpt.settings[key]!r}, this run has "
                                      f"{key}={settings[key]!r}; a resumed run must see the same batches")
        engine = ckpt.settings.get("engine", settings["engine"])
        if engine != settings["engine"]:  # the engines agree only to within rounding: no bit-for-bit resume
            raise CheckpointError(f"the checkpoint was made on the {engine} engine, this trainer uses the "
                                  f"{settings['engine']} engine; resume with compiled={engine == 'compiled'}")
        if ckpt.batch_index >= batches:
            raise CheckpointError(f"the checkpoint's batch index {ckpt.batch_index} is past the {batches} batch(es) "
                                  "of an epoch")
        if len(ckpt.losses) != ckpt.step:
            raise CheckpointError(f"the checkpoint has {len(ckpt.losses)} losses for {ckpt.step} steps")
