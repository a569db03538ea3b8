"""Templates: a traced kernel call as a small program, and binding it to buffers.

:mod:`.trace` records a kernel call as instructions (:class:`Instruction`) over numbered slots (the
call's arguments, then each value it computes) and views of them (:class:`View`). A
:class:`Template` is that recording made ready to be bound many times:
:meth:`Template.build` drops dead calls, moves calls that read only the seed and constants
to the seed tape, and groups computed values into chains that can share one buffer, with
the arguments each chain member must not overwrite; :meth:`Template.instantiate` binds the
slots to real arrays (targets, scratch, persistent buffers) and appends the calls to the
tapes. Planning and binding only: what is recorded, and how, is :mod:`.trace`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Sequence

import numpy as np

from .emit import Emitter

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
    args: tuple      # slot refs (int wrapped in SlotRef, View) possibly nested in tuples and lists
    kwargs: dict
    out: int | None  # the slot it computes
    reads: tuple[int, ...]  # the slots it reads, views resolved to their base
    direct: tuple[int, ...] = ()  # slots an elementwise call reads as whole operands (may be overwritten)


@dataclass(frozen=True)
class SlotRef:
    """A reference to one slot of a recording (an argument or a computed value)."""

    slot: int


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
    groups: list[_Group]
    results: list                     # per result: None or a (code, payload) spec
    program: list                     # per instruction: (kind, fn, arg specs, kwarg specs, out slot, static)
    view_specs: list                  # (fn, arg specs, kwarg specs) of each view, in order
    n_slots: int
    passes_through: bool              # no calls: every result is an argument (or None)

    @classmethod
    def build(cls, label: str, values: list, n_args: int, instructions: list[Instruction], result_refs: list,
              static: Sequence[bool] | None) -> "Template":
        """``values``: each slot's traced stand-in (shapes and dtypes); ``result_refs``: per
        result None (not wanted), a slot or view ref, or ("constant", array)."""
        # dead code: keep what the wanted results and the checks need
        live = {_base(r) for r in result_refs if isinstance(r, (SlotRef, View))}
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
            if isinstance(r, (SlotRef, View)):
                last_read[_base(r)] = end
        groups: list[_Group] = []
        group_of: dict[int, int] = {}
        for k, ins in enumerate(kept):
            if ins.out is None:
                continue
            value = values[ins.out]
            joined = None
            if ins.direct and k not in static_ins:
                for s in ins.direct:
                    gi = group_of.get(s)
                    if (gi is not None and not groups[gi].static and last_read.get(s) == k
                            and values[s].shape == value.shape and values[s].dtype == value.dtype
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
            if isinstance(r, (SlotRef, View)) and _base(r) in group_of:
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
                    ok = s in ins.direct and values[s].shape == values[ins.out].shape
                    arg_reads.setdefault(s, []).append((k, ok))
        for r in result_refs:  # an argument returned as (a view of) a result is read after every call
            if isinstance(r, (SlotRef, View)) and _base(r) < n_args:
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
        return cls(label, n_args, groups, results, program, view_specs,
                   len(values), not program and all(r is None or r[0] == _SLOT for r in results))

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
        if isinstance(x, SlotRef):
            return _SLOT, x.slot
        if isinstance(x, View):
            if id(x) not in index:
                made = (x.fn, tuple(spec(a) for a in x.args), {k: spec(v) for k, v in x.kwargs.items()})
                index[id(x)] = len(view_specs)
                view_specs.append(made)
            return _VIEW, index[id(x)]
        if isinstance(x, (tuple, list)) and any(isinstance(v, (SlotRef, View, tuple, list)) for v in x):
            return _NESTED, type(x)(spec(v) for v in x)
        return _CONST, x
    return spec, view_specs


def _base(ref) -> int:
    return ref.slot if isinstance(ref, SlotRef) else ref.base


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
