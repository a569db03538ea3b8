"""Losses, each fused with what precedes it when that makes it stable (logits, log-softmax)."""

from __future__ import annotations

import numpy as np

from . import data_check, kernel
from .nn import sigmoid


def reduce(per_element: np.ndarray, reduction: str) -> np.ndarray:
    if reduction == "mean":
        return per_element.mean()
    if reduction == "sum":
        return per_element.sum()
    return per_element


def per_element_grad(g: np.ndarray, shape: tuple[int, ...], reduction: str) -> np.ndarray:
    """d(loss)/d(per-element loss) for a reduction."""
    if reduction == "mean":
        return np.broadcast_to(g / max(int(np.prod(shape)), 1), shape)
    if reduction == "sum":
        return np.broadcast_to(g, shape)
    return g


# mse keeps p - t for its VJP (a residual) instead of computing it again
def _mse(p, t, *, reduction):
    d = p - t
    return reduce(d * d, reduction), (d,)


def _mse_vjp(g, out, p, t, *, residuals, reduction):
    (d,) = residuals
    return 2 * d * per_element_grad(g, d.shape, reduction), None


def _bce(a, y, *, eps, reduction):
    p = np.clip(a, eps, 1 - eps)
    return reduce(-(y * np.log(p) + (1 - y) * np.log1p(-p)), reduction)


def _bce_vjp(g, out, a, y, *, eps, reduction):
    p = np.clip(a, eps, 1 - eps)
    inside = (a >= eps) & (a <= 1 - eps)  # clipped probabilities have zero gradient
    return (p - y) / (p * (1 - p)) * inside * per_element_grad(g, a.shape, reduction), None


def _bce_logits(z, y, *, reduction):
    # max(z, 0) - z*y + log(1 + exp(-|z|)): exact, and no exp ever overflows.
    return reduce(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z))), reduction)


def _bce_logits_vjp(g, out, z, y, *, reduction):
    return (sigmoid(z) - y) * per_element_grad(g, z.shape, reduction), None


@data_check
def check_class_indices(labels: np.ndarray, classes: int, what: str = "class label") -> None:
    """Indices (class labels, one_hot's and gather's indices) must lie in 0..classes-1."""
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        bad = labels[(labels < 0) | (labels >= classes)].flat[0]
        noun = "classes" if what == "class label" else "entries"
        raise ValueError(f"{what} {int(bad)} is out of range for {classes} {noun} (0..{classes - 1})")


def _softmax_ce(z, labels, *, reduction):
    """Cross-entropy of softmax(z) against class labels (integers) or probabilities (floats);
    keeps exp(z - max) and its row sums for the VJP, whose softmax is then one division."""
    shifted = z - z.max(axis=-1, keepdims=True)
    exps = np.exp(shifted)
    sums = exps.sum(axis=-1, keepdims=True)
    if labels.dtype.kind in "iu":
        classes = z.shape[-1]
        check_class_indices(labels, classes)
        # each row's logit at its label, picked from the flat array: row * classes + label
        row_starts = np.arange(0, labels.size * classes, classes).reshape(labels.shape)
        picked = np.take(shifted.reshape(-1), labels + row_starts)
        per_example = np.log(sums[..., 0]) - picked
    else:
        per_example = -(labels * (shifted - np.log(sums))).sum(axis=-1)
    return reduce(per_example, reduction), (exps, sums)


def _softmax_ce_vjp(g, out, z, labels, *, residuals, reduction):
    exps, sums = residuals
    p = exps / sums
    if labels.dtype.kind in "iu":
        dz = p - (labels[..., np.newaxis] == np.arange(z.shape[-1]))  # softmax - one_hot(labels)
    else:
        dz = p * labels.sum(axis=-1, keepdims=True) - labels  # softmax - y when rows of y sum to 1
    return dz * per_element_grad(g, z.shape[:-1], reduction)[..., np.newaxis], None


kernel("mse", _mse, _mse_vjp, residuals=True)
kernel("bce", _bce, _bce_vjp, saves=(0, 1))
kernel("bce_with_logits", _bce_logits, _bce_logits_vjp, saves=(0, 1))
kernel("softmax_cross_entropy", _softmax_ce, _softmax_ce_vjp, saves=(1,), residuals=True)


# -- format 1.2: a metric beside the loss whose labels it reads ----------------------------------
def _accuracy(scores, labels, *, threshold):
    if threshold is not None:  # binary: the score's side of the threshold against a 0/1 label
        hits = (scores > threshold) == (labels > 0.5)
        return np.sum(hits, dtype=scores.dtype) / max(hits.size, 1)
    predicted = np.argmax(scores, axis=-1)
    if labels.dtype.kind == "f":  # one-hot rows or probabilities: their most likely class
        labels = np.argmax(labels, axis=-1)
    return np.sum(predicted == labels, dtype=scores.dtype) / max(predicted.size, 1)


kernel("accuracy", _accuracy, lambda g, out, scores, labels, *, threshold: (None, None))
