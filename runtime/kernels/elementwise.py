"""Elementwise arithmetic. Broadcasting is undone by the engine (unbroadcast), not here.

Each entry: forward and VJP (the interpreter's), then the same two as numpy calls into
preallocated arrays (the compiled engine's; see ``runtime.kernels``).
"""

from __future__ import annotations

import numpy as np

from . import kernel, ufunc_into


def _sub_vjp_into(e, g, out, a, b, *, wanted):
    gb = None
    if wanted[1]:
        gb = e.grad_for(1, g.shape, g.dtype)
        e.emit(np.negative, g, gb)
    return g, gb


def _mul_vjp_into(e, g, out, a, b, *, wanted):
    ga = gb = None
    if wanted[0]:
        ga = e.grad_for(0, g.shape, g.dtype)
        e.emit(np.multiply, g, b, ga)
    if wanted[1]:
        gb = e.grad_for(1, g.shape, g.dtype)
        e.emit(np.multiply, g, a, gb)
    return ga, gb


def _div_vjp_into(e, g, out, a, b, *, wanted):
    ga = gb = None
    if wanted[0]:
        ga = e.grad_for(0, g.shape, g.dtype)
        e.emit(np.divide, g, b, ga)
    if wanted[1]:  # -g * out / b, in the interpreter's order
        gb = e.grad_for(1, g.shape, g.dtype)
        e.emit(np.negative, g, gb)
        e.emit(np.multiply, gb, out, gb)
        e.emit(np.divide, gb, b, gb)
    return ga, gb


def _unary_into(fn):
    """vjp_into for a unary op: ``fn(e, g, out, x, gx)`` writes the gradient into ``gx``,
    which may be ``g`` itself when nothing else reads it."""
    def vjp_into(e, g, out, x, *, wanted, **attrs):
        gx = e.grad_for(0, g.shape, g.dtype, reuse=g)
        fn(e, g, out, x, gx, **attrs)
        return (gx,)
    return vjp_into


def _pow_vjp(e, g, out, x, gx, *, exponent):
    s = e.scratch(x.shape, x.dtype)
    e.emit(np.multiply, g, exponent, gx)
    e.emit(np.power, x, exponent - 1, s)
    e.emit(np.multiply, gx, s, gx)


def _sqrt_vjp(e, g, out, x, gx):
    s = e.scratch(out.shape, out.dtype)
    e.emit(np.multiply, 2, out, s)
    e.emit(np.divide, g, s, gx)


def _abs_vjp(e, g, out, x, gx):
    s = e.scratch(x.shape, x.dtype)
    e.emit(np.sign, x, s)
    e.emit(np.multiply, g, s, gx)


kernel("add", lambda a, b: a + b,
       lambda g, out, a, b: (g, g),
       forward_into=ufunc_into(np.add), vjp_into=lambda e, g, out, a, b, *, wanted: (g, g), inplace=True)
kernel("sub", lambda a, b: a - b,
       lambda g, out, a, b: (g, -g),
       forward_into=ufunc_into(np.subtract), vjp_into=_sub_vjp_into, inplace=True)
kernel("mul", lambda a, b: a * b,
       lambda g, out, a, b: (g * b, g * a), saves=(0, 1),
       forward_into=ufunc_into(np.multiply), vjp_into=_mul_vjp_into, inplace=True)
# d(a/b)/db = -a/b^2 = -out/b: the seed's "1/x" node passes -1/x^2 this way.
kernel("div", lambda a, b: a / b,
       lambda g, out, a, b: (g / b, -g * out / b), saves=("out", 1),
       forward_into=ufunc_into(np.divide), vjp_into=_div_vjp_into, inplace=True)
kernel("neg", lambda x: -x,
       lambda g, out, x: (-g,),
       forward_into=ufunc_into(np.negative), inplace=True,
       vjp_into=_unary_into(lambda e, g, out, x, gx: e.emit(np.negative, g, gx)))
kernel("pow", lambda x, *, exponent: x ** exponent,
       lambda g, out, x, *, exponent: (g * exponent * x ** (exponent - 1),), saves=(0,),
       forward_into=lambda e, out, x, *, exponent: e.emit(np.power, x, exponent, out), inplace=True,
       vjp_into=_unary_into(_pow_vjp))
kernel("exp", np.exp,
       lambda g, out, x: (g * out,), saves=("out",),
       forward_into=ufunc_into(np.exp), inplace=True,
       vjp_into=_unary_into(lambda e, g, out, x, gx: e.emit(np.multiply, g, out, gx)))
kernel("log", np.log,
       lambda g, out, x: (g / x,), saves=(0,),
       forward_into=ufunc_into(np.log), inplace=True,
       vjp_into=_unary_into(lambda e, g, out, x, gx: e.emit(np.divide, g, x, gx)))
kernel("sqrt", np.sqrt,
       lambda g, out, x: (g / (2 * out),), saves=("out",),
       forward_into=ufunc_into(np.sqrt), inplace=True, vjp_into=_unary_into(_sqrt_vjp))
kernel("abs", np.abs,
       lambda g, out, x: (g * np.sign(x),), saves=(0,),
       forward_into=ufunc_into(np.abs), inplace=True, vjp_into=_unary_into(_abs_vjp))
