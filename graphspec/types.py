"""Dtypes, symbolic shapes and the shape algebra that op contracts are written in.

A dimension is an ``int`` (known size), a ``str`` (a named symbolic size such as
the batch ``"N"``) or ``None`` (unknown). Two dims *unify* when they can be equal
at run time: a symbol matches any size, and the known size wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np

DTYPES: tuple[str, ...] = ("float32", "float64", "int64", "bool")
FLOAT_DTYPES: tuple[str, ...] = ("float32", "float64")

Dim = Union[int, str, None]
Shape = tuple[Dim, ...]


def numpy_dtype(name: str) -> np.dtype:
    """The little-endian numpy dtype for a format dtype name (the wire byte order)."""
    return np.dtype(name).newbyteorder("<")


@dataclass(frozen=True)
class TensorType:
    """What shape inference knows about a value before anything runs."""

    dtype: str
    shape: Shape

    @property
    def rank(self) -> int:
        return len(self.shape)

    def __str__(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.dtype}[{dims}]"


class ContractViolation(Exception):
    """Raised by an op's type rule; ``where`` is the path below the node (``("inputs", 1)``)."""

    def __init__(self, message: str, where: tuple = (), hint: str | None = None, code: str = "shape_mismatch"):
        super().__init__(message)
        self.message = message
        self.where = where
        self.hint = hint
        self.code = code


def format_shape(shape: Shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def is_known(dim: Dim) -> bool:
    return isinstance(dim, int)


def unify_dims(a: Dim, b: Dim) -> tuple[bool, Dim]:
    """Whether two dims can be equal, and the most specific dim for both."""
    if isinstance(a, int) and isinstance(b, int):
        return a == b, a
    if isinstance(a, int):
        return True, a
    if isinstance(b, int):
        return True, b
    if a is None:
        return True, b
    if b is None or a == b:
        return True, a
    return True, None  # two different symbols may still be equal at run time


def unify_shapes(a: Shape, b: Shape) -> Shape | None:
    """The common shape of two shapes that must be equal, or None if they cannot be."""
    if len(a) != len(b):
        return None
    out = []
    for da, db in zip(a, b):
        ok, d = unify_dims(da, db)
        if not ok:
            return None
        out.append(d)
    return tuple(out)


def broadcast_shapes(*shapes: Shape) -> Shape | None:
    """numpy broadcasting over symbolic shapes, or None when the shapes cannot broadcast."""
    rank = max((len(s) for s in shapes), default=0)
    out: list[Dim] = []
    for axis in range(rank):
        dims = [s[len(s) - rank + axis] for s in shapes if len(s) - rank + axis >= 0]
        result: Dim = 1
        for d in dims:
            if d == 1:
                continue
            if result == 1:
                result = d
                continue
            ok, merged = unify_dims(result, d)
            if not ok:
                return None
            result = merged
        out.append(result)
    return tuple(out)


def normalize_axis(axis: int, rank: int) -> int | None:
    """A non-negative axis, or None when ``axis`` is out of range for ``rank``."""
    if -rank <= axis < rank:
        return axis % rank
    return None


def element_count(shape: Sequence[Dim]) -> int | None:
    """Number of elements, or None when a dim is symbolic."""
    total = 1
    for d in shape:
        if not isinstance(d, int):
            return None
        total *= d
    return total
