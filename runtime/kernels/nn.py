"""Activations, in forms that neither overflow nor lose precision for large |x|."""

from __future__ import annotations

import numpy as np

from . import kernel, ufunc_into


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


def _sigmoid_into(e, out, x):
    # 1 / (1 + exp(-x)): exp overflowing to inf for very negative x gives exactly 0, as the
    # interpreter's form does to within an ulp; and each call only reads ``out`` after the first.
    e.emit(np.negative, x, out)
    e.emit(np.exp, out, out)
    e.emit(np.add, out, 1, out)
    e.emit(np.reciprocal, out, out)


def _sigmoid_vjp_into(e, g, out, x, *, wanted):
    gx = e.grad_for(0, g.shape, g.dtype, reuse=g)
    s = e.scratch(out.shape, out.dtype)
    e.emit(np.multiply, g, out, gx)
    e.emit(np.subtract, 1, out, s)
    e.emit(np.multiply, gx, s, gx)
    return (gx,)


def _tanh_vjp_into(e, g, out, x, *, wanted):
    gx = e.grad_for(0, g.shape, g.dtype, reuse=g)
    s = e.scratch(out.shape, out.dtype)
    e.emit(np.multiply, out, out, s)
    e.emit(np.subtract, 1, s, s)
    e.emit(np.multiply, g, s, gx)
    return (gx,)


def _relu_vjp_into(e, g, out, x, *, wanted):
    gx = e.grad_for(0, g.shape, g.dtype, reuse=g)
    positive = e.scratch(out.shape, bool)
    e.emit(np.greater, out, 0, positive)
    e.emit(np.multiply, g, positive, gx)
    return (gx,)


kernel("sigmoid", sigmoid,
       lambda g, out, x: (g * out * (1 - out),), saves=("out",),
       forward_into=_sigmoid_into, vjp_into=_sigmoid_vjp_into, inplace=True)
kernel("tanh", np.tanh,
       lambda g, out, x: (g * (1 - out * out),), saves=("out",),
       forward_into=ufunc_into(np.tanh), vjp_into=_tanh_vjp_into, inplace=True)
# relu's output is positive exactly where its input is, so the VJP reads the output and
# the input's buffer is free for the output to overwrite.
kernel("relu", lambda x: np.maximum(x, 0),
       lambda g, out, x: (g * (out > 0),), saves=("out",),
       forward_into=lambda e, out, x: e.emit(np.maximum, x, 0, out=out), vjp_into=_relu_vjp_into, inplace=True)
kernel("softmax", lambda x, *, axis: softmax(x, axis),
       lambda g, out, x, *, axis: (out * (g - (g * out).sum(axis=axis, keepdims=True)),), saves=("out",))
kernel("log_softmax", lambda x, *, axis: log_softmax(x, axis),
       lambda g, out, x, *, axis: (g - np.exp(out) * g.sum(axis=axis, keepdims=True),), saves=("out",))
