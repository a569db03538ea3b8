"""Tracing: the compiled engine runs each kernel's own numpy code, recorded once per set of shapes.

A kernel is written once, as plain numpy (:mod:`runtime.kernels`). To compile it, the
lowering calls the kernel's ``forward`` (or ``vjp``) with :class:`Traced` arrays in place of
the real ones. Each numpy call a traced array takes part in — a ufunc through
``__array_ufunc__``, anything else through ``__array_function__``, the operators and the
few array methods kernels use — is run on zero-filled stand-ins of the same shapes (so
numpy itself says every result's shape and dtype) and recorded as one
:class:`~.template.Instruction`. The recording is a :class:`~.template.Template`: a small program over numbered
slots (the kernel's arguments, then each computed value) that depends only on the
arguments' shapes, dtypes and layouts, so a network of 64 identical layers is traced once
and instantiated 64 times.

Instantiating a template (:meth:`.template.Template.instantiate`) binds its slots to real buffers and
appends one ``(function, arguments)`` pair per instruction to the tape, each writing into
its buffer with ``out=``. That is where the buffer planning happens:

* **views** (``reshape``, ``transpose``, ``x[..., None]``, ``broadcast_to``) are not
  instructions: they are made once, on the bound buffers, and read by the instructions;
* **in-place chains**: an elementwise ufunc whose operand is a temporary that dies there
  writes over it, so ``1 / (1 + exp(-x))`` is four calls into one buffer;
* **targets**: a kernel's result is written straight where the engine wants it (a
  parameter's gradient array, a dead input's buffer, the incoming gradient when nothing else
  reads it), from the first call of its chain on which that is safe;
* **temporaries** nothing returns come from the emitter's scratch pool;
* **dead code**: calls that only feed results the engine does not want (the gradient of a
  graph input, say) are dropped;
* **static values**: calls that read only the backward pass's seed and constants (``g / N``
  for a mean loss) go to the *seed tape*, run when the seed changes, not on every step.

What cannot be traced — a Python ``if`` on a value, writing into an argument, a numpy
function returning several arrays — raises :class:`TraceError`, and the lowering runs that
node through its plain ``forward``/``vjp`` instead (correct, slower). Value checks that
must run on every step are marked :func:`runtime.kernels.data_check` and recorded as calls.

This module is the recording (past 300 lines because a stand-in array must answer every
part of numpy's surface a kernel may touch, or refuse it with a reason); the planning and
binding are :mod:`.template`'s.
"""

from __future__ import annotations

import operator
from typing import Callable, Sequence

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

from ..kernels import Meta
from .template import ASSIGN, COPY, EFFECT, OUT, REDUCE, UFUNC, Instruction, Template, View, SlotRef


class TraceError(Exception):
    """A kernel did something a trace cannot record (the message says what)."""


class PromotionError(TraceError):
    """A kernel turned float32 into float64: a bug in the kernel, not a limit of tracing."""


_REDUCTIONS = {np.sum: np.add, np.prod: np.multiply, np.max: np.maximum, np.min: np.minimum,
               np.amax: np.maximum, np.amin: np.minimum}
_MUTATING = {np.put, np.put_along_axis, np.copyto, np.place, np.putmask, np.fill_diagonal}
_VIEW_METHODS = {np.swapaxes: np.ndarray.swapaxes, np.transpose: np.ndarray.transpose, np.reshape: np.ndarray.reshape,
                 np.squeeze: np.ndarray.squeeze}
_WITH_OUT = {np.take, np.dot, np.cumsum, np.cumprod, np.concatenate}  # numpy functions with an out= argument
_CLIP = (np._core.umath if hasattr(np, "_core") else np.core.umath).clip  # np.clip's ufunc


def _as_method(func):
    def method(self, *args, **kwargs):
        return func(self, *args, **kwargs)
    method.__name__ = func.__name__
    return method


class Traced(NDArrayOperatorsMixin):
    """Stands in for an array while a kernel is traced; numpy calls on it are recorded."""

    __slots__ = ("tracer", "ref", "value")
    __array_priority__ = 1000

    def __init__(self, tracer: "Tracer", ref, value: np.ndarray):
        self.tracer, self.ref, self.value = tracer, ref, value

    # -- numpy's two dispatch protocols ---------------------------------------------------
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        return self.tracer.ufunc(ufunc, method, inputs, kwargs)

    def __array_function__(self, func, types, args, kwargs):
        return self.tracer.function(func, args, kwargs)

    # -- what a kernel reads of an array ----------------------------------------------------
    shape = property(lambda self: self.value.shape)
    dtype = property(lambda self: self.value.dtype)
    ndim = property(lambda self: self.value.ndim)
    size = property(lambda self: self.value.size)
    T = property(lambda self: np.transpose(self))

    def __len__(self) -> int:
        return len(self.value)

    def __getitem__(self, index):
        return self.tracer.function(operator.getitem, (self, index), {})

    def reshape(self, *shape, **kwargs):
        return np.reshape(self, shape[0] if len(shape) == 1 else shape, **kwargs)

    def transpose(self, *axes):
        return np.transpose(self, (axes[0] if len(axes) == 1 else axes) or None)

    def swapaxes(self, a, b):
        return np.swapaxes(self, a, b)

    def squeeze(self, axis=None):
        return np.squeeze(self, axis)

    # reductions: the numpy function of the same name, called with the same arguments
    sum, mean, max, min, prod, all, any = (_as_method(f) for f in (np.sum, np.mean, np.max, np.min, np.prod,
                                                                   np.all, np.any))

    def clip(self, low, high):
        return np.clip(self, low, high)

    def copy(self):
        return self.tracer.compute(COPY, np.copyto, (self,), {}, self.value.copy())

    def astype(self, dtype, copy=True):
        return self.tracer.compute(COPY, np.copyto, (self,), {}, self.value.astype(dtype))

    # -- what a trace cannot record ---------------------------------------------------------
    def _refuse(self, what: str):
        raise TraceError(f"{self.tracer.label}: {what} of a traced array: the kernel's Python code would depend "
                         "on the values, which a trace does not have (compute it with numpy calls, or mark a "
                         "check with runtime.kernels.data_check)")

    def __bool__(self):
        self._refuse("bool()")

    def __float__(self):
        self._refuse("float()")

    def __int__(self):
        self._refuse("int()")

    def __index__(self):
        self._refuse("use as an index")

    def __iter__(self):
        self._refuse("iteration")

    def __array__(self, dtype=None, copy=None):
        self._refuse("conversion to a numpy array (np.asarray)")

    def __setitem__(self, index, value):
        raise TraceError(f"{self.tracer.label}: assignment into an array (x[...] = v): kernels return new "
                         "values; the compiled engine decides where they are written")

    def item(self, *args):
        self._refuse("item()")

    def tolist(self):
        self._refuse("tolist()")

    __hash__ = object.__hash__


class Tracer:
    """Records one call of a kernel function (see the module docstring)."""

    def __init__(self, label: str):
        self.label = label
        self.values: list[np.ndarray] = []  # each slot's stand-in value (zeros for the arguments)
        self.instructions: list[Instruction] = []
        self.n_args = 0

    def argument(self, array):
        """A traced stand-in for one kernel argument (a :class:`Meta` stays itself)."""
        slot = len(self.values)
        self.n_args += 1
        if isinstance(array, Meta) or array is None:
            self.values.append(None)
            return array
        value = _zeros_like_layout(array)
        self.values.append(value)
        return Traced(self, SlotRef(slot), value)

    # -- recording ----------------------------------------------------------------------
    def ufunc(self, ufunc, method, inputs, kwargs):
        if kwargs.get("out") is not None:
            raise TraceError(f"{self.label}: {ufunc.__name__}(..., out=...) writes into an array: kernels "
                             "return new values; the compiled engine decides where they are written")
        kwargs = {k: v for k, v in kwargs.items() if k != "out"}
        if method == "__call__" and not kwargs and _is_identity(ufunc, inputs):
            return inputs[0]  # x / 1, x * 1: x itself, to the bit (a mean over one element)
        refs, values, _ = self._unwrap(inputs)
        with np.errstate(all="ignore"):
            if method == "__call__":
                if ufunc.nout != 1:
                    raise TraceError(f"{self.label}: {ufunc.__name__} has {ufunc.nout} outputs; use one-output calls")
                value = ufunc(*values, **kwargs)
                kind, fn = (UFUNC if not kwargs else OUT), ufunc
            elif method == "reduce":
                value = ufunc.reduce(*values, **kwargs)
                kind, fn = (REDUCE, ufunc.reduce) if set(kwargs) <= {"axis", "dtype", "keepdims"} else (OUT, ufunc.reduce)
            else:
                raise TraceError(f"{self.label}: {ufunc.__name__}.{method} is not traced (only calls and reduce)")
        self._check_promotion(ufunc.__name__, inputs, value)
        return self.compute(kind, fn, inputs, kwargs, value)

    def function(self, func, args, kwargs):
        name = getattr(func, "__name__", repr(func))
        if func in _MUTATING:
            raise TraceError(f"{self.label}: np.{name} writes into an array: kernels return new values")
        if func in _REDUCTIONS:
            return self._reduction(_REDUCTIONS[func], args, kwargs)
        if func is np.mean:
            return self._mean(args, kwargs)
        if func is np.clip and len(args) == 3 and not kwargs:
            return self.ufunc(_CLIP, "__call__", args, {})
        if func is np.copy:
            return args[0].copy()
        refs, values, bases = self._unwrap(args)
        _, kw_values, kw_bases = self._unwrap(kwargs)
        with np.errstate(all="ignore"):
            value = func(*values, **kw_values)
        if not isinstance(value, np.ndarray):
            if isinstance(value, (tuple, list)) and any(isinstance(v, np.ndarray) for v in value):
                raise TraceError(f"{self.label}: np.{name} returns several arrays; use one call per array")
            if isinstance(value, np.generic):
                value = np.asarray(value)
            else:
                return value  # a shape, a dtype, a Python number: static
        shared = [b for b in bases + kw_bases if self.values[b] is not None
                  and np.may_share_memory(value, self.values[b])]
        if shared:  # a view of an argument: made once on the real buffer, not an instruction
            if len(set(shared)) > 1:
                raise TraceError(f"{self.label}: np.{name} returned a view of more than one array")
            kw_refs, _, _ = self._unwrap(kwargs)
            method = _VIEW_METHODS.get(func) if not kwargs else None  # the same view, without numpy's dispatch
            return Traced(self, View(shared[0], method or func, refs, kw_refs), value)
        self._check_promotion(name, args, value)
        return self.compute(OUT if func in _WITH_OUT else ASSIGN, func, args, kwargs, value)

    def effect(self, fn: Callable, args: tuple) -> None:
        """Record ``fn(*args)`` as a call of its own (a :func:`~runtime.kernels.data_check`)."""
        refs, _, bases = self._unwrap(args)
        self.instructions.append(Instruction(EFFECT, fn, refs, {}, None, tuple(bases)))

    def routine(self, fn: Callable, args: tuple) -> Traced:
        """Record ``fn(*args)`` as one call returning a new array (a :func:`~runtime.kernels.routine`)."""
        _, values, _ = self._unwrap(args)
        with np.errstate(all="ignore"):
            value = fn(*values)
        self._check_promotion(getattr(fn, "__name__", "routine"), args, value)
        return self.compute(ASSIGN, fn, args, {}, value)

    def compute(self, kind: str, fn: Callable, args, kwargs: dict, value) -> Traced:
        refs, _, bases = self._unwrap(args)
        kw_refs, _, kw_bases = self._unwrap(kwargs)
        value = np.asarray(value)
        slot = len(self.values)
        self.values.append(value)
        elementwise = kind == UFUNC and getattr(fn, "signature", 0) is None  # matmul is a ufunc, not elementwise
        direct = tuple(r.slot for r in refs if isinstance(r, SlotRef)) if elementwise else ()
        self.instructions.append(Instruction(kind, fn, refs, kw_refs, slot, tuple(bases + kw_bases), direct))
        return Traced(self, SlotRef(slot), value)

    def _reduction(self, ufunc, args, kwargs):
        a, axis = args[0], (args[1] if len(args) > 1 else kwargs.get("axis"))
        options = {"axis": axis, "dtype": kwargs.get("dtype"), "keepdims": kwargs.get("keepdims", False)}
        if set(kwargs) - {"axis", "dtype", "keepdims"} or len(args) > 2:
            raise TraceError(f"{self.label}: a reduction with {sorted(kwargs)} is not traced")
        return self.ufunc(ufunc, "reduce", (a,), options)

    def _mean(self, args, kwargs):
        # np.mean is add.reduce then a division by the count (numpy's own _mean; float results are
        # the same to the bit), so it is recorded as those two calls
        a = args[0]
        axis = args[1] if len(args) > 1 else kwargs.get("axis")
        keepdims = kwargs.get("keepdims", False)
        if set(kwargs) - {"axis", "keepdims"} or len(args) > 2 or a.dtype.kind != "f" or a.dtype.itemsize < 4:
            raise TraceError(f"{self.label}: np.mean is traced for float32/float64 arrays with axis and keepdims only")
        axes = range(a.ndim) if axis is None else ((axis,) if isinstance(axis, int) else axis)
        count = 1
        for ax in axes:
            count *= a.shape[ax]
        total = self.ufunc(np.add, "reduce", (a,), {"axis": axis if axis is None or isinstance(axis, int) else
                                                    tuple(axis), "dtype": None, "keepdims": keepdims})
        return self.ufunc(np.true_divide, "__call__", (total, count), {})

    def _unwrap(self, obj):
        """(refs, values, base slots) of an argument structure: traced arrays replaced by
        their slot refs and by their stand-in values."""
        bases: list[int] = []
        refs, values = self._walk(obj, bases)
        return refs, values, bases

    def _walk(self, x, bases: list[int]):
        # A method, not a closure that calls itself: that closure was a reference cycle holding
        # the tracer, and with it every stand-in array of the trace, until the next gc pass.
        if isinstance(x, Traced):
            if x.tracer is not self:
                raise TraceError(f"{self.label}: an array from another trace")
            bases.append(x.ref.slot if isinstance(x.ref, SlotRef) else x.ref.base)
            return x.ref, x.value
        if isinstance(x, (tuple, list)) and any(isinstance(v, (Traced, tuple, list, dict)) for v in x):
            pairs = [self._walk(v, bases) for v in x]
            return type(x)(p[0] for p in pairs), type(x)(p[1] for p in pairs)
        if isinstance(x, dict):
            pairs = {k: self._walk(v, bases) for k, v in x.items()}
            return {k: p[0] for k, p in pairs.items()}, {k: p[1] for k, p in pairs.items()}
        return x, x

    def _check_promotion(self, name: str, operands, value) -> None:
        """Float32 stays float32: a result wider than every traced float operand means a numpy
        scalar or a float64 constant promoted it (NEP 50), which would change the graph's dtype."""
        if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
            return
        widest = 0
        for x in _flatten(operands):
            if isinstance(x, Traced) and x.dtype.kind == "f":
                widest = max(widest, x.dtype.itemsize)
        if widest and value.dtype.itemsize > widest:
            raise PromotionError(f"{self.label}: {name} promotes float{8 * widest} to {value.dtype} (a numpy scalar "
                             "such as np.float64(...) or a float64 array among its operands); use a Python number "
                             "or an array of the operand's dtype")

    def template(self, results, wanted: Sequence[bool] | None, static: Sequence[bool] | None) -> Template:
        """The recording as a :class:`~.template.Template`: ``results`` are what the kernel
        returned, ``wanted`` which of them the engine uses (None: all), ``static`` which
        arguments only the seed tape writes (None: none)."""
        refs = []
        for i, r in enumerate(results):
            if r is None or (wanted is not None and not wanted[i]):
                refs.append(None)
            elif isinstance(r, Traced):
                refs.append(r.ref)
            else:  # a constant the kernel made (np.zeros(shape), say)
                refs.append(("constant", np.asarray(r)))
        return Template.build(self.label, self.values, self.n_args, self.instructions, refs, static)


def _is_identity(ufunc, inputs) -> bool:
    """``ufunc(x, 1)`` is ``x`` exactly (IEEE: x / 1 and x * 1 are x, NaN included) when it keeps
    x's shape and dtype."""
    if ufunc not in (np.true_divide, np.multiply) or len(inputs) != 2:
        return False
    x, one = inputs
    return (isinstance(x, Traced) and type(one) in (int, float) and one == 1
            and np.result_type(x.dtype, one) == x.dtype)


def _flatten(obj):
    if isinstance(obj, (tuple, list)):
        for x in obj:
            yield from _flatten(x)
    elif isinstance(obj, dict):
        for x in obj.values():
            yield from _flatten(x)
    else:
        yield obj


def _zeros_like_layout(array: np.ndarray) -> np.ndarray:
    """Zeros with ``array``'s shape, dtype and strides, so a view taken of it is the same kind
    of view (or copy) as one taken of the real argument."""
    if array.flags.c_contiguous:
        return np.zeros(array.shape, array.dtype)
    size = array.itemsize
    if any(s < 0 or s % size for s in array.strides):
        raise TraceError("an argument with negative or unaligned strides")
    count = 1 + sum((d - 1) * (s // size) for d, s in zip(array.shape, array.strides)) if array.size else 1
    return np.lib.stride_tricks.as_strided(np.zeros(count, array.dtype), array.shape, array.strides)


def signature(array) -> tuple:
    """What a template depends on, for one argument."""
    if array is None:
        return (None,)
    if isinstance(array, Meta):
        return ("meta", array.shape, array.dtype)
    return (array.shape, array.dtype, array.strides)

