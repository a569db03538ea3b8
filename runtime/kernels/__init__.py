"""The kernel table: one entry per op of the graphspec catalogue, forward and VJP side by side.

A kernel is two functions over numpy arrays:

    forward(*inputs, **attrs) -> output
    vjp(g, out, *inputs, **attrs) -> one gradient per input (None where the input takes none)

``g`` is d(loss)/d(output). The engine sums every gradient back to its input's shape
with :func:`unbroadcast`, so a broadcasting op's VJP can return the broadcast shape.
``saves`` names which forward values the VJP reads ("out" and/or input indices); the
engine keeps only those, and passes a :class:`Meta` (shape and dtype) for the rest.
Adding an op: one contract in graphspec/ops.py, one ``kernel(...)`` entry here.
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


KERNELS: dict[str, Kernel] = {}


def kernel(op: str, forward: Callable, vjp: Callable, *, saves: tuple = ()) -> Kernel:
    """Register the kernel of catalogue op ``op``; ``saves`` lists "out" and/or input indices."""
    if op not in OPS:
        raise KeyError(f"no graphspec contract for op {op!r}: add it to graphspec/ops.py first")
    if op in KERNELS:
        raise ValueError(f"kernel {op!r} is already registered")
    entry = Kernel(op, forward, vjp, saves_out="out" in saves,
                   saves_inputs=tuple(i for i in saves if isinstance(i, int)))
    KERNELS[op] = entry
    return entry


def unbroadcast(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum ``grad`` over the axes numpy broadcasting added or stretched, giving ``shape``."""
    if grad.shape == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, d in enumerate(shape) if d == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad.reshape(shape)


def reduced_axes(axis, ndim: int) -> tuple[int, ...]:
    """The non-negative axes an ``axis`` attribute (None, int or list) names."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(sorted(a % ndim for a in axes))


# Importing the families fills the table.
from . import elementwise as _elementwise, losses as _losses, nn as _nn, shape as _shape  # noqa: E402,F401
