"""Fusions: node patterns the compiled engine runs as one kernel.

A fusion replaces the last node of a pattern by a node with the pattern's outer inputs;
the inner nodes then have no consumer and are not run (their values were never needed
for the loss). A fused kernel is a :class:`~runtime.kernels.Kernel` like any other —
numpy ``forward`` and ``vjp``, traced by the compiled engine — listed in :data:`FUSIONS`;
it is the one definition of that pattern's different algorithm.

* ``sigmoid`` then ``bce``: BCE of probabilities becomes BCE of the logits. Its gradient
  is ``sigmoid(z) - y`` instead of ``(a - y) / (a (1 - a))`` times ``a (1 - a)``, and
  no log of a rounded probability is taken. The clip of ``a`` to ``[eps, 1 - eps]`` is
  kept exactly where it matters: ``z`` is clipped to the logits of those bounds, and
  where it was clipped the gradient is zero, as ``bce``'s is. Every ``eps`` in ``(0, 1)`` has
  finite bounds (see :func:`_logit_bounds`); for ``eps >= 1``, ``1 - eps`` is no probability
  and has no logit, so such a ``bce`` is not fused and runs as the interpreter runs it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ..kernels import Kernel
from ..kernels.losses import per_element_grad, reduce
from ..plan import Step

if TYPE_CHECKING:
    from ..plan import Plan


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def _fusable_eps(eps: float) -> bool:
    """Whether bce's clip ``[eps, 1 - eps]`` has logits (:func:`_logit_bounds`) to clip ``z`` to."""
    return eps < 1


def _logit_bounds(eps: float, dtype: np.dtype) -> tuple[float, float]:
    """The logits of bce's clip bounds ``[eps, 1 - eps]``, for ``0 < eps < 1``.

    Each bound is rounded to ``dtype`` first, as the interpreter's clip rounds it, so both
    engines clip at the same probability. When rounding makes a bound 0 or 1 (eps below the
    dtype's resolution: ``1 - 1e-20 == 1.0``; in float32 ``1e-50`` is 0), bce does not clip on
    that side, and a probability that rounds to 0 or 1 there gives it an infinite or NaN loss.
    The fused kernel has the logit, not a rounded probability, so it clips at the exact logit of
    the unrounded bound instead, ``±(log(eps) - log1p(-eps))``: finite for every eps in (0, 1)
    (``1 - eps`` is never formed), and each element's loss stays at most ``-log(eps)``, as bce intends.
    """
    exact = math.log(eps) - math.log1p(-eps)  # logit(eps) = -logit(1 - eps)
    low, high = float(dtype.type(eps)), float(dtype.type(1 - eps))
    return (_logit(low) if 0 < low < 1 else exact,
            _logit(high) if 0 < high < 1 else -exact)


def _sigmoid_bce(z, y, *, eps, reduction):
    low, high = _logit_bounds(eps, z.dtype)
    clipped = np.clip(z, low, high)
    softplus = np.logaddexp(0, clipped)  # log(1 + e^z) = -log(1 - a)
    per_element = softplus - y * clipped  # -(y log a + (1 - y) log(1 - a))
    return reduce(per_element, reduction), (clipped, softplus)


def _sigmoid_bce_vjp(g, out, z, y, *, residuals, eps, reduction):
    clipped, softplus = residuals
    # expm1(-softplus(z)) = -sigmoid(z), accurately for every z: so this is -(sigmoid(z) - y),
    # zero where z was clipped (clipped probabilities have zero gradient), and the sign flip
    # rides on the reduction's weight, which is computed once per seed
    minus_dz = (np.expm1(-softplus) + y) * (clipped == z)
    return minus_dz * -per_element_grad(g, minus_dz.shape, reduction), None


# The fusion's one definition: a kernel that only the compiled engine runs.
SIGMOID_BCE = Kernel("sigmoid+bce", _sigmoid_bce, _sigmoid_bce_vjp, saves_inputs=(0, 1), residuals=True)
FUSIONS = (SIGMOID_BCE,)


def fuse(nodes: list[Step], plan: "Plan") -> list[Step]:
    """``nodes`` with every fusable pattern replaced by one fused :class:`~runtime.plan.Step`."""
    consumers: dict[str, int] = {}
    for n in nodes:
        for name in set(n.inputs):
            consumers[name] = consumers.get(name, 0) + 1
    producer = {n.id: n for n in nodes}
    fused = []
    for n in nodes:
        inner = producer.get(n.inputs[0]) if n.op == "bce" and _fusable_eps(n.attrs["eps"]) else None
        if inner is not None and inner.op == "sigmoid" and consumers[inner.id] == 1 and len(inner.covers) == 1:
            n = Step(n.index, n.id, SIGMOID_BCE.op, SIGMOID_BCE, (inner.inputs[0], n.inputs[1]), n.attrs, (0,),
                     fused_from=inner.covers + n.covers)
        fused.append(n)
    return fused
