"""Linear algebra, reductions, shape changes and constants."""

from __future__ import annotations

import math

import numpy as np

from . import kernel, reduced_axes


def _matmul_vjp(g, out, a, b):
    if a.ndim == 1 and b.ndim == 1:  # a dot product: g is a scalar
        return g * b, g * a
    # Promote 1-D operands the way matmul does, differentiate, then drop the promoted axis;
    # batch dimensions that broadcast are summed by the engine's unbroadcast.
    a2 = a[np.newaxis, :] if a.ndim == 1 else a
    b2 = b[:, np.newaxis] if b.ndim == 1 else b
    if a.ndim == 1:
        g = np.expand_dims(g, -2)
    if b.ndim == 1:
        g = np.expand_dims(g, -1)
    ga = g @ np.swapaxes(b2, -1, -2)
    gb = np.swapaxes(a2, -1, -2) @ g
    if a.ndim == 1:
        ga = ga.squeeze(-2)
    if b.ndim == 1:
        gb = gb.squeeze(-1)
    return ga, gb


def _axis(axis):
    return tuple(axis) if isinstance(axis, list) else axis


def _spread(g, x, axis, keepdims):
    """The gradient of a reduction: g copied back over the reduced axes."""
    axes = reduced_axes(axis, x.ndim)
    if not keepdims:
        g = np.expand_dims(g, axes)
    return np.broadcast_to(g, x.shape)


def _count(x, axis) -> int:
    return math.prod(x.shape[a] for a in reduced_axes(axis, x.ndim))


kernel("matmul", np.matmul, _matmul_vjp, saves=(0, 1))
kernel("sum", lambda x, *, axis, keepdims: np.sum(x, axis=_axis(axis), keepdims=keepdims),
       lambda g, out, x, *, axis, keepdims: (_spread(g, x, axis, keepdims),))
kernel("mean", lambda x, *, axis, keepdims: np.mean(x, axis=_axis(axis), keepdims=keepdims),
       lambda g, out, x, *, axis, keepdims: (_spread(g / _count(x, axis), x, axis, keepdims),))
kernel("reshape", lambda x, *, shape: np.reshape(x, shape),
       lambda g, out, x, *, shape: (np.reshape(g, x.shape),))
kernel("transpose", lambda x, *, perm: np.transpose(x, perm),
       lambda g, out, x, *, perm: (np.transpose(g, None if perm is None else np.argsort(perm).tolist()),))
kernel("constant", lambda *, value: value,
       lambda g, out, *, value: ())
