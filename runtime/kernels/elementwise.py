"""Elementwise arithmetic. Broadcasting is undone by the engine (unbroadcast), not here."""

from __future__ import annotations

import numpy as np

from . import kernel

kernel("add", lambda a, b: a + b,
       lambda g, out, a, b: (g, g))
kernel("sub", lambda a, b: a - b,
       lambda g, out, a, b: (g, -g))
kernel("mul", lambda a, b: a * b,
       lambda g, out, a, b: (g * b, g * a), saves=(0, 1))
# d(a/b)/db = -a/b^2 = -out/b: the seed's "1/x" node passes -1/x^2 this way.
kernel("div", lambda a, b: a / b,
       lambda g, out, a, b: (g / b, -g * out / b), saves=("out", 1))
kernel("neg", lambda x: -x,
       lambda g, out, x: (-g,))
kernel("pow", lambda x, *, exponent: x ** exponent,
       lambda g, out, x, *, exponent: (g * exponent * x ** (exponent - 1),), saves=(0,))
kernel("exp", np.exp,
       lambda g, out, x: (g * out,), saves=("out",))
kernel("log", np.log,
       lambda g, out, x: (g / x,), saves=(0,))
kernel("sqrt", np.sqrt,
       lambda g, out, x: (g / (2 * out),), saves=("out",))
kernel("abs", np.abs,
       lambda g, out, x: (g * np.sign(x),), saves=(0,))


# -- format 1.1 ---------------------------------------------------------------------------------
def _clip(x, *, min, max):  # noqa: A002 - the attributes' names
    if min is not None:
        x = np.maximum(x, min)
    if max is not None:
        x = np.minimum(x, max)
    return x


def _clip_vjp(g, out, x, *, min, max):  # noqa: A002
    # 1 inside [min, max], bounds included; 0 where the value was clipped (and where x is NaN)
    if min is not None:
        g = g * (x >= min)
    if max is not None:
        g = g * (x <= max)
    return (g,)


kernel("log1p", np.log1p,
       lambda g, out, x: (g / (1 + x),), saves=(0,))
# ties go to a: a >= b takes the gradient for maximum, a <= b for minimum
kernel("maximum", np.maximum,
       lambda g, out, a, b: (g * (a >= b), g * (a < b)), saves=(0, 1))
kernel("minimum", np.minimum,
       lambda g, out, a, b: (g * (a <= b), g * (a > b)), saves=(0, 1))
kernel("where", np.where,
       lambda g, out, condition, a, b: (None, g * condition, g * ~condition), saves=(0,))
kernel("clip", _clip, _clip_vjp, saves=(0,))
