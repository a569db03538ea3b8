"""Activations, in forms that neither overflow nor lose precision for large |x|."""

from __future__ import annotations

import numpy as np

from . import kernel


def sigmoid(x: np.ndarray) -> np.ndarray:
    # exp(-|x|) never overflows; each branch is the accurate form on its side of 0.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


kernel("sigmoid", sigmoid,
       lambda g, out, x: (g * out * (1 - out),), saves=("out",))
kernel("tanh", np.tanh,
       lambda g, out, x: (g * (1 - out * out),), saves=("out",))
kernel("relu", lambda x: np.maximum(x, 0),
       lambda g, out, x: (g * (x > 0),), saves=(0,))
kernel("softmax", lambda x, *, axis: softmax(x, axis),
       lambda g, out, x, *, axis: (out * (g - (g * out).sum(axis=axis, keepdims=True)),), saves=("out",))
kernel("log_softmax", lambda x, *, axis: log_softmax(x, axis),
       lambda g, out, x, *, axis: (g - np.exp(out) * g.sum(axis=axis, keepdims=True),), saves=("out",))
