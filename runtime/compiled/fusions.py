"""Fusions: node patterns the compiled engine runs as one kernel.

A fusion replaces the last node of a pattern by a node with the pattern's outer inputs;
the inner nodes then have no consumer and are not run (their values were never needed
for the loss). Each fused kernel is written beside the plain ones it replaces, as they
are: ``forward_into`` and ``vjp_into``.

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
from ..kernels.losses import reduce_into, scale_by_reduction
from ..plan import Step

if TYPE_CHECKING:
    from ..plan import Plan


# np.clip's ufunc itself (np.clip is a Python wrapper around it); NaN stays NaN, as in np.clip
_CLIP = (np._core.umath if hasattr(np, "_core") else np.core.umath).clip


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


def _sigmoid_bce_into(e, out, z, y, *, eps, reduction):
    low, high = _logit_bounds(eps, z.dtype)
    clipped = e.state["clipped"] = e.buffer(z.shape, z.dtype)
    softplus = e.state["softplus"] = e.buffer(z.shape, z.dtype)  # log(1 + e^z) = -log(1 - a)
    e.emit(_CLIP, z, low, high, clipped)
    e.emit(np.logaddexp, 0, clipped, softplus)
    per_element = e.scratch(np.broadcast_shapes(z.shape, y.shape), z.dtype)
    yz = e.scratch(per_element.shape, z.dtype)
    e.emit(np.multiply, y, clipped, yz)
    e.emit(np.subtract, softplus, yz, per_element)  # -(y log a + (1 - y) log(1 - a))
    reduce_into(e, per_element, out, reduction)


def _sigmoid_bce_vjp_into(e, g, out, z, y, *, wanted, eps, reduction):
    clipped, softplus = e.state["clipped"], e.state["softplus"]
    shape = np.broadcast_shapes(z.shape, y.shape)
    dz = e.grad_for(0, shape, z.dtype)
    # expm1(-softplus(z)) = -sigmoid(z), accurately for every z; so dz = -(sigmoid(z) - y) until the
    # scaling below flips the sign back
    e.emit(np.negative, softplus, dz)
    e.emit(np.expm1, dz, dz)
    e.emit(np.add, dz, y, dz)
    inside = e.scratch(z.shape, bool)
    e.emit(np.equal, clipped, z, inside)  # clipped probabilities have zero gradient
    e.emit(np.multiply, dz, inside, dz)
    scale_by_reduction(e, dz, g, shape, reduction, negate=True)
    return dz, None


def _compiled_only(*args, **kwargs):
    raise NotImplementedError("a fused kernel exists only in compiled form (runtime/compiled/fusions.py)")


# The fusion's one definition: a kernel with only a compiled form (forward_into, vjp_into).
SIGMOID_BCE = Kernel("sigmoid+bce", _compiled_only, _compiled_only, saves_inputs=(0, 1),
                     forward_into=_sigmoid_bce_into, vjp_into=_sigmoid_bce_vjp_into)


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
