"""The kernel table: one entry per op of the graphspec catalogue, forward and VJP side by side.

A kernel is two functions over numpy arrays:

    forward(*inputs, **attrs) -> output
    vjp(g, out, *inputs, **attrs) -> one gradient per input (None where the input takes none)

``g`` is d(loss)/d(output). The engine sums every gradient back to its input's shape
with :func:`unbroadcast`, so a broadcasting op's VJP can return the broadcast shape.
``saves`` names which forward values the VJP reads ("out" and/or input indices); the
engine keeps only those, and passes a :class:`Meta` (shape and dtype) for the rest.
Adding an op is the list in docs/runtime.md ("Adding an op"): a contract in
graphspec/ops.py (with a format version bump), one ``kernel(...)`` entry here, a sample in
tests/op_samples.py, the generated docs; the suite fails until all are done.

**Compiled form (optional).** The compiled engine (:mod:`runtime.compiled`) runs a
training step as a flat list of numpy calls writing into buffers it allocated once. A
kernel may give, beside ``forward`` and ``vjp``, the same two functions in that form:

    forward_into(e, out, *inputs, **attrs)          emit calls that write the op into ``out``
    vjp_into(e, g, out, *inputs, wanted, **attrs)   emit calls for each wanted input's gradient;
                                                    return one array (or None) per input

``e`` is the :class:`~runtime.compiled.emit.Emitter`: ``e.emit(fn, *args)`` appends a call,
``e.grad_for(i, shape)`` gives the array to write input ``i``'s gradient into,
``e.scratch(shape, dtype)`` a temporary valid only inside this one function's calls.
``inplace=True`` promises that ``forward_into`` is correct when ``out`` is one of the
inputs (a single elementwise ufunc), so the engine may reuse a dead input's buffer. An op
without these runs through ``forward``/``vjp`` inside the compiled step (correct, slower).
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class Kernel:
    op: str
    forward: Callable[..., np.ndarray]
    vjp: Callable[..., tuple]
    saves_out: bool = False
    saves_inputs: tuple[int, ...] = ()
    forward_into: Callable[..., None] | None = None
    vjp_into: Callable[..., tuple] | None = None
    inplace: bool = False


KERNELS: dict[str, Kernel] = {}


def kernel(op: str, forward: Callable, vjp: Callable, *, saves: tuple = (), forward_into: Callable | None = None,
           vjp_into: Callable | None = None, inplace: bool = False) -> Kernel:
    """Register the kernel of catalogue op ``op``; ``saves`` lists "out" and/or input indices;
    ``forward_into``/``vjp_into``/``inplace`` are its optional compiled form (module docstring)."""
    if op not in OPS:
        raise KeyError(f"no graphspec contract for op {op!r}: add it to graphspec/ops.py first")
    if op in KERNELS:
        raise ValueError(f"kernel {op!r} is already registered")
    if (forward_into is None) != (vjp_into is None):
        raise ValueError(f"kernel {op!r}: give both forward_into and vjp_into, or neither")
    entry = Kernel(op, forward, vjp, saves_out="out" in saves,
                   saves_inputs=tuple(i for i in saves if isinstance(i, int)),
                   forward_into=forward_into, vjp_into=vjp_into, inplace=inplace)
    KERNELS[op] = entry
    return entry


def ufunc_into(ufunc: Callable) -> Callable:
    """``forward_into`` for an op that is exactly one numpy ufunc of its inputs."""
    def forward_into(e, out, *inputs):
        e.emit(ufunc, *inputs, out)
    return forward_into


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
from . import elementwise as _elementwise, losses as _losses, nn as _nn, shape as _shape  # noqa: E402,F401
