"""Linear algebra, reductions, shape changes and constants."""

from __future__ import annotations

import math

import numpy as np

from . import kernel, reduced_axes, ufunc_into


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


def _matmul_vjp_into(e, g, out, a, b, *, wanted):
    if a.ndim != 2 or b.ndim != 2:
        return NotImplemented  # vectors and batches: the interpreter's VJP, adapted
    ga = gb = None
    if wanted[0]:  # skipped for the graph's inputs: nobody needs d(loss)/d(x)
        ga = e.grad_for(0, a.shape, a.dtype)
        e.emit(np.matmul, g, b.T, ga)
    if wanted[1]:
        gb = e.grad_for(1, b.shape, b.dtype)
        e.emit(np.matmul, a.T, g, gb)
    return ga, gb


def _count(x, axis) -> int:
    return math.prod(x.shape[a] for a in reduced_axes(axis, x.ndim))


def _reduce_into(mean: bool):
    def forward_into(e, out, x, *, axis, keepdims):
        # np.mean is exactly this: np.add.reduce, then a division by the count
        e.emit(np.add.reduce, x, reduced_axes(axis, x.ndim), None, out, keepdims)
        if mean:
            e.emit(np.divide, out, _count(x, axis), out)

    def vjp_into(e, g, out, x, *, wanted, axis, keepdims):
        gx = e.grad_for(0, x.shape, x.dtype)
        spread = g.reshape([1 if a in reduced_axes(axis, x.ndim) else d for a, d in enumerate(x.shape)])
        if mean:
            e.emit(np.divide, spread, _count(x, axis), gx)
        else:
            e.emit(np.copyto, gx, spread)
        return (gx,)
    return forward_into, vjp_into


def _view_into(view, grad_view):
    """forward_into/vjp_into for an op that only rearranges elements: copy through a numpy view."""
    def forward_into(e, out, x, **attrs):
        e.emit(np.copyto, out, view(x, **attrs))

    def vjp_into(e, g, out, x, *, wanted, **attrs):
        gx = e.grad_for(0, x.shape, x.dtype)
        e.emit(np.copyto, gx, grad_view(g, x, **attrs))
        return (gx,)
    return forward_into, vjp_into


def _reshape_view(x, *, shape):
    view = x.reshape(shape)
    if not np.shares_memory(view, x):  # a copy made now would be stale at run time
        raise AssertionError("compiled buffers are contiguous: reshape must give a view")
    return view


_sum_into, _sum_vjp_into = _reduce_into(mean=False)
_mean_into, _mean_vjp_into = _reduce_into(mean=True)
_reshape_into, _reshape_vjp_into = _view_into(_reshape_view, lambda g, x, *, shape: _reshape_view(g, shape=x.shape))
_transpose_into, _transpose_vjp_into = _view_into(
    lambda x, *, perm: np.transpose(x, perm),
    lambda g, x, *, perm: np.transpose(g, None if perm is None else np.argsort(perm)))

kernel("matmul", np.matmul, _matmul_vjp, saves=(0, 1),
       forward_into=ufunc_into(np.matmul), vjp_into=_matmul_vjp_into)
kernel("sum", lambda x, *, axis, keepdims: np.sum(x, axis=_axis(axis), keepdims=keepdims),
       lambda g, out, x, *, axis, keepdims: (_spread(g, x, axis, keepdims),),
       forward_into=_sum_into, vjp_into=_sum_vjp_into)
kernel("mean", lambda x, *, axis, keepdims: np.mean(x, axis=_axis(axis), keepdims=keepdims),
       lambda g, out, x, *, axis, keepdims: (_spread(g / _count(x, axis), x, axis, keepdims),),
       forward_into=_mean_into, vjp_into=_mean_vjp_into)
kernel("reshape", lambda x, *, shape: np.reshape(x, shape),
       lambda g, out, x, *, shape: (np.reshape(g, x.shape),),
       forward_into=_reshape_into, vjp_into=_reshape_vjp_into)
kernel("transpose", lambda x, *, perm: np.transpose(x, perm),
       lambda g, out, x, *, perm: (np.transpose(g, None if perm is None else np.argsort(perm)),),
       forward_into=_transpose_into, vjp_into=_transpose_vjp_into)
kernel("constant", lambda *, value: value,
       lambda g, out, *, value: ())
