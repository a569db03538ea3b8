"""Linear algebra, reductions, shape changes and constants."""

from __future__ import annotations

import math

import numpy as np

from . import kernel, reduced_axes, routine
from .losses import check_class_indices


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


# -- format 1.1 ---------------------------------------------------------------------------------
def _extremum(reduce):
    def forward(x, *, axis, keepdims):
        return reduce(x, axis=_axis(axis), keepdims=keepdims)

    def vjp(g, out, x, *, axis, keepdims):
        # the gradient goes to the elements equal to the extremum, shared equally when several are
        axes = reduced_axes(axis, x.ndim)
        if not keepdims:
            out, g = np.expand_dims(out, axes), np.expand_dims(g, axes)
        attains = x == out
        return (g * attains / attains.sum(axis=axes, keepdims=True, dtype=x.dtype),)
    return forward, vjp


def _one_hot(indices, *, depth, dtype):
    check_class_indices(indices, depth)
    return (indices[..., np.newaxis] == np.arange(depth)).astype(dtype)


def _no_gradient(g, out, *inputs, **attrs):
    return (None,) * len(inputs)


kernel("max", *_extremum(np.max), saves=("out", 0))
kernel("min", *_extremum(np.min), saves=("out", 0))
kernel("argmax", lambda x, *, axis, keepdims: np.argmax(x, axis=axis, keepdims=keepdims), _no_gradient)
kernel("one_hot", _one_hot, _no_gradient)
kernel("flatten", lambda x, *, axis: np.reshape(x, (math.prod(x.shape[:axis]), -1)),
       lambda g, out, x, *, axis: (np.reshape(g, x.shape),))
kernel("squeeze", lambda x, *, axes: np.squeeze(x, tuple(axes)),
       lambda g, out, x, *, axes: (np.reshape(g, x.shape),))
kernel("unsqueeze", lambda x, *, axes: np.expand_dims(x, tuple(axes)),
       lambda g, out, x, *, axes: (np.reshape(g, x.shape),))
# the gradient of a broadcast is the engine's unbroadcast of g back to x's shape
kernel("broadcast_to", lambda x, *, shape: np.broadcast_to(x, tuple(shape)).copy(),
       lambda g, out, x, *, shape: (g,))


@routine
def _scatter_add(grad, indices, shape, axis):
    """The gradient of a gather: zeros of the table's ``shape``, with each entry of ``grad`` added
    at its index along ``axis`` (repeated indices add up: np.add.at, unbuffered)."""
    table = np.zeros(shape, grad.dtype)
    k = indices.ndim
    np.add.at(np.moveaxis(table, axis, 0), indices, np.moveaxis(grad, list(range(axis, axis + k)), list(range(k))))
    return table


def _gather(params, indices, *, axis):
    check_class_indices(indices, params.shape[axis], "index")
    return np.take(params, indices, axis=axis)


def _gather_vjp(g, out, params, indices, *, axis):
    axis = axis % params.ndim
    return _scatter_add(g, indices, params.shape, axis), None


def _slices(shape, *, starts, ends, axes):
    index = [slice(None)] * len(shape)
    for start, end, axis in zip(starts, ends, range(len(starts)) if axes is None else axes):
        index[axis] = slice(start, end)
    return tuple(index)


def _slice_vjp(g, out, x, *, starts, ends, axes):
    # zeros around g where x was cut away: np.pad by what each axis lost on each side
    widths = []
    for dim, cut in zip(x.shape, _slices(x.shape, starts=starts, ends=ends, axes=axes)):
        first, stop, _ = cut.indices(dim)
        widths.append((first, dim - stop))
    return (np.pad(g, widths),)


kernel("gather", _gather, _gather_vjp, saves=(1,))
kernel("slice", lambda x, **attrs: x[_slices(x.shape, **attrs)], _slice_vjp)


# -- format 1.2 ---------------------------------------------------------------------------------
def _concat_vjp(g, out, *inputs, axis):
    # each input's gradient is its stretch of g along the axis (a view: no copy)
    axis = axis % g.ndim
    parts, start = [], 0
    for x in inputs:
        end = start + x.shape[axis]
        parts.append(g[(slice(None),) * axis + (slice(start, end),)])
        start = end
    return tuple(parts)


kernel("concat", lambda *inputs, axis: np.concatenate(inputs, axis=axis), _concat_vjp)
