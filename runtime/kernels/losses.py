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


kernel("mse", _mse, _mse_vjp, saves=(0, 1))
kernel("bce", _bce, _bce_vjp, saves=(0, 1))
kernel("bce_with_logits", _bce_logits, _bce_logits_vjp, saves=(0, 1))
kernel("softmax_cross_entropy", _softmax_ce, _softmax_ce_vjp, saves=(0, 1))
