"""The kernel table: one entry per op of the graphspec catalogue, forward and VJP side by side.

A kernel is two functions over numpy arrays, and the only definition of its op's
derivative — both engines run them:

    forward(*inputs, **attrs) -> output
    vjp(g, out, *inputs, **attrs) -> one gradient per input (None where the input takes none)

``g`` is d(loss)/d(output). The engine sums every gradient back to its input's shape
with :func:`unbroadcast`, so a broadcasting op's VJP can return the broadcast shape.
``saves`` names which forward values the VJP reads ("out" and/or input indices); the
engine keeps only those, and passes a :class:`Meta` (shape and dtype) for the rest.
A kernel registered with ``residuals=True`` returns ``(output, residuals)`` from
``forward`` — intermediate arrays its VJP reuses instead of recomputing — and its VJP
receives them as the keyword ``residuals``.
A kernel registered with ``draws=f`` is random while training (dropout): the engine calls
``f(rng, shape, dtype, **attrs)`` for each training step, with ``shape`` and ``dtype`` its
first input's and ``rng`` a generator seeded from the run's seed, the step number and the
node (:class:`runtime.noise.Noise`), and passes the array as one more argument after the
inputs to ``forward`` and ``vjp``; outside training that argument is None.

The interpreter calls these functions; the compiled engine (:mod:`runtime.compiled`)
*traces* the same functions once per set of shapes and plans buffers over the recording
(:mod:`runtime.compiled.trace`). So a kernel is written as plain numpy on whole arrays:
no ``out=``, no writing into an argument, no Python ``if`` on values (a value check
that must run every step is a :func:`data_check`). Python numbers, not numpy scalars,
for constants: ``np.float64(2) * x`` turns float32 into float64, and tracing refuses it.

Adding an op is the list in docs/runtime.md ("Adding an op"): a contract in
graphspec/ops.py (with a format version bump), one ``kernel(...)`` entry here, a sample in
tests/op_samples.py, the generated docs; the suite fails until all are done. Patterns of
several ops that the compiled engine runs as one different algorithm are fusions
(runtime/compiled/fusions.py), declared there, each with its one definition.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np

from graphspec import OPS


@dataclass(frozen=True)
class Meta:
    """Stands in for a forward value the VJP does not read: only its shape and dtype."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: a kernel is its functions
class Kernel:
    op: str
    forward: Callable[..., np.ndarray]
    vjp: Callable[..., tuple]
    saves_out: bool = False
    saves_inputs: tuple[int, ...] = ()
    residuals: bool = False  # forward returns (output, residuals); vjp takes residuals=...
    draws: Callable[..., np.ndarray] | None = None  # a training step's random draw (module docstring)


KERNELS: dict[str, Kernel] = {}


def kernel(op: str, forward: Callable, vjp: Callable, *, saves: tuple = (), residuals: bool = False,
           draws: Callable | None = None) -> Kernel:
    """Register the kernel of catalogue op ``op``; ``saves`` lists "out" and/or input indices
    the VJP reads; ``residuals`` and ``draws`` (module docstring)."""
    if op not in OPS:
        raise KeyError(f"no graphspec contract for op {op!r}: add it to graphspec/ops.py first")
    if op in KERNELS:
        raise ValueError(f"kernel {op!r} is already registered")
    entry = Kernel(op, forward, vjp, saves_out="out" in saves,
                   saves_inputs=tuple(i for i in saves if isinstance(i, int)), residuals=residuals, draws=draws)
    KERNELS[op] = entry
    return entry


def _recorded(fn: Callable, how: str) -> Callable:
    """``fn`` itself, except that called with a traced array it asks the tracer to record it."""
    @functools.wraps(fn)
    def call(*args):
        for arg in args:
            for item in arg if isinstance(arg, (list, tuple)) else (arg,):  # arrays, or a list of them
                tracer = getattr(item, "tracer", None)  # a traced array (runtime.compiled.trace)
                if tracer is not None:
                    return getattr(tracer, how)(fn, args)
        return fn(*args)
    return call


def routine(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    """Mark ``fn`` (arrays and plain values in, a new array out, nothing written into its
    arguments) as one step a trace records as a single call — for what numpy only does by
    writing into an array, such as a scatter-add (``np.add.at``). Keep routines small: the
    compiled engine cannot plan inside one (it allocates its result on every step)."""
    return _recorded(fn, "routine")


def data_check(fn: Callable[..., None]) -> Callable[..., None]:
    """Mark ``fn`` (arrays in, an exception out when their values are wrong) as a check a
    kernel runs on values: the interpreter calls it; a trace records it as one call of the
    compiled step, since its Python ``if`` cannot be traced."""
    return _recorded(fn, "effect")


_UNBROADCAST: dict[tuple, tuple] = {}  # (gradient shape, operand shape) -> (summed axes, kept shape)


def unbroadcast_plan(grad_shape: tuple[int, ...], shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The axes of a ``grad_shape`` gradient that numpy broadcasting added or stretched to reach
    it from ``shape``, and the shape left after summing them (``shape`` without its stretched 1s).
    The one definition of unbroadcasting: :func:`unbroadcast` (the interpreter) and the compiled
    engine's lowering (one ``np.add.reduce`` into the operand's buffer) both use it."""
    key = (grad_shape, shape)
    plan = _UNBROADCAST.get(key)
    if plan is None:
        extra = len(grad_shape) - len(shape)
        axes = tuple(range(extra)) + tuple(extra + i for i, d in enumerate(shape)
                                           if d == 1 and grad_shape[extra + i] != 1)
        if len(_UNBROADCAST) > 4096:  # a long-lived worker sees many graphs: keep the cache small
            _UNBROADCAST.clear()
        plan = _UNBROADCAST[key] = (axes, tuple(d for k, d in enumerate(grad_shape) if k not in axes))
    return plan


def unbroadcast(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum ``grad`` over the axes numpy broadcasting added or stretched, giving ``shape``."""
    shape = tuple(shape)
    if grad.shape == shape:
        return grad
    axes, _ = unbroadcast_plan(grad.shape, shape)
    return np.add.reduce(grad, axis=axes).reshape(shape)


def reduced_axes(axis, ndim: int) -> tuple[int, ...]:
    """The non-negative axes an ``axis`` attribute (None, int or list) names."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(sorted(a % ndim for a in axes))


# Importing the families fills the table.
from . import conv as _conv, elementwise as _elementwise, losses as _losses, nn as _nn, shape as _shape  # noqa: E402,F401
