"""Activations, in forms whose results neither overflow nor lose precision for large |x|."""

from __future__ import annotations

import math

import numpy as np

from . import kernel


def sigmoid(x: np.ndarray) -> np.ndarray:
    # e^min(x,0) / (1 + e^-|x|) is 1/(1 + e^-x) for x >= 0 and e^x/(1 + e^x) for x < 0: each the
    # accurate form on its side of 0, no exp of a positive number (nothing overflows), and no
    # branch, so the compiled engine runs the same seven calls.
    return np.exp(np.minimum(x, 0)) / (1 + np.exp(-np.abs(x)))


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
# relu's output is positive exactly where its input is, so the VJP reads the output and
# the input's buffer is free for the output to overwrite.
kernel("relu", lambda x: np.maximum(x, 0),
       lambda g, out, x: (g * (out > 0),), saves=("out",))
kernel("softmax", lambda x, *, axis: softmax(x, axis),
       lambda g, out, x, *, axis: (out * (g - (g * out).sum(axis=axis, keepdims=True)),), saves=("out",))
kernel("log_softmax", lambda x, *, axis: log_softmax(x, axis),
       lambda g, out, x, *, axis: (g - np.exp(out) * g.sum(axis=axis, keepdims=True),), saves=("out",))


# -- format 1.1 ---------------------------------------------------------------------------------
def _leaky_relu_vjp(g, out, x, *, alpha):
    slope = (x > 0) + x.dtype.type(alpha) * (x <= 0)  # exactly 1 or alpha, in x's dtype
    return (g * slope,)


kernel("softplus", lambda x: np.logaddexp(0, x),
       lambda g, out, x: (g * sigmoid(x),), saves=(0,))
# max(x, 0) + alpha * min(x, 0): x above 0, alpha * x below, each exactly
kernel("leaky_relu", lambda x, *, alpha: np.maximum(x, 0) + alpha * np.minimum(x, 0), _leaky_relu_vjp, saves=(0,))


def _layer_norm(x, scale, bias, *, eps):
    centred = x - x.mean(axis=-1, keepdims=True)
    inverse = 1 / np.sqrt((centred * centred).mean(axis=-1, keepdims=True) + eps)
    normalized = centred * inverse
    return normalized * scale + bias, (normalized, inverse)


def _layer_norm_vjp(g, out, x, scale, bias, *, residuals, eps):
    normalized, inverse = residuals
    d_normalized = g * scale
    # through the mean and the variance: the gradient's mean and its projection on x-hat come off
    dx = inverse * (d_normalized - d_normalized.mean(axis=-1, keepdims=True)
                    - normalized * (d_normalized * normalized).mean(axis=-1, keepdims=True))
    return dx, g * normalized, g  # scale's and bias's are summed over the leading axes by the engine


kernel("layer_norm", _layer_norm, _layer_norm_vjp, saves=(1,), residuals=True)


_GELU_C = math.sqrt(2 / math.pi)


def _gelu(x):
    inner = _GELU_C * (x + 0.044715 * x * x * x)
    return 0.5 * x * (1 + np.tanh(inner)), (np.tanh(inner),)


def _gelu_vjp(g, out, x, *, residuals):
    (t,) = residuals
    # d/dx of 0.5 x (1 + t), t = tanh(c (x + 0.044715 x^3))
    slope = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _GELU_C * (1 + 3 * 0.044715 * x * x)
    return (g * slope,)


kernel("gelu", _gelu, _gelu_vjp, saves=(0,), residuals=True)


# -- format 1.2 ---------------------------------------------------------------------------------
def _keep_scale(rng, shape, dtype, *, rate):
    """Dropout's draw: 1 / (1 - rate) where an element is kept, 0 where it is dropped, so the
    forward pass and the VJP are one multiplication each."""
    return (rng.random(shape, dtype=dtype) >= rate) * dtype.type(1 / (1 - rate))


# keep is None outside training: dropout is x itself there, and so is its gradient (a draw is
# always passed to the VJP: it needs no "saves")
kernel("dropout", lambda x, keep, *, rate: x if keep is None else x * keep,
       lambda g, out, x, keep, *, rate: (g if keep is None else g * keep,), draws=_keep_scale)
