"""Lowering a :class:`~runtime.plan.Plan` to a tape for one set of concrete input shapes.

What the lowering decides, once, so the step never has to:

* **shapes**: every value's shape and dtype, from the op contracts' type rules applied to
  the concrete input shapes;
* **fusions** (:mod:`.fusions`): a few node pairs become one kernel, e.g. ``sigmoid`` then
  ``bce`` becomes BCE on the logits, whose gradient is ``sigmoid(z) - y``;
* **dead work**: nodes the loss does not need are not run; gradients flow only along
  paths from a parameter to the loss (inputs only when asked for);
* **each node's calls**: its kernel's own ``forward`` and ``vjp``, traced
  (:mod:`.trace`, one recording per kernel and shapes, shared by every lowering) and bound
  to buffers — the output over a dead input's buffer when that is safe, an activation's
  gradient over an incoming gradient nobody else reads, a parameter's gradient straight
  into the caller's array; gradients that only pass through (``add``) share their array;
* **fan-out**: the first gradient reaching a value is used as is, later ones are added in;
  a gradient of a broadcast operand is summed back to its shape (``unbroadcast_plan``).

Besides those sums and copies, the lowering computes nothing itself: a kernel the tracer
cannot follow runs its ``forward``/``vjp`` through a small adapter that copies the result
into the value's buffer (``Program.untraced`` says why).

The passes (:class:`_Lowering`): shapes and fusions; what runs and what gets a gradient
(:mod:`runtime.analysis`, the same functions the interpreter's plan uses); the forward
tape; the backward tape. Past 300 lines because the two tape passes share the buffer
state; the tracer and the emitter are their own modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from graphspec import OPS
from graphspec.types import TensorType

from .. import analysis
from ..kernels import Meta, unbroadcast, unbroadcast_plan
from ..plan import Plan, Step
from .emit import Emitter
from .fusions import fuse
from .template import Template
from .trace import PromotionError, Tracer, signature


@dataclass
class Program:
    """A lowered step: run ``forward`` then ``backward``; the loss is ``float(loss)``."""

    forward: list[tuple[Callable, tuple]]
    backward: list[tuple[Callable, tuple]]
    inputs: dict[str, np.ndarray]  # the buffers the step reads its inputs from
    loss: np.ndarray
    input_grads: dict[str, np.ndarray]
    native: tuple[str, ...]  # ops whose kernels were traced
    adapted: tuple[str, ...]  # ops run through forward/vjp adapters (see ``untraced`` for why)
    fused: tuple[str, ...]  # fused kernels used
    bytes: int = 0
    values: dict[str, np.ndarray] = field(default_factory=dict)
    seed: np.ndarray | None = None  # d(loss)/d(loss) for the backward pass
    seed_tape: list = field(default_factory=list)  # calls reading only the seed and constants
    untraced: dict[str, str] = field(default_factory=dict)  # op -> why its kernel was not traced
    # random kernels' draws (runtime.noise): (step, buffer) pairs a training step fills first
    draws: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tape = self.forward + self.backward
        # about how many elements re-running the seed tape touches (what a new seed costs)
        self.seed_elements = sum(a.size for _, args in self.seed_tape for a in args if isinstance(a, np.ndarray))
        self._run_seed_tape()

    def set_seed(self, value: float) -> None:
        """Start the backward pass from ``value`` instead of 1: every gradient comes out
        multiplied by it (plain SGD folds its learning rate in this way)."""
        if self.seed is not None and self.seed.flat[0] != value:
            self.seed[...] = value
            self._run_seed_tape()

    def _run_seed_tape(self) -> None:
        with np.errstate(all="ignore"):
            for fn, args in self.seed_tape:
                fn(*args)


def infer_types(plan: Plan, leaves: Mapping[str, TensorType]) -> dict[str, TensorType]:
    """Every value's concrete type, from the op contracts (the same rules validation uses).
    Layers repeat, so each distinct (op, input types, attributes) is inferred once."""
    types = dict(leaves)
    seen: dict[tuple, TensorType] = {}
    for step in plan.steps:
        in_types = [types[name] for name in step.inputs]
        try:  # plain tuples: TensorType's generated __hash__ runs in Python
            key = (step.op, *[(t.dtype, t.shape) for t in in_types], *(sorted(step.attrs.items()) if step.attrs else ()))
            hash(key)
        except TypeError:  # list-valued attributes (axes, shapes): not worth a hashable copy
            key = None
        out = seen.get(key) if key is not None else None
        if out is None:
            out = OPS[step.op].infer(in_types, step.attrs)
            if key is not None:
                seen[key] = out
        types[step.id] = out
    return types


def tensor_type(array: np.ndarray) -> TensorType:
    return TensorType(_dtype_name(array.dtype), tuple(array.shape))


_NAMES: dict[np.dtype, str] = {}


def _dtype_name(dtype: np.dtype) -> str:
    name = _NAMES.get(dtype)
    if name is None:  # dtype.name is computed in Python on every access
        name = _NAMES[dtype] = dtype.name
    return name


def lower(plan: Plan, input_types: Mapping[str, TensorType], params: Mapping[str, np.ndarray],
          param_grads: Mapping[str, np.ndarray], *, grad_inputs: bool = False, random: bool = False,
          keep: tuple[str, ...] = ()) -> Program:
    """Lower ``plan`` for inputs of ``input_types``; the step reads ``params`` and writes
    d(loss)/d(param) into ``param_grads`` (arrays the caller owns and keeps). With
    ``random``, random kernels (dropout) read draws from ``Program.draws``' buffers, which
    the caller fills before each run; without, they get None (:mod:`runtime.noise`). ``keep``
    names values (metric outputs) the step computes too and leaves readable in ``Program.values``.

    Four passes: shapes and fusions, what runs (:mod:`runtime.analysis`, as the interpreter
    decides it), the forward tape, the backward tape."""
    lowering = _Lowering(plan, input_types, params, grad_inputs, random, keep)
    lowering.analyse()
    lowering.emit_forward()
    return lowering.emit_backward(param_grads)


class _Lowering:
    """The state the passes share: the emitter, the buffers, and what the analysis found."""

    def __init__(self, plan: Plan, input_types: Mapping[str, TensorType], params: Mapping[str, np.ndarray],
                 grad_inputs: bool, random: bool = False, keep: tuple[str, ...] = ()):
        self.plan, self.input_types, self.params, self.grad_inputs = plan, input_types, params, grad_inputs
        self.random, self.keep = random, keep
        self.draws: dict[str, np.ndarray | None] = {}  # node id -> its draw's buffer (None: not training)
        leaves = {**input_types, **{n: tensor_type(p) for n, p in params.items()}}
        self.types = infer_types(plan, leaves)
        self.nodes = fuse(list(plan.steps), plan)  # plan steps, a fused pattern as one Step
        self.loss_id = plan.loss_node
        self.e = Emitter()
        self.static: set[int] = set()  # ids of arrays that only the seed tape writes (seed, constants)
        self.native: set[str] = set()
        self.adapted: set[str] = set()
        self.untraced: dict[str, str] = {}
        self.metas: dict[str, Meta] = {}

    # -- pass 1: what runs, what gets a gradient, what the backward pass reads ----------------
    def analyse(self) -> None:
        plan = self.plan
        self.run = analysis.needed(self.nodes, self.loss_id, *self.keep)
        sources = list(plan.param_names) + (list(plan.input_names) if self.grad_inputs else [])
        self.path = analysis.grad_path(self.run, sources, self.loss_id)
        self.saved = analysis.saved_for_backward(self.run, self.path)
        self.last_use = analysis.last_uses(self.run)

    # -- pass 2: the forward tape, one buffer per value unless an elementwise op may overwrite --
    def emit_forward(self) -> None:
        plan, types, e, loss_id = self.plan, self.types, self.e, self.loss_id
        saved, last_use = self.saved, self.last_use
        dtypes = {name: np.dtype(name) for name in {t.dtype for t in types.values()}}
        dtype_of = self.dtype_of = {name: dtypes[t.dtype] for name, t in types.items()}
        buf: dict[str, np.ndarray] = {}
        # zero-filled, so a value check (runtime.kernels.data_check) could never see garbage
        self.inputs = {name: np.zeros(tuple(self.input_types[name].shape), dtype_of[name])
                       for name in plan.input_names}
        buf.update(self.inputs)
        buf.update(self.params)
        pinned = set(buf) | set(self.keep)  # inputs, parameters and kept values are never written over
        self.residuals: dict[str, list] = {}
        for position, n in enumerate(self.run):
            shape, dtype = tuple(types[n.id].shape), dtype_of[n.id]
            args = [buf[name] for name in n.inputs]
            if n.kernel.draws is not None:
                first = args[0]
                draw = self.draws[n.id] = e.buffer(first.shape, first.dtype) if self.random else None
                args.append(draw)
            if n.op == "constant":  # its value is known now: fill the buffer once, never write it again
                out = buf[n.id] = e.buffer(shape, dtype)
                out[...] = n.kernel.forward(**n.attrs)
                pinned.add(n.id)
                self.static.add(id(out))
                continue
            candidate = None  # a dead input's buffer the output may overwrite
            for name in n.inputs:
                if (name not in pinned and name not in saved and name != loss_id and last_use[name] == position
                        and buf[name].shape == shape and buf[name].dtype == dtype):
                    candidate = buf[name]
                    break
            e.begin()
            results = self.call(n, "forward", args, [candidate])
            if results is None:
                out = e.buffer(shape, dtype)
                self.residuals[n.id] = []  # the adapter's forward fills it for the adapter's VJP
                e.emit(_adapted_forward(n, out, args, self.residuals[n.id]))
            else:
                values, owned = results
                out = values[0]
                _check_result(n, "forward", out, shape, dtype)
                if not owned[0]:  # a view or an argument: the value gets a buffer of its own
                    out = e.buffer(shape, dtype)
                    e.emit(np.copyto, out, values[0])
                kept = []
                for value, own in zip(values[1:], owned[1:]):
                    if not own:  # an argument's buffer may be overwritten later: keep a copy
                        copy = e.buffer(value.shape, value.dtype)
                        e.emit(np.copyto, copy, value)
                        value = copy
                    kept.append(value)
                self.residuals[n.id] = kept
                if id(out) in self.static:
                    pinned.add(n.id)
            buf[n.id] = out
        self.buf = buf
        self.forward_tape = e.tape
        e.tape = []

    def meta(self, name: str) -> Meta:
        """What a VJP gets for a value it does not read: its shape and dtype (one per value)."""
        meta = self.metas.get(name)
        if meta is None:
            array = self.buf[name]
            meta = self.metas[name] = Meta(array.shape, array.dtype)
        return meta

    def call(self, n: Step, which: str, args: list, targets: list, reuse=None,
             wanted: tuple[bool, ...] | None = None) -> tuple[list, list] | None:
        """Run node ``n``'s kernel function ``which`` ("forward" or "vjp") on ``args`` into the
        tape, through its trace (:mod:`.trace`); None when it cannot be traced."""
        static_ids = self.static
        static = None if static_ids.isdisjoint(map(id, args)) else tuple([id(a) in static_ids for a in args])
        template = _template(n, which, args, static, wanted)
        if template.__class__ is str:
            self.untraced[n.op] = template
            self.adapted.add(n.op)
            return None
        self.native.add(n.op)
        return template.instantiate(self.e, args, targets, reuse, self.static)

    # -- pass 3: the backward tape, gradients summed where a value fans out -------------------
    def emit_backward(self, param_grads: Mapping[str, np.ndarray]) -> Program:
        plan, types, e, loss_id, path = self.plan, self.types, self.e, self.loss_id, self.path
        buf, dtype_of = self.buf, self.dtype_of
        seed = np.ones(tuple(types[loss_id].shape), dtype_of[loss_id])
        self.static.add(id(seed))
        leaf_targets: dict[str, np.ndarray] = dict(param_grads)
        input_grads: dict[str, np.ndarray] = {}
        if self.grad_inputs:
            for name in plan.input_names:
                if dtype_of[name].kind == "f":
                    input_grads[name] = leaf_targets[name] = e.buffer(tuple(types[name].shape), dtype_of[name])
        grads: dict[str, np.ndarray] = {loss_id: seed} if loss_id in path else {}
        owned: set[int] = set()  # gradient arrays only this value's gradient uses: later gradients add in place
        exclusive: set[int] = set()  # fresh gradient arrays that nothing but their value's gradient refers to

        def contribute(name: str, gi: np.ndarray) -> None:
            target = leaf_targets.get(name)
            if name not in grads:
                if target is not None and gi is not target:
                    e.emit(np.copyto, target, gi)
                    gi = target
                grads[name] = gi
                if target is not None:
                    owned.add(id(gi))
                return
            acc = grads[name]
            if id(acc) in owned or id(acc) in exclusive:
                e.emit(np.add, acc, gi, acc)
            else:
                total = e.buffer(acc.shape, acc.dtype)
                e.emit(np.add, acc, gi, total)
                grads[name] = total
                owned.add(id(total))
                exclusive.add(id(total))

        for n in reversed(self.run):
            if n.id not in path or n.id not in grads:
                continue
            g = grads.pop(n.id)
            k = n.kernel
            wanted = tuple([i in n.grad_inputs and name in path for i, name in enumerate(n.inputs)])
            targets: list = [None] * len(n.inputs)
            for i, name in enumerate(n.inputs):  # a leaf's first gradient goes straight into its array
                if wanted[i] and name in leaf_targets and name not in grads and name not in n.inputs[:i]:
                    targets[i] = leaf_targets[name]
            out = buf[n.id] if k.saves_out else self.meta(n.id)
            args = [buf[name] if i in k.saves_inputs else self.meta(name) for i, name in enumerate(n.inputs)]
            if k.draws is not None:
                args.append(self.draws[n.id])
            g_exclusive = id(g) in exclusive
            exclusive.discard(id(g))
            e.begin()
            results = None
            if n.op not in self.untraced:
                results = self.call(n, "vjp", [g, out, *args, *self.residuals[n.id]], targets,
                                    g if g_exclusive else None, wanted)
            if results is None:
                parts = _adapted_vjp(e, n, g, out, args, wanted, self.residuals[n.id])
            else:
                parts = results[0]
            returned = [id(p) for p in parts if p is not None]
            for i, name in enumerate(n.inputs):
                if not wanted[i]:
                    continue
                gi = parts[i]
                shape = tuple(types[name].shape)
                _check_result(n, i, gi, gi.shape, dtype_of[name])
                if gi.shape != shape:
                    target = targets[i]
                    reduced = target if target is not None and name not in grads else e.buffer(shape, dtype_of[name])
                    _emit_unbroadcast(e, gi, reduced)
                    gi = reduced
                    if reduced is not target:
                        exclusive.add(id(reduced))
                elif returned.count(id(gi)) == 1 and id(gi) not in owned and (
                        (gi is g and g_exclusive) or (gi is not g and _is_fresh(gi, self.static))):
                    exclusive.add(id(gi))
                contribute(name, gi)

        for name, target in leaf_targets.items():
            if name not in grads:  # not on a path to the loss: its gradient is zero
                target[...] = 0
        return Program(self.forward_tape, e.tape, self.inputs, buf[loss_id], input_grads, tuple(sorted(self.native)),
                       tuple(sorted(self.adapted)), tuple(sorted({n.op for n in self.run if len(n.covers) > 1})),
                       e.bytes, buf, seed, e.seed_tape, dict(self.untraced),
                       [(n, self.draws[n.id]) for n in self.run if self.draws.get(n.id) is not None])


_TEMPLATES: dict[tuple, Template | str] = {}  # traces, shared by every lowering (kernels never change)


def _template(n: Step, which: str, args: list, static: tuple, wanted) -> Template | str:
    """The trace of ``n``'s kernel function for arguments like ``args`` (cached), or why there is none."""
    try:
        key = (n.kernel, which, _frozen(n.attrs) if n.attrs else None, static, wanted,
               *[(a.shape, a.dtype, a.strides) if a.__class__ is np.ndarray else signature(a) for a in args])
        hash(key)
    except TypeError:  # an attribute that is no plain value: trace every time
        key = None
    template = _TEMPLATES.get(key) if key is not None else None
    if template is None:
        template = _trace(n, which, args, static, wanted)
        if key is not None:
            if len(_TEMPLATES) > 4096:  # a long-lived worker sees many graphs: keep the cache small
                _TEMPLATES.clear()
            _TEMPLATES[key] = template
    return template


def _trace(n: Step, which: str, args: list, static: tuple, wanted) -> Template | str:
    k = n.kernel
    tracer = Tracer(f"kernel {k.op!r} ({which})")
    traced = [tracer.argument(a) for a in args]
    try:
        with np.errstate(all="ignore"):
            if which == "forward":
                result = k.forward(*traced, **n.attrs)
                results = [result[0], *result[1]] if k.residuals else [result]
            else:
                g, out, *rest = traced
                count = len(n.inputs) + (k.draws is not None)  # a random kernel's draw follows its inputs
                inputs, residuals = rest[:count], rest[count:]
                extra = {"residuals": tuple(residuals)} if k.residuals else {}
                results = list(k.vjp(g, out, *inputs, **extra, **n.attrs))
    except PromotionError as exc:  # the interpreter would hand float64 on, silently: the kernel must be fixed
        raise TypeError(f"{exc} (fix the kernel in runtime/kernels)") from None
    except Exception as exc:  # noqa: BLE001 - anything a trace cannot follow runs through the adapter
        return f"{type(exc).__name__}: {exc}"
    return tracer.template(results, wanted, static)


def _frozen(value):
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


def _check_result(n: Step, what: str | int, array, shape: tuple, dtype: np.dtype) -> None:
    """A kernel's result has the contract's dtype (a wrong one is a kernel bug: say which);
    ``what`` is "forward" or the index of the input whose gradient it is."""
    if array.__class__ is not np.ndarray or array.dtype != dtype or array.shape != tuple(shape):
        what = what if isinstance(what, str) else f"gradient for input {what}"
        got = f"{array.dtype}{list(array.shape)}" if isinstance(array, np.ndarray) else type(array).__name__
        raise TypeError(f"kernel {n.kernel.op!r} ({what}) gave {got}, its contract says {dtype}{list(shape)}: "
                        "fix the kernel (runtime/kernels)")


def _is_fresh(array: np.ndarray, static: set[int]) -> bool:
    """An array the emitter allocated for the step (not a view, not the seed or a constant)."""
    return array.base is None and id(array) not in static


def _emit_unbroadcast(e: Emitter, g: np.ndarray, out: np.ndarray) -> None:
    """Sum ``g`` over the axes broadcasting added or stretched, into ``out`` (the operand's shape)."""
    axes, kept = unbroadcast_plan(g.shape, out.shape)
    e.emit(np.add.reduce, g, axes, None, out.reshape(kept))


def _adapted_forward(n: Step, out: np.ndarray, args: list[np.ndarray], residuals: list) -> tuple:
    forward, attrs, has_residuals = n.kernel.forward, n.attrs, n.kernel.residuals

    def run() -> None:
        result = forward(*args, **attrs)
        if has_residuals:
            result, residuals[:] = result[0], list(result[1])
        np.copyto(out, result)
    return run


def _adapted_vjp(e: Emitter, n: Step, g: np.ndarray, out, args: list, wanted: tuple[bool, ...],
                 residuals: list) -> list:
    """The kernel's own VJP, unbroadcast and copied into gradient buffers."""
    k = n.kernel
    dests = [e.buffer(a.shape, a.dtype) if wanted[i] else None for i, a in enumerate(args[:len(wanted)])]
    vjp, attrs = k.vjp, n.attrs

    def run() -> None:
        extra = {"residuals": tuple(residuals)} if k.residuals else {}
        parts = vjp(g, out, *args, **extra, **attrs)
        for i, dest in enumerate(dests):
            if dest is not None:
                part = parts[i]
                if part is None:
                    dest[...] = 0
                else:
                    np.copyto(dest, unbroadcast(np.asarray(part), dest.shape))
    e.emit(run)
    return dests
