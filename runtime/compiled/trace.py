"""Tracing: the compiled engine runs each kernel's own numpy code, recorded once per set of shapes.

A kernel is written once, as plain numpy (:mod:`runtime.kernels`). To compile it, the
lowering calls the kernel's ``forward`` (or ``vjp``) with :class:`Traced` arrays in place of
the real ones. Each numpy call a traced array takes part in — a ufunc through
``__array_ufunc__``, anything else through ``__array_function__``, the operators and the
few array methods kernels use — is run on zero-filled stand-ins of the same shapes (so
numpy itself says every result's shape and dtype) and recorded as one
:class:`Instruction`. The recording is a :class:`Template`: a small program over numbered
slots (the kernel's arguments, then each computed value) that depends only on the
arguments' shapes, dtypes and layouts, so a network of 64 identical layers is traced once
and instantiated 64 times.

Instantiating a template (:meth:`Template.instantiate`) binds its slots to real buffers and
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
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Sequence

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

from ..kernels import Meta
from .emit import Emitter


class TraceError(Exception):
    """A kernel did something a trace cannot record (the message says what)."""


class PromotionError(TraceError):
    """A kernel turned float32 into float64: a bug in the kernel, not a limit of tracing."""


@dataclass(frozen=True)
class View:
    """A view of slot ``base``'s memory: ``fn(*args, **kwargs)`` with the slots filled in."""

    base: int
    fn: Callable
    args: tuple
    kwargs: dict


# Instruction kinds: how the tape entry is formed from (fn, args, out)
UFUNC = "ufunc"      # a ufunc call: fn(*args, out); an elementwise one may write over an operand
OUT = "out"          # fn(*args, out=out, **kwargs)
REDUCE = "reduce"    # ufunc.reduce(array, axis, dtype, out, keepdims)
ASSIGN = "assign"    # np.copyto(out, fn(*args, **kwargs)): numpy functions without out=
COPY = "copy"        # np.copyto(out, args[0], casting="unsafe")
EFFECT = "effect"    # fn(*args): a data check, no result
_POSITIONAL_OUT = "positional"  # a UFUNC call taking its out positionally (instantiation's fast path)


@dataclass
class Instruction:
    kind: str
    fn: Callable
    args: tuple      # slot refs (int wrapped in _Ref, View) possibly nested in tuples and lists
    kwargs: dict
    out: int | None  # the slot it computes
    reads: tuple[int, ...]  # the slots it reads, views resolved to their base
    direct: tuple[int, ...] = ()  # slots an elementwise call reads as whole operands (may be overwritten)


@dataclass(frozen=True)
class _Ref:
    slot: int


_REDUCTIONS = {np.sum: np.add, np.prod: np.multiply, np.max: np.maximum, np.min: np.minimum,
               np.amax: np.maximum, np.amin: np.minimum}
_MUTATING = {np.put, np.put_along_axis, np.copyto, np.place, np.putmask, np.fill_diagonal}
_VIEW_METHODS = {np.swapaxes: np.ndarray.swapaxes, np.transpose: np.ndarray.transpose, np.reshape: np.ndarray.reshape,
                 np.squeeze: np.ndarray.squeeze}
_WITH_OUT = {np.take, np.dot, np.cumsum, np.cumprod}  # numpy functions with an out= argument
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
        return Traced(self, _Ref(slot), value)

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

    def compute(self, kind: str, fn: Callable, args, kwargs: dict, value) -> Traced:
        refs, _, bases = self._unwrap(args)
        kw_refs, _, kw_bases = self._unwrap(kwargs)
        value = np.asarray(value)
        slot = len(self.values)
        self.values.append(value)
        elementwise = kind == UFUNC and getattr(fn, "signature", 0) is None  # matmul is a ufunc, not elementwise
        direct = tuple(r.slot for r in refs if isinstance(r, _Ref)) if elementwise else ()
        self.instructions.append(Instruction(kind, fn, refs, kw_refs, slot, tuple(bases + kw_bases), direct))
        return Traced(self, _Ref(slot), value)

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

        def walk(x):
            if isinstance(x, Traced):
                if x.tracer is not self:
                    raise TraceError(f"{self.label}: an array from another trace")
                bases.append(x.ref.slot if isinstance(x.ref, _Ref) else x.ref.base)
                return x.ref, x.value
            if isinstance(x, (tuple, list)) and any(isinstance(v, (Traced, tuple, list, dict)) for v in x):
                pairs = [walk(v) for v in x]
                return type(x)(p[0] for p in pairs), type(x)(p[1] for p in pairs)
            if isinstance(x, dict):
                pairs = {k: walk(v) for k, v in x.items()}
                return {k: p[0] for k, p in pairs.items()}, {k: p[1] for k, p in pairs.items()}
            return x, x
        refs, values = walk(obj)
        return refs, values, bases

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

    def template(self, results, wanted: Sequence[bool] | None, static: Sequence[bool] | None) -> "Template":
        """The recording as a :class:`Template`: ``results`` are what the kernel returned,
        ``wanted`` which of them the engine uses (None: all), ``static`` which arguments only
        the seed tape writes (None: none)."""
        return Template.build(self, results, wanted, static)


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


# -- templates ------------------------------------------------------------------------------------

@dataclass
class _Group:
    """Computed slots that share one buffer: a chain of elementwise calls, each writing over the
    last one's result once nothing else reads it."""

    members: list[int]  # in the order they are written
    writes: list[int]   # the instruction index writing each member
    shape: tuple
    dtype: np.dtype
    static: bool = False
    result: int | None = None  # the first result index returning (a view of) this group
    unsafe: list[tuple] = field(default_factory=list)  # per member: arguments read after its write


@dataclass
class Template:
    """One traced kernel call, ready to be bound to buffers any number of times."""

    label: str
    n_args: int
    instructions: list[Instruction]  # kept, in order
    static_instructions: set[int]    # indices (into instructions) that go to the seed tape
    groups: list[_Group]
    group_of: dict[int, int]          # computed slot -> group index
    results: list                     # per result: None or a (code, payload) spec
    program: list                     # per instruction: (kind, fn, arg specs, kwarg specs, out slot, static)
    view_specs: list                  # (fn, arg specs, kwarg specs) of each view, in order
    n_slots: int
    passes_through: bool              # no calls: every result is an argument (or None)

    @classmethod
    def build(cls, tracer: Tracer, results, wanted, static) -> "Template":
        n_args = tracer.n_args
        result_refs = []
        for i, r in enumerate(results):
            if r is None or (wanted is not None and not wanted[i]):
                result_refs.append(None)
            elif isinstance(r, Traced):
                result_refs.append(r.ref)
            else:
                result_refs.append(("constant", np.asarray(r)))
        instructions = tracer.instructions
        # dead code: keep what the wanted results and the checks need
        live = {_base(r) for r in result_refs if isinstance(r, (_Ref, View))}
        kept = []
        for ins in reversed(instructions):
            if ins.kind == EFFECT or ins.out in live:
                kept.append(ins)
                live.update(ins.reads)
        kept.reverse()
        # static: computed from the seed and constants only
        is_static = {slot for slot in range(n_args) if static and static[slot]}
        static_ins = set()
        for k, ins in enumerate(kept):
            if ins.kind != EFFECT and all(s in is_static for s in ins.reads):
                static_ins.add(k)
                is_static.add(ins.out)
        # liveness over the step's tape (static calls run apart, on the seed tape)
        end = len(kept)
        last_read: dict[int, int] = {}
        for k, ins in enumerate(kept):
            for s in ins.reads:
                last_read[s] = k
        for r in result_refs:
            if isinstance(r, (_Ref, View)):
                last_read[_base(r)] = end
        groups: list[_Group] = []
        group_of: dict[int, int] = {}
        for k, ins in enumerate(kept):
            if ins.out is None:
                continue
            value = tracer.values[ins.out]
            joined = None
            if ins.direct and k not in static_ins:
                for s in ins.direct:
                    gi = group_of.get(s)
                    if (gi is not None and not groups[gi].static and last_read.get(s) == k
                            and tracer.values[s].shape == value.shape and tracer.values[s].dtype == value.dtype
                            and all(last_read.get(m, -1) <= k for m in groups[gi].members)):
                        joined = gi
                        break
            if joined is None:
                groups.append(_Group([], [], value.shape, value.dtype, static=k in static_ins))
                joined = len(groups) - 1
            groups[joined].members.append(ins.out)
            groups[joined].writes.append(k)
            group_of[ins.out] = joined
        for i, r in enumerate(result_refs):
            if isinstance(r, (_Ref, View)) and _base(r) in group_of:
                g = groups[group_of[_base(r)]]
                if g.result is None:
                    g.result = i
        # which arguments each member's write must not clobber, should the group be bound to one
        arg_reads: dict[int, list[tuple[int, bool]]] = {}
        for k, ins in enumerate(kept):
            if k in static_ins:
                continue
            for s in set(ins.reads):
                if s < n_args:
                    ok = s in ins.direct and tracer.values[s].shape == tracer.values[ins.out].shape
                    arg_reads.setdefault(s, []).append((k, ok))
        for r in result_refs:  # an argument returned as (a view of) a result is read after every call
            if isinstance(r, (_Ref, View)) and _base(r) < n_args:
                arg_reads.setdefault(_base(r), []).append((end, False))
        for g in groups:
            if g.result is None or g.static:
                continue
            for w in g.writes:
                g.unsafe.append(tuple(s for s, reads in arg_reads.items()
                                      if any(k > w or (k == w and not ok) for k, ok in reads)))
        spec, view_specs = _compile_refs(kept, result_refs)
        program = [(_POSITIONAL_OUT if ins.kind == UFUNC and ins.fn not in _KEYWORD_OUT else ins.kind, ins.fn,
                    tuple(spec(a) for a in ins.args), {k: spec(v) for k, v in ins.kwargs.items()},
                    ins.out, k in static_ins) for k, ins in enumerate(kept)]
        results = [None if r is None else ((_CONSTANT, r[1]) if isinstance(r, tuple) else spec(r)) for r in result_refs]
        return cls(tracer.label, n_args, kept, static_ins, groups, group_of, results, program, view_specs,
                   len(tracer.values), not program and all(r is None or r[0] == _SLOT for r in results))

    def instantiate(self, e: Emitter, args: Sequence, targets: Sequence, reuse=None,
                    static_ids: set[int] | None = None) -> list:
        """Bind the template to ``args`` (the real arrays, in the traced order) and append its
        calls to ``e``'s tapes. ``targets[i]`` is where result ``i`` should be written when that
        is safe (or None); ``reuse`` an argument nothing else reads, free to be written over.
        Returns the results — arrays (bound buffers, arguments, or views of them) or None — and
        for each whether it is a buffer of its own (not an argument, not a view).
        ``static_ids`` gains the ids of the arrays the seed tape computes."""
        if self.passes_through:  # e.g. add's VJP: (g, g)
            return [None if r is None else args[r[1]] for r in self.results], [False] * len(self.results)
        arrays: list = [*args, *([None] * (self.n_slots - self.n_args))]
        for g in self.groups:
            if g.static:
                bound = e.buffer(g.shape, g.dtype)
                if static_ids is not None:
                    static_ids.add(id(bound))
            elif g.result is None:
                bound = e.scratch(g.shape, g.dtype)
            else:
                bound, split = None, 0
                for candidate in (targets[g.result] if g.result < len(targets) else None, reuse):
                    if candidate is None or candidate.shape != g.shape or candidate.dtype != g.dtype:
                        continue
                    split = _first_safe_write(g.unsafe, candidate, args)
                    if split is not None:
                        bound = candidate
                        if candidate is reuse:
                            reuse = None
                        break
                if bound is None:
                    bound = e.buffer(g.shape, g.dtype)
                elif split:  # the chain's first calls read the target: they run in scratch
                    head = e.scratch(g.shape, g.dtype)
                    for m in g.members[:split]:
                        arrays[m] = head
                    for m in g.members[split:]:
                        arrays[m] = bound
                    continue
            for m in g.members:
                arrays[m] = bound
        views: list = []
        for fn, spec, kwargs in self.view_specs:
            views.append(fn(*[_get(c, p, arrays, views) for c, p in spec], **_resolve_kwargs(kwargs, arrays, views)))
        tape, seed_tape = e.tape, e.seed_tape
        for kind, fn, spec, kwargs, slot, static in self.program:
            values = [arrays[p] if c == _SLOT else (views[p] if c == _VIEW else _get(c, p, arrays, views))
                      for c, p in spec]
            if kind is _POSITIONAL_OUT:  # most calls: fn(*args, out)
                values.append(arrays[slot])
                entry = fn, tuple(values)
            else:
                entry = _entry(kind, fn, values, _resolve_kwargs(kwargs, arrays, views),
                               arrays[slot] if slot is not None else None)
            (seed_tape if static else tape).append(entry)
        out, owned = [], []
        for r in self.results:
            if r is None:
                out.append(None)
                owned.append(False)
            elif r[0] == _CONSTANT:
                array = e.buffer(r[1].shape, r[1].dtype)
                array[...] = r[1]
                if static_ids is not None:
                    static_ids.add(id(array))
                out.append(array)
                owned.append(True)
            else:
                out.append(_get(r[0], r[1], arrays, views))
                owned.append(r[0] == _SLOT and r[1] >= self.n_args)
        return out, owned


def _first_safe_write(unsafe: list, candidate, args) -> int | None:
    """The first member of a chain from whose write on ``candidate`` may hold the chain: no
    later call reads it as an argument (None: there is none)."""
    for k, slots in enumerate(unsafe):
        for s in slots:
            if args[s] is candidate:
                break
        else:
            return k
    return None


# argument specs of a compiled template: (code, payload)
_SLOT, _VIEW, _CONST, _NESTED, _CONSTANT = 0, 1, 2, 3, 4


def _get(code: int, payload, arrays: list, views: list):
    if code == _SLOT:
        return arrays[payload]
    if code == _VIEW:
        return views[payload]
    if code == _CONST:
        return payload
    return type(payload)(_get(c, p, arrays, views) for c, p in payload)  # a tuple or list holding refs


def _resolve_kwargs(kwargs, arrays, views):
    return {k: _get(c, p, arrays, views) for k, (c, p) in kwargs.items()} if kwargs else {}


def _compile_refs(instructions, results):
    """The views the instructions and results read (each once, in the order they can be made)
    and a function turning a ref structure into its (code, payload) spec."""
    index: dict[int, int] = {}
    view_specs: list = []

    def spec(x):
        if isinstance(x, _Ref):
            return _SLOT, x.slot
        if isinstance(x, View):
            if id(x) not in index:
                made = (x.fn, tuple(spec(a) for a in x.args), {k: spec(v) for k, v in x.kwargs.items()})
                index[id(x)] = len(view_specs)
                view_specs.append(made)
            return _VIEW, index[id(x)]
        if isinstance(x, (tuple, list)) and any(isinstance(v, (_Ref, View, tuple, list)) for v in x):
            return _NESTED, type(x)(spec(v) for v in x)
        return _CONST, x
    return spec, view_specs


def _base(ref) -> int:
    return ref.slot if isinstance(ref, _Ref) else ref.base


# numpy deprecates a positional out for these two (a third positional once meant a third operand)
_KEYWORD_OUT = {np.maximum, np.minimum}


def _assign(fn, args, kwargs, out):
    np.copyto(out, fn(*args, **kwargs))


def _entry(kind: str, fn: Callable, args: list, kwargs: dict, out) -> tuple[Callable, tuple]:
    """The tape entry of one instruction, its arguments and output bound."""
    if kind == UFUNC and fn not in _KEYWORD_OUT:
        return fn, (*args, out)
    if kind == UFUNC:
        return partial(fn, out=out), tuple(args)
    if kind == REDUCE:
        return fn, (args[0], kwargs.get("axis"), kwargs.get("dtype"), out, kwargs.get("keepdims", False))
    if kind == OUT:
        return partial(fn, out=out, **kwargs), tuple(args)
    if kind == COPY:
        return partial(np.copyto, casting="unsafe"), (out, args[0])
    if kind == ASSIGN:
        return _assign, (fn, tuple(args), kwargs, out)
    return fn, tuple(args)  # EFFECT
