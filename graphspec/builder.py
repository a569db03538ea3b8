"""Writing graphs in Python.

    g = GraphBuilder("logreg", dtype="float64")
    x = g.input("x", ["N", 2])
    w = g.param("w", [2, 1], init="zeros")
    b = g.param("b", [1], init="zeros")
    y = g.input("y", ["N", 1])
    a = (x @ w + b).sigmoid(name="a")
    g.output("a", a)
    g.loss(g.bce(a, y, name="L"))
    graph = g.build()          # a validated Graph

Every op of the catalogue is available as ``g.<op>(...)`` and, for ops whose first
input is the value itself, as ``value.<op>(...)``; Python operators map to add, sub,
mul, div, neg, pow and matmul; Python numbers become constant nodes of the other
operand's dtype. Types are inferred as you go, so a shape error is raised at the line
that causes it. A misspelt op method is an ``AttributeError`` with a did-you-mean from the
catalogue; an unknown initializer is refused with the valid ones listed (aliases such as
``"xavier"`` are suggested, not accepted: see ``graphspec.model.INIT_SYNONYMS``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterable, Sequence

import numpy as np

from .errors import GraphSpecError, Issue, did_you_mean, pointer
from .layers import Layers
from .model import Graph, InputSpec, Initializer, Metadata, Node, ParamSpec
from .ops import OPS
from .types import ContractViolation, Dim, TensorType
from .versioning import format_version, parse_version


class Value:
    """A named value in a graph under construction (an input, a parameter or a node)."""

    __array_priority__ = 1000  # numpy scalars on the left defer to our operators

    def __init__(self, builder: "GraphBuilder", name: str, type_: TensorType):
        self.builder = builder
        self.name = name
        self.type = type_

    @property
    def dtype(self) -> str:
        return self.type.dtype

    @property
    def shape(self) -> tuple[Dim, ...]:
        return self.type.shape

    def __repr__(self) -> str:
        return f"Value({self.name!r}, {self.type})"

    def _binary(self, op: str, other: Any, reverse: bool = False) -> "Value":
        other = self.builder.lift(other, self.dtype)
        a, b = (other, self) if reverse else (self, other)
        return self.builder.op(op, a, b)

    def __add__(self, o): return self._binary("add", o)
    def __radd__(self, o): return self._binary("add", o, reverse=True)
    def __sub__(self, o): return self._binary("sub", o)
    def __rsub__(self, o): return self._binary("sub", o, reverse=True)
    def __mul__(self, o): return self._binary("mul", o)
    def __rmul__(self, o): return self._binary("mul", o, reverse=True)
    def __truediv__(self, o): return self._binary("div", o)
    def __rtruediv__(self, o): return self._binary("div", o, reverse=True)
    def __matmul__(self, o): return self._binary("matmul", o)
    def __rmatmul__(self, o): return self._binary("matmul", o, reverse=True)
    def __neg__(self): return self.builder.op("neg", self)

    def __pow__(self, exponent: float):
        if isinstance(exponent, Value):
            raise TypeError("pow takes a constant exponent; write exp(b * log(a)) for a tensor exponent")
        return self.builder.op("pow", self, exponent=float(exponent))

    @property
    def T(self) -> "Value":
        return self.builder.op("transpose", self)

    def __getattr__(self, op: str):
        contract = OPS.get(op)
        if contract is None or contract.arity == 0:
            raise _no_such_op(self, op, [name for name, c in OPS.items() if c.arity])
        return lambda *args, **kw: self.builder.op(op, self, *args, **kw)


def _no_such_op(obj: object, name: str, ops: Iterable[str]) -> AttributeError:
    """The AttributeError for ``obj.name`` (hasattr and getattr defaults keep working), saying
    what was probably meant: a catalogue op (``ops``) or one of ``obj``'s own attributes."""
    owner = type(obj).__name__
    if name.startswith("_"):  # protocol probes (numpy, copy, IPython): no suggestions
        return AttributeError(f"{owner!r} object has no attribute {name!r}")
    ops = list(ops)
    contract = OPS.get(name)
    if contract is not None and contract.arity == 0:
        fix = f"{name} takes no input: write g.{name}(...)"
    else:
        own = [a for a in dir(obj) if not a.startswith("_")]
        fix = did_you_mean(name, [*ops, *own]) or f"the ops are: {', '.join(sorted(ops))} (docs/ops.md)"
    # obj without name: Python does not add its own "Did you mean" (from dir(), blind to the ops)
    return AttributeError(f"{owner!r} has no attribute or op {name!r}; {fix}", obj=obj)


class GraphBuilder(Layers):
    """Builds a graph document op by op; layer helpers (``linear``, ``conv2d``...) come from
    :class:`~graphspec.layers.Layers`."""

    def __init__(self, name: str, *, dtype: str = "float32", metadata: Metadata | None = None):
        self.name = name
        self.dtype = dtype
        self.metadata = metadata or Metadata()
        self.inputs: dict[str, InputSpec] = {}
        self.parameters: dict[str, ParamSpec] = {}
        self.nodes: list[Node] = []
        self.outputs: dict[str, str] = {}
        self.loss_name: str | None = None
        self._values: dict[str, Value] = {}
        self._counts: dict[str, int] = {}

    # -- declarations ----------------------------------------------------------------
    def input(self, name: str, shape: Sequence[Dim], dtype: str | None = None, doc: str | None = None) -> Value:
        spec = InputSpec(dtype or self.dtype, tuple(shape), doc)
        self.inputs[self._claim(name)] = spec
        return self._value(name, TensorType(spec.dtype, spec.shape))

    def param(self, name: str, shape: Sequence[int], *, init: str | Initializer | None = None,
              value: Any = None, dtype: str | None = None, doc: str | None = None, **init_args: float) -> Value:
        """A trainable parameter: ``init="normal", std=0.1`` or ``value=array``."""
        dtype = dtype or self.dtype
        if value is not None:
            array = np.asarray(value, dtype=dtype)
            spec = ParamSpec(dtype, tuple(shape), value=array.reshape(tuple(shape)), doc=doc)
        elif isinstance(init, Initializer):
            spec = ParamSpec(dtype, tuple(shape), init=init, doc=doc)
        else:
            try:
                initializer = Initializer.of(init or "zeros", **init_args)
            except GraphSpecError as exc:  # located within the initializer: place it in the document
                raise GraphSpecError([replace(i, location=pointer("parameters", name, "init") + i.location)
                                      for i in exc.issues]) from None
            spec = ParamSpec(dtype, tuple(shape), init=initializer, doc=doc)
        self.parameters[self._claim(name)] = spec
        return self._value(name, TensorType(dtype, spec.shape))

    def constant(self, value: Any, dtype: str | None = None, name: str | None = None) -> Value:
        array = np.asarray(value, dtype=dtype or self.dtype)
        return self.op("constant", value=array, name=name)

    def lift(self, value: Any, dtype: str) -> Value:
        """A Value as is; a number or array as a constant node of ``dtype``."""
        return value if isinstance(value, Value) else self.constant(value, dtype)

    def op(self, op: str, *inputs: Value, name: str | None = None, **attrs: Any) -> Value:
        contract = OPS.get(op)
        if contract is None:
            raise GraphSpecError([Issue("unknown_op", pointer("nodes", len(self.nodes), "op"),
                                        f"unknown op {op!r}", did_you_mean(op, OPS))])
        for attr in contract.attrs:
            if not attr.required:
                attrs.setdefault(attr.name, attr.default)
        node_id = self._claim(name or self._fresh(op))
        try:
            type_ = contract.infer([self._own(v).type for v in inputs], attrs)
        except ContractViolation as exc:
            self._release(node_id)
            raise GraphSpecError([Issue(exc.code, pointer("nodes", len(self.nodes), *exc.where),
                                        f"{node_id}: {exc.message}", exc.hint)]) from None
        self.nodes.append(Node(node_id, op, tuple(v.name for v in inputs), attrs))
        return self._value(node_id, type_)

    def __getattr__(self, op: str):
        if op in OPS:
            return lambda *args, **kw: self.op(op, *(self.lift(a, self.dtype) for a in args), **kw)
        raise _no_such_op(self, op, OPS)

    def output(self, name: str, value: Value) -> Value:
        self.outputs[name] = self._own(value).name
        return value

    def loss(self, value: Value, name: str = "loss") -> Value:
        self.output(name, value)
        self.loss_name = name
        return value

    def build(self) -> Graph:
        """The finished, validated graph (defaults explicit, exactly as a reader would see it)."""
        from .codec import validate

        graph = Graph(self.name, dict(self.inputs), dict(self.parameters), list(self.nodes), dict(self.outputs),
                      self.loss_name or "", self.metadata, version=self._version())
        try:
            return validate(graph)
        except GraphSpecError as exc:
            if self.loss_name is not None:
                raise
            # the document has no loss field ("required field 'loss' is missing"): say how to add one
            raise GraphSpecError([replace(i, hint="call g.loss(value) with the scalar to minimise")
                                  if i.location == "/loss" else i for i in exc.issues]) from None

    # -- internals -------------------------------------------------------------------
    def _version(self) -> str:
        """The oldest format version that has every op the graph uses: a graph of 1.0 ops stays a
        1.0 document (same bytes, same id, readable by a 1.0 reader)."""
        needed = [parse_version(OPS[n.op].since) for n in self.nodes if n.op in OPS]
        return format_version(max([(1, 0), *needed]))

    def _claim(self, name: str) -> str:
        if name in self._values or name in self.inputs or name in self.parameters:
            raise ValueError(f"name {name!r} is already used in graph {self.name!r}")
        self._values[name] = None  # type: ignore[assignment]
        return name

    def _release(self, name: str) -> None:
        self._values.pop(name, None)

    def _fresh(self, op: str) -> str:
        while True:
            self._counts[op] = self._counts.get(op, 0) + 1
            candidate = f"{op}_{self._counts[op]}"
            if candidate not in self._values:
                return candidate

    def _value(self, name: str, type_: TensorType) -> Value:
        value = Value(self, name, type_)
        self._values[name] = value
        return value

    def _own(self, value: Any) -> Value:
        if not isinstance(value, Value) or value.builder is not self:
            raise TypeError(f"expected a Value of graph {self.name!r}, got {value!r}")
        return value
