"""Losses, each fused with what precedes it when that makes it stable (logits, log-softmax)."""

from __future__ import annotations

import numpy as np

from . import kernel
from .nn import log_softmax, sigmoid, softmax


def _reduce(per_element: np.ndarray, reduction: str) -> np.ndarray:
    if reduction == "mean":
        return per_element.mean()
    if reduction == "sum":
        return per_element.sum()
    return per_element


def _per_element_grad(g: np.ndarray, shape: tuple[int, ...], reduction: str) -> np.ndarray:
    """d(loss)/d(per-element loss) for a reduction."""
    if reduction == "mean":
        return np.broadcast_to(g / max(int(np.prod(shape)), 1), shape)
    if reduction == "sum":
        return np.broadcast_to(g, shape)
    return g


def _mse(p, t, *, reduction):
    d = p - t
    return _reduce(d * d, reduction)


def _mse_vjp(g, out, p, t, *, reduction):
    return 2 * (p - t) * _per_element_grad(g, p.shape, reduction), None


def _bce(a, y, *, eps, reduction):
    p = np.clip(a, eps, 1 - eps)
    return _reduce(-(y * np.log(p) + (1 - y) * np.log1p(-p)), reduction)


def _bce_vjp(g, out, a, y, *, eps, reduction):
    p = np.clip(a, eps, 1 - eps)
    inside = (a >= eps) & (a <= 1 - eps)  # clipped probabilities have zero gradient
    return (p - y) / (p * (1 - p)) * inside * _per_element_grad(g, a.shape, reduction), None


def _bce_logits(z, y, *, reduction):
    # max(z, 0) - z*y + log(1 + exp(-|z|)): exact, and no exp ever overflows.
    return _reduce(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z))), reduction)


def _bce_logits_vjp(g, out, z, y, *, reduction):
    return (sigmoid(z) - y) * _per_element_grad(g, z.shape, reduction), None


def _check_labels(labels: np.ndarray, classes: int) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        bad = labels[(labels < 0) | (labels >= classes)].flat[0]
        raise ValueError(f"class label {int(bad)} is out of range for {classes} classes (0..{classes - 1})")


def _softmax_ce(z, labels, *, reduction):
    logp = log_softmax(z, -1)
    if labels.dtype.kind in "iu":
        _check_labels(labels, z.shape[-1])
        per_example = -np.take_along_axis(logp, labels[..., np.newaxis], axis=-1)[..., 0]
    else:
        per_example = -(labels * logp).sum(axis=-1)
    return _reduce(per_example, reduction)


def _softmax_ce_vjp(g, out, z, labels, *, reduction):
    weight = _per_element_grad(g, z.shape[:-1], reduction)[..., np.newaxis]
    p = softmax(z, -1)
    if labels.dtype.kind in "iu":
        dz = p.copy()
        np.put_along_axis(dz, labels[..., np.newaxis], np.take_along_axis(p, labels[..., np.newaxis], -1) - 1, -1)
    else:
        dz = p * labels.sum(axis=-1, keepdims=True) - labels  # softmax - y when rows of y sum to 1
    return dz * weight, None


# -- compiled forms ----------------------------------------------------------------------------
def reduce_into(e, per_element: np.ndarray, out: np.ndarray, reduction: str) -> None:
    """Emit ``out = reduce(per_element)`` exactly as :func:`_reduce` computes it."""
    if reduction == "none":
        e.emit(np.copyto, out, per_element)
        return
    e.emit(np.add.reduce, per_element, None, None, out)
    if reduction == "mean" and per_element.size > 1:  # x / 1 == x exactly
        e.emit(np.divide, out, per_element.size, out)


def scale_by_reduction(e, grad: np.ndarray, g: np.ndarray, shape: tuple[int, ...], reduction: str, *,
                       negate: bool = False) -> None:
    """Emit ``grad *= d(loss)/d(per-element loss)`` (see :func:`_per_element_grad`) in place;
    ``negate`` folds a sign flip into the same multiply."""
    sign = -1 if negate else 1
    if reduction == "mean":
        count = max(int(np.prod(shape)), 1)
        if e.is_seed(g):  # g / count, in the loss's dtype, as the interpreter computes it
            weight = e.seed_constant(lambda seed: np.divide(seed, count) * sign)
        else:
            weight = e.scratch(g.shape, g.dtype)
            e.emit(np.divide, g, count, weight)
            if negate:
                e.emit(np.negative, weight, weight)
    elif e.is_seed(g) and negate:
        weight = e.seed_constant(np.negative)
    elif negate:
        weight = e.scratch(g.shape, g.dtype)
        e.emit(np.negative, g, weight)
    else:
        weight = g
    e.emit(np.multiply, grad, weight.reshape(weight.shape + (1,) * (grad.ndim - weight.ndim)), grad)


def _mse_into(e, out, p, t, *, reduction):
    d = e.state["diff"] = e.buffer(np.broadcast_shapes(p.shape, t.shape), p.dtype)
    e.emit(np.subtract, p, t, d)
    square = e.scratch(d.shape, d.dtype)
    e.emit(np.multiply, d, d, square)
    reduce_into(e, square, out, reduction)


def _mse_vjp_into(e, g, out, p, t, *, wanted, reduction):
    d = e.state["diff"]
    gp = e.grad_for(0, d.shape, d.dtype)
    e.emit(np.multiply, 2, d, gp)
    scale_by_reduction(e, gp, g, d.shape, reduction)
    return gp, None


def _softmax_ce_into(e, out, z, labels, *, reduction):
    if z.ndim != 2 or labels.dtype.kind not in "iu":
        return NotImplemented  # probabilities, or more than one batch axis: the interpreter's kernel
    rows, classes = z.shape
    st = e.state
    shifted = st["shifted"] = e.buffer(z.shape, z.dtype)  # z - max(z): log_softmax without the log-sum
    exps = st["exps"] = e.buffer(z.shape, z.dtype)
    sums = st["sums"] = e.buffer((rows, 1), z.dtype)
    flat = st["flat"] = e.buffer((rows,), np.intp)  # row * classes + label: the picked logits' positions
    row_start = np.arange(rows, dtype=np.intp) * classes
    peak = e.scratch((rows, 1), z.dtype)
    e.emit(_check_labels, labels, classes)
    e.emit(np.maximum.reduce, z, 1, None, peak, True)
    e.emit(np.subtract, z, peak, shifted)
    e.emit(np.exp, shifted, exps)
    e.emit(np.add.reduce, exps, 1, None, sums, True)
    e.emit(np.add, labels, row_start, flat)
    picked = e.scratch((rows,), z.dtype)
    e.emit(np.take, shifted.reshape(-1), flat, None, picked)
    log_sums = e.scratch((rows, 1), z.dtype)
    e.emit(np.log, sums, log_sums)
    per_example = e.scratch((rows,), z.dtype)  # -(shifted[label] - log_sum), the interpreter's order
    e.emit(np.subtract, picked, log_sums.reshape(rows), per_example)
    e.emit(np.negative, per_example, per_example)
    reduce_into(e, per_example, out, reduction)


def _softmax_ce_vjp_into(e, g, out, z, labels, *, wanted, reduction):
    st = e.state
    dz = e.grad_for(0, z.shape, z.dtype)
    e.emit(np.divide, st["exps"], st["sums"], dz)  # softmax(z)
    picked = e.scratch(st["flat"].shape, z.dtype)
    flat_dz = dz.reshape(-1)
    e.emit(np.take, flat_dz, st["flat"], None, picked)
    e.emit(np.subtract, picked, 1, picked)
    e.emit(np.put, flat_dz, st["flat"], picked)
    scale_by_reduction(e, dz, g, z.shape[:-1], reduction)
    return dz, None


kernel("mse", _mse, _mse_vjp, saves=(0, 1), forward_into=_mse_into, vjp_into=_mse_vjp_into)
kernel("bce", _bce, _bce_vjp, saves=(0, 1))
kernel("bce_with_logits", _bce_logits, _bce_logits_vjp, saves=(0, 1))
kernel("softmax_cross_entropy", _softmax_ce, _softmax_ce_vjp, saves=(0, 1),
       forward_into=_softmax_ce_into, vjp_into=_softmax_ce_vjp_into)
