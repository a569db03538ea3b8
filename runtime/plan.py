"""Compiling a validated graph into an execution plan, and running it forward and backward.

A :class:`Plan` is made once per graph: the topological order, each node's kernel, which
forward values the backward pass will read (everything else is freed as soon as its last
consumer has run), and which nodes lie on a path from a parameter to the loss (only those
get VJP calls). :meth:`Plan.forward` returns a :class:`Run`; :meth:`Run.backward` walks
the plan in reverse, seeding d(loss)/d(loss) = 1, calling each kernel's VJP, summing
gradients where a value fans out and unbroadcasting them to each operand's shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

import graphspec
from graphspec import OPS, Graph
from graphspec.types import FLOAT_DTYPES

from . import analysis
from .errors import ExecutionError, InputError, MissingKernelError
from .kernels import KERNELS, Kernel, Meta, unbroadcast
from .noise import Noise, draw_for

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class Step:
    """One node of the plan."""

    index: int  # position in graph.nodes (for error locations)
    id: str
    op: str
    kernel: Kernel
    inputs: tuple[str, ...]
    attrs: dict[str, Any]
    grad_inputs: tuple[int, ...]  # inputs this op's contract differentiates
    # a fused step (runtime.compiled.fusions) stands for these plan steps; a plain one for itself
    fused_from: tuple[str, ...] = ()

    # what the compiled engine's lowering reads of a node
    @property
    def saves_out(self) -> bool:
        return self.kernel.saves_out

    @property
    def saves_inputs(self) -> tuple[int, ...]:
        return self.kernel.saves_inputs

    @property
    def covers(self) -> tuple[str, ...]:
        return self.fused_from or (self.id,)


class Plan:
    """A graph compiled for execution. Cheap to run many times; holds no per-run state."""

    def __init__(self, graph: Graph):
        if graph.analysis is None:
            graph = graphspec.validate(graph)
        self.graph = graph
        self.types = graph.analysis.types
        missing = sorted({n.op for n in graph.nodes if n.op not in KERNELS})
        if missing:
            raise MissingKernelError(f"no runtime kernel for op(s) {', '.join(missing)}")
        self.steps: tuple[Step, ...] = tuple(self._step(i) for i in graph.analysis.order)
        # whether a training step draws random numbers (the graph has dropout): read every step
        self.random = any(step.kernel.draws is not None for step in self.steps)
        self.loss_node = graph.outputs[graph.loss]
        self.param_names = tuple(graph.parameters)
        self.input_names = tuple(graph.inputs)
        self._grad_paths: dict[bool, frozenset[str]] = {}

    def _step(self, index: int) -> Step:
        node = self.graph.nodes[index]
        attrs = {k: v for k, v in node.attrs.items()}
        return Step(index, node.id, node.op, KERNELS[node.op], node.inputs, attrs,
                    OPS[node.op].gradient_inputs(len(node.inputs)))

    # -- analysis ----------------------------------------------------------------------
    def grad_path(self, include_inputs: bool = False) -> frozenset[str]:
        """Values that depend on a parameter (or an input) and lead to the loss: they get gradients."""
        if include_inputs not in self._grad_paths:
            sources = list(self.param_names) + (list(self.input_names) if include_inputs else [])
            self._grad_paths[include_inputs] = analysis.grad_path(self.steps, sources, self.loss_node)
        return self._grad_paths[include_inputs]

    def _saved_for_backward(self, path: frozenset[str]) -> set[str]:
        return analysis.saved_for_backward(self.steps, path)

    # -- inputs --------------------------------------------------------------------------
    def check_inputs(self, inputs: Mapping[str, Any], params: Mapping[str, Any], *,
                     only: str | None = None) -> Arrays:
        """Bind inputs and parameters to arrays, checking names, dtypes, shapes and finiteness.
        ``only="input"`` or ``"parameter"`` checks and binds just that kind (the other is
        passed as None)."""
        bound: Arrays = {}
        symbols: dict[str, tuple[int, str]] = {}
        for kind, given, declared in (("input", inputs, self.graph.inputs), ("parameter", params,
                                                                             self.graph.parameters)):
            if only is not None and kind != only:
                continue
            try:
                # Unexpected names first: a misspelt key is also a missing one; name the misspelling.
                for name in given:
                    if name not in declared:
                        hint = graphspec.errors.did_you_mean(name, declared)
                        raise InputError(f"unexpected {kind} {name!r}" + (f" ({hint})" if hint else "")
                                         + f"; the graph's {kind}s are: {', '.join(declared) or 'none'}", name=name)
                for name, spec in declared.items():
                    if name not in given:
                        raise InputError(f"missing {kind} {name!r} ({spec.dtype}{list(spec.shape)}); give every "
                                         f"{kind}: {', '.join(declared)}", name=name,
                                         expected=f"{spec.dtype}{list(spec.shape)}")
                    bound[name] = _bind(kind, name, given[name], spec.dtype, tuple(spec.shape), symbols)
            except InputError as exc:
                exc.kind = kind
                raise
        return bound

    # -- running -------------------------------------------------------------------------
    def forward(self, inputs: Mapping[str, Any], params: Mapping[str, Any], *, keep_values: bool = False,
                with_grad: bool = True, grad_inputs: bool = False, noise: Noise | None = None) -> "Run":
        """Evaluate every output. ``keep_values`` keeps every node's value (for explanations);
        ``with_grad=False`` keeps nothing for a backward pass; ``grad_inputs`` prepares
        gradients with respect to the inputs as well; ``noise`` makes it a training step's
        forward pass (dropout drops: :mod:`runtime.noise`)."""
        values = self.check_inputs(inputs, params)
        return self._run(values, keep_values=keep_values, with_grad=with_grad, grad_inputs=grad_inputs, noise=noise)

    def _run(self, values: Arrays, *, keep_values: bool, with_grad: bool, grad_inputs: bool,
             noise: Noise | None = None) -> "Run":
        path = self.grad_path(grad_inputs) if with_grad else frozenset()
        keep = self._saved_for_backward(path) | set(self.graph.outputs.values())
        remaining = _consumer_counts(self.steps)
        shapes = {name: Meta(v.shape, v.dtype) for name, v in values.items()}
        residuals: dict[str, tuple] = {}  # what kernels with residuals keep for their VJP
        draws: Arrays = {}  # what random kernels drew, for their VJP
        with np.errstate(all="ignore"):  # non-finite results are detected explicitly, not warned about
            for step in self.steps:
                args = [values[name] for name in step.inputs]
                if step.kernel.draws is not None:
                    args.append(draws.setdefault(step.id, draw_for(noise, step.kernel, step.id, args[0], step.attrs)))
                try:
                    out = step.kernel.forward(*args, **step.attrs)
                except (ValueError, IndexError) as exc:
                    raise ExecutionError(str(exc), node=step.id, op=step.op) from None
                if step.kernel.residuals:
                    out, kept = out
                    if step.id in path:
                        residuals[step.id] = kept
                out = np.asarray(out)
                values[step.id] = out
                shapes[step.id] = Meta(out.shape, out.dtype)
                if not keep_values:
                    for name in set(step.inputs):
                        remaining[name] -= 1
                        if remaining[name] == 0 and name not in keep and name in values:
                            del values[name]  # no later node and no VJP reads it
        outputs = {name: values[ref] for name, ref in self.graph.outputs.items()}
        return Run(self, values, shapes, outputs, path, grad_inputs, with_grad, residuals, draws)


def _consumer_counts(steps: Iterable[Step]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for step in steps:
        for name in set(step.inputs):
            counts[name] = counts.get(name, 0) + 1
    return counts


_DTYPES = {name: np.dtype(name) for name in ("float16", "float32", "float64", "int32", "int64", "bool", "uint8",
                                                "int8", "int16", "uint16", "uint32", "uint64")}


def _bind(kind: str, name: str, value: Any, dtype: str, shape: tuple, symbols: dict) -> np.ndarray:
    expected = f"{dtype}{list(shape)}"

    def refuse(message: str, array: np.ndarray | None = None) -> InputError:
        actual = None if array is None else f"{array.dtype.name}{list(array.shape)}"  # dtype.name is slow
        return InputError(message, name=name, expected=expected, actual=actual)

    if isinstance(value, np.ndarray):
        if value.dtype != _DTYPES.get(dtype) and value.dtype.name != dtype:  # the fast test first
            raise refuse(f"{kind} {name!r} is {value.dtype.name}, the graph declares {dtype} "
                         f"(convert it with .astype({dtype!r}); chainrule never casts silently)", value)
        array = value
    else:
        try:
            array = np.asarray(value, dtype=dtype)
        except (TypeError, ValueError, OverflowError) as exc:
            raise refuse(f"{kind} {name!r} cannot be read as {dtype}: {exc}") from None
    if array.ndim != len(shape):
        raise refuse(f"{kind} {name!r} has shape {list(array.shape)}, expected {list(shape)}", array)
    for axis, (want, got) in enumerate(zip(shape, array.shape)):
        if isinstance(want, int) and want != got:
            raise refuse(f"{kind} {name!r} has shape {list(array.shape)}, expected {list(shape)} "
                         f"(axis {axis} is {got}, not {want})", array)
        if isinstance(want, str):
            if got == 0:
                raise refuse(f"{kind} {name!r} is empty along {want!r} (axis {axis})", array)
            first = symbols.setdefault(want, (got, name))
            if first[0] != got:
                raise refuse(f"{kind} {name!r} has {want}={got} on axis {axis}, but {first[1]!r} has "
                             f"{want}={first[0]}", array)
    if dtype in FLOAT_DTYPES and array.size and not np.isfinite(array).all():
        raise refuse(f"{kind} {name!r} contains NaN or inf", array)
    return array


@dataclass
class Run:
    """The result of one forward pass; call :meth:`backward` for gradients."""

    plan: Plan
    values: Arrays
    shapes: dict[str, Meta]
    outputs: Arrays
    grad_path: frozenset[str]
    grad_inputs: bool
    with_grad: bool = True
    residuals: dict[str, tuple] = field(default_factory=dict)
    draws: Arrays = field(default_factory=dict)

    @property
    def loss(self) -> float:
        return float(self.outputs[self.plan.graph.loss])

    def backward(self, *, keep_grads: bool = False) -> Arrays:
        """d(loss)/d(every parameter) (and every input when the run was made with
        ``grad_inputs``); with ``keep_grads`` also d(loss)/d(every node on the path)."""
        plan = self.plan
        if not self.with_grad:
            raise InputError("this run was made with with_grad=False; run forward again to get gradients")
        loss_value = self.values[plan.loss_node]
        # no parameter reaching the loss is legal: every gradient is then zero
        grads: Arrays = {plan.loss_node: np.ones_like(loss_value)} if self.grad_path else {}
        kept: Arrays = {}
        with np.errstate(all="ignore"):
            for step in reversed(plan.steps):
                g = grads.pop(step.id, None)
                if g is None or step.id not in self.grad_path:
                    continue
                if keep_grads:
                    kept[step.id] = g
                args = [self.values[name] if i in step.kernel.saves_inputs else self.shapes[name]
                        for i, name in enumerate(step.inputs)]
                input_grads = self.vjp(step, g, args)
                for i in step.grad_inputs:
                    name = step.inputs[i]
                    if name not in self.grad_path or input_grads[i] is None:
                        continue
                    gi = unbroadcast(np.asarray(input_grads[i]), self.shapes[name].shape)
                    grads[name] = grads[name] + gi if name in grads else gi  # fan-out: gradients add
        wanted = plan.param_names + (plan.input_names if self.grad_inputs else ())
        result: Arrays = {}
        handed_out: set[int] = set()
        for name in wanted:
            grad = _owned(grads.get(name), self.shapes[name])
            # a pass-through VJP (add) hands one array to both operands: each caller gets its own
            if id(grad) in handed_out:
                grad = grad.copy()
            handed_out.add(id(grad))
            result[name] = grad
        result.update(kept)
        return result

    def vjp(self, step: Step, g: np.ndarray, args: list) -> tuple:
        """``step``'s VJP at ``g``, with its output and residuals from this run."""
        out = self.values[step.id] if step.kernel.saves_out else self.shapes[step.id]
        if step.kernel.draws is not None:
            args = [*args, self.draws[step.id]]
        if step.kernel.residuals:
            return step.kernel.vjp(g, out, *args, residuals=self.residuals[step.id], **step.attrs)
        return step.kernel.vjp(g, out, *args, **step.attrs)


def _owned(grad: np.ndarray | None, meta: Meta) -> np.ndarray:
    """A fresh, writable, contiguous gradient (zeros when the value does not reach the loss)."""
    if grad is None:
        return np.zeros(meta.shape, dtype=meta.dtype)
    if grad.flags.writeable and grad.flags.c_contiguous and grad.flags.owndata:
        return grad
    return np.array(grad, dtype=meta.dtype, order="C")


def compile(graph: Graph) -> Plan:  # noqa: A001 - the natural name for what it does
    """Compile a validated graph (or one that validates) into a :class:`Plan`."""
    return Plan(graph)
