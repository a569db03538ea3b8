"""The compiled training step: forward, backward and optimizer update as one tape.

    step = runtime.CompiledStep(plan, runtime.SGD(lr=0.1))
    step.load_params(init_params(graph))
    loss = step(inputs)              # one update; step.params are the updated parameters
    loss, grads = step.gradients(inputs)   # no update

Parameters live in one flat array per dtype (the *arena*), gradients in another of the
same layout; ``step.params[name]`` and ``step.grads[name]`` are views into them, so a
plain SGD update is two numpy calls for the whole model, and checking every gradient
for NaN/inf is one reduction. A tape is lowered (:mod:`.lower`) the first time a set of
input shapes is seen and kept, so a trainer whose last batch is smaller has two.

Arrays a step hands out (``grads``, ``params``) are the engine's own: they change with
the next step; copy what you keep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from graphspec import Graph

from ..errors import ExecutionError, InputError
from ..noise import Noise
from ..optim import Optimizer
from ..plan import Plan, compile as compile_plan
from ..reports import sum_of_squares
from .lower import Program, lower, tensor_type


_CHUNK = 1 << 15  # elements per SGD chunk: a small temporary that stays in cache


@dataclass
class _Arena:
    params: np.ndarray
    grads: np.ndarray

    def __post_init__(self) -> None:
        scratch = np.empty(min(_CHUNK, self.params.size), self.params.dtype)
        self.chunks = [(self.params[i:i + _CHUNK], self.grads[i:i + _CHUNK], scratch[:min(_CHUNK, self.params.size - i)])
                       for i in range(0, self.params.size, _CHUNK)]


class CompiledStep:
    """A plan compiled into tapes for training with ``optimizer`` (see the module docstring).

    ``grad_inputs=True`` also computes gradients with respect to the float inputs
    (:meth:`gradients` returns them too); training never needs them.
    """

    def __init__(self, plan: Plan | Graph, optimizer: Optimizer | None = None, *, grad_inputs: bool = False,
                 keep: tuple[str, ...] = ()):
        if isinstance(plan, Graph):
            plan = compile_plan(plan)
        self.plan = plan
        self.keep = tuple(keep)  # values (metric outputs) each run computes too: Program.values[name]
        self.optimizer = optimizer
        self.grad_inputs = grad_inputs
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self._arenas: list[_Arena] = []
        self._programs: dict[tuple, Program] = {}
        self._last: Program | None = None
        self._loaded = False
        self.grad_scale = 1.0  # what the last run's gradients are multiplied by (see run)
        self.grad_squares: dict[str, float] | None = None  # see gradients_finite
        self._input_types = {name: spec.dtype for name, spec in plan.graph.inputs.items()}

    # -- parameters ------------------------------------------------------------------------
    def load_params(self, params: Mapping[str, Any]) -> None:
        """Copy ``params`` (checked as :meth:`Plan.check_inputs` checks them) into the arena."""
        plan = self.plan
        if self._loaded:
            for name in plan.param_names:
                value = np.asarray(params[name]) if name in params else None
                if value is None or value.shape != self.params[name].shape or value.dtype != self.params[name].dtype:
                    break
            else:  # same layout: copy in place, the tapes stay valid
                for name in plan.param_names:
                    self.params[name][...] = params[name]
                return
        bound = plan.check_inputs(None, params, only="parameter")
        by_dtype: dict[np.dtype, list[str]] = {}
        for name in plan.param_names:
            by_dtype.setdefault(bound[name].dtype, []).append(name)
        self.params, self.grads, self._arenas, self._programs, self._last = {}, {}, [], {}, None
        for dtype, names in by_dtype.items():
            size = sum(bound[n].size for n in names)
            arena = _Arena(np.empty(size, dtype), np.zeros(size, dtype))
            offset = 0
            for n in names:
                shape = bound[n].shape
                end = offset + bound[n].size
                self.params[n] = arena.params[offset:end].reshape(shape)
                self.params[n][...] = bound[n]
                self.grads[n] = arena.grads[offset:end].reshape(shape)
                offset = end
            self._arenas.append(arena)
        self._chunks = [chunk for arena in self._arenas for chunk in arena.chunks]
        self._loaded = True

    # -- tapes -----------------------------------------------------------------------------
    def program(self, inputs: Mapping[str, np.ndarray], *, random: bool = False) -> Program:
        """The tape for these inputs' shapes, lowered on first use (the inputs are fully
        checked then; later calls with the same shapes check only shapes and dtypes).
        ``random``: a training step's tape, whose dropout draws (:meth:`run`'s ``noise``)."""
        if not self._loaded:
            raise InputError("load_params(...) first: the compiled step has no parameters yet")
        random = random and self.plan.random
        key = (random, *[np.shape(inputs[name]) if name in inputs else None for name in self.plan.input_names])
        program = self._programs.get(key)
        if program is None:
            bound = self.plan.check_inputs(inputs, None, only="input")
            types = {name: tensor_type(bound[name]) for name in self.plan.input_names}
            program = lower(self.plan, types, self.params, self.grads, grad_inputs=self.grad_inputs, random=random,
                            keep=self.keep)
            self._programs[key] = program
        return program

    def _load(self, inputs: Mapping[str, Any], noise: Noise | None = None) -> Program:
        program = self._last
        if program is not None and bool(program.draws) != (noise is not None and self.plan.random):
            program = None  # the last tape was lowered for the other mode (training or not)
        if program is not None and len(inputs) == len(program.inputs):  # the common case: same shapes again
            try:
                for name, target in program.inputs.items():
                    value = inputs[name]
                    if value is not target:
                        if value.shape != target.shape or value.dtype != target.dtype:
                            break
                        np.copyto(target, value)
                else:
                    return program
            except (KeyError, AttributeError):  # a missing input, or not an array: the full path says which
                pass
        program = self._last = self.program(inputs, random=noise is not None)
        if len(inputs) != len(program.inputs):
            self.plan.check_inputs(inputs, self.params)  # names the missing or unexpected input
        for name, target in program.inputs.items():
            value = inputs[name]
            if value is not target:
                if not isinstance(value, np.ndarray) or value.dtype != target.dtype:
                    self.plan.check_inputs(inputs, self.params)  # raises, naming the input and the dtype
                np.copyto(target, value)
        return program

    def run(self, program: Program, *, update: bool = True, fold: bool = True, noise: Noise | None = None) -> float:
        """Run ``program`` on the inputs already in ``program.inputs``: forward, backward and
        (``update``) the optimizer step. Returns the loss (before the update). A program
        lowered with ``random`` needs the step's ``noise`` (dropout's masks are drawn from it).

        With ``fold``, the backward pass starts from the optimizer's
        :meth:`~runtime.optim.Optimizer.gradient_scale` instead of 1 (plain SGD: its learning
        rate, so ``grads`` hold ``lr * d(loss)/d(param)`` and the update is one subtraction);
        ``grad_scale`` says by what the last run's gradients are multiplied.
        """
        self.grad_scale = self.optimizer.gradient_scale() if fold and self.optimizer is not None else 1.0
        program.set_seed(self.grad_scale)
        if program.draws:
            if noise is None:
                raise InputError("this compiled step draws dropout masks: pass the step's noise "
                                 "(runtime.noise.Noise(seed, step))")
            for n, draw in program.draws:
                np.copyto(draw, noise.draw(n.kernel, n.id, draw.shape, draw.dtype, n.attrs))
        with np.errstate(all="ignore"):  # non-finite values are the caller's to detect, as in Plan
            try:
                for fn, args in program.tape:
                    fn(*args)
            except (ValueError, IndexError) as exc:  # e.g. a class label out of range
                raise self._located(program, exc) from None
            loss = float(program.loss)
            if update and self.optimizer is not None:
                self.update()
        return loss

    def folds(self, program: Program, rate_changes: bool) -> bool:
        """Whether :meth:`run` should fold the optimizer's rate into the backward pass's seed.
        Folding saves a pass over the parameters in the update; but a rate that changes every
        step (a schedule) re-runs the seed tape each time, which for a mean over a large batch
        touches more elements than the update's pass would: then the rate goes in the update."""
        return not rate_changes or program.seed_elements <= sum(a.params.size for a in self._arenas)

    def __call__(self, inputs: Mapping[str, Any], noise: Noise | None = None) -> float:
        """One training step on ``inputs``; the loss before the update. ``noise`` (the run's
        seed and this step's number) makes dropout drop; without it dropout is the identity."""
        return self.run(self._load(inputs, noise), noise=noise)

    def gradients(self, inputs: Mapping[str, Any], noise: Noise | None = None) -> tuple[float, dict[str, np.ndarray]]:
        """The loss and d(loss)/d(every parameter) (and float input, with ``grad_inputs``),
        as copies; no update."""
        program = self._load(inputs, noise)
        loss = self.run(program, update=False, fold=False, noise=noise)
        grads = {name: g.copy() for name, g in self.grads.items()}
        grads.update({name: g.copy() for name, g in program.input_grads.items()})
        return loss, grads

    # -- the update ----------------------------------------------------------------------
    def update(self) -> None:
        """Apply the optimizer to the parameters with the gradients of the last run."""
        if self.optimizer.step_flat(self._chunks, self.grad_scale):
            return
        if self.grad_scale != 1.0:
            raise RuntimeError(f"{self.optimizer.name}: the gradients are scaled by {self.grad_scale}, "
                               "but this optimizer has no update for scaled gradients")
        self.optimizer.step(self.params, self.grads)

    def true_grads(self) -> dict[str, np.ndarray]:
        """Copies of the last run's d(loss)/d(param), the learning rate divided back out if it
        was folded in (so equal to an unfolded run's to within rounding)."""
        if self.grad_scale == 1.0:
            return {name: g.copy() for name, g in self.grads.items()}
        return {name: np.divide(g, self.grad_scale) for name, g in self.grads.items()}

    def gradient_arenas(self) -> list[np.ndarray]:
        """The last run's gradients as flat arrays, one per dtype (multiplied by ``grad_scale``):
        what clipping (runtime.clipping) works on in place."""
        return [a.grads for a in self._arenas]

    def grads_finite(self) -> bool:
        return all(_finite(a.grads) for a in self._arenas)

    def gradients_finite(self, program: Program, noise: Noise | None = None, *, squares: bool = False) -> bool:
        """Whether the last run's gradients are finite. A run whose gradients were scaled
        (:meth:`run`'s ``fold``) and are not is redone unscaled first, so the scale is never
        what made a step fail.

        ``squares``: the check is made of each gradient's sum of squares instead
        (:func:`~runtime.reports.sum_of_squares`, kept in :attr:`grad_squares`): the same one
        pass over the gradients, but a report's norms then need no second pass, which on a large
        model reads them back from memory (bench/README.md, "Reporting overhead")."""
        self.grad_squares = None
        if squares:
            with np.errstate(all="ignore"):
                taken = {name: sum_of_squares(g) for name, g in self.grads.items()}
            if all(math.isfinite(v) for v in taken.values()):
                self.grad_squares = taken
                return True
        if self.grads_finite():
            return True
        if self.grad_scale != 1.0:
            self.run(program, update=False, fold=False, noise=noise)
            return self.grads_finite()
        return False

    def params_finite(self) -> bool:
        return all(_finite(a.params) for a in self._arenas)

    def _located(self, program: Program, exc: Exception) -> Exception:
        """The interpreter's error for the failing batch (it names the node), else a plain one."""
        try:
            self.plan.forward(dict(program.inputs), self.params, with_grad=False)  # dropout changes no error
        except (ExecutionError, InputError) as located:
            return located
        return ExecutionError(str(exc), node="?", op="?")


def _finite(array: np.ndarray) -> bool:
    # one sum is a cheap first test: it is finite whenever every element is, unless it overflows
    return bool(np.isfinite(np.add.reduce(array))) or bool(np.isfinite(array).all())
