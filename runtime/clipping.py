"""Gradient clipping, one definition for both engines: in place over a list of gradient arrays.

The interpreter passes its per-parameter gradients; the compiled engine passes its flat
gradient arenas, whose values are the true gradients times ``scale`` (the learning rate
plain SGD folds into the backward pass, :meth:`runtime.CompiledStep.run`). Clipping by value
limits each element to ``[-clip_value, clip_value]`` first; clipping by norm then scales every
gradient by ``clip_norm / (norm + 1e-6)`` when the global L2 norm is above ``clip_norm`` —
PyTorch's ``clip_grad_value_`` and ``clip_grad_norm_``.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

NORM_EPS = 1e-6  # as torch.nn.utils.clip_grad_norm_: no division by a zero norm


def global_norm(grads: Sequence[np.ndarray], scale: float = 1.0) -> float:
    """The L2 norm of all of ``grads`` together (divided by ``scale``), summed in float64."""
    if len(grads) == 1:  # the compiled engine's usual case: one flat arena
        flat = grads[0].reshape(-1)
        return math.sqrt(float(np.dot(flat, flat))) / scale
    total = math.fsum(float(np.dot(g.reshape(-1), g.reshape(-1))) for g in grads)
    return math.sqrt(total) / scale


def clip(grads: Sequence[np.ndarray], *, clip_norm: float | None = None, clip_value: float | None = None,
         scale: float = 1.0) -> float:
    """Clip ``grads`` in place; returns their global norm before clipping (divided by ``scale``)."""
    norm = global_norm(grads, scale)
    if clip_value is not None:
        bound = clip_value * scale
        for g in grads:
            np.clip(g, -bound, bound, out=g)
    if clip_norm is not None:
        clipped = global_norm(grads, scale) if clip_value is not None else norm
        if clipped > clip_norm:
            factor = clip_norm / (clipped + NORM_EPS)
            for g in grads:
                np.multiply(g, g.dtype.type(factor), out=g)
    return norm
