"""The graph document model, defined once.

``DOCUMENT`` is the structural definition (it checks parsed trees and generates the
JSON Schema); the dataclasses are the in-memory form; ``from_tree`` / ``to_tree``
convert between them. Tensor carriers (nested lists, base64, msgpack bytes) are
chosen by the caller through a tensor encoder, so one model serves every encoding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .errors import GraphSpecError, Issue, pointer
from .ops import OPS
from .structure import (
    Any_, Bool, Const, Enum, Field, Int, Issues, List, Map, Null, Num, Obj, OneOf, Ref, Str, exactly_one_of,
)
from .tensors import MAX_TENSOR_RANK, TENSOR, TensorDecodeError, decode_tensor
from .types import DTYPES, FLOAT_DTYPES, Shape, format_shape
from .versioning import CURRENT_VERSION, FORMAT_ID, format_version

NAME = r"[A-Za-z_][A-Za-z0-9_.:\-]{0,127}"
SYMBOL = r"[A-Za-z_][A-Za-z0-9_]{0,31}"
MAX_NODE_INPUTS = 16
# Far above any element limit, and small enough that every count stays an exact int64.
MAX_DIM = 2**40

# -- structure ---------------------------------------------------------------------------

DIM = OneOf((Int(minimum=1, maximum=MAX_DIM), Str(pattern=SYMBOL), Null()),
            description="a size, a symbolic size such as \"N\", or null (unknown)")

INPUT = Ref("input", Obj({
    "dtype": Field(Enum(DTYPES), required=True),
    "shape": Field(List(DIM, max_items=MAX_TENSOR_RANK), required=True),
    "doc": Field(Str(max_length=2000)),
}, description="A value fed at run time; dims may be symbolic (the batch)."))

INIT_KINDS: dict[str, dict[str, tuple[Any, Any]]] = {
    # kind -> {argument: (spec, default)}; a default of ... means required
    "zeros": {},
    "ones": {},
    "constant": {"value": (Num(), ...)},
    "normal": {"mean": (Num(), 0.0), "std": (Num(exclusive_minimum=0.0), 1.0)},
    "uniform": {"low": (Num(), -1.0), "high": (Num(), 1.0)},
    "glorot": {"gain": (Num(exclusive_minimum=0.0), 1.0)},
}
# Names other libraries give these kinds. Not accepted, only suggested: a document (and the
# builder, which writes documents) has one spelling per initializer, so two graphs that mean
# the same thing hash the same, and no alias guesses for the caller ("xavier" is uniform in
# some libraries and normal in others; "glorot" here is the uniform one).
INIT_SYNONYMS: dict[str, str] = {"xavier": "glorot", "xavier_uniform": "glorot", "glorot_uniform": "glorot"}
INIT_KIND = Enum(tuple(INIT_KINDS), synonyms=INIT_SYNONYMS)


def _init_rule(value: dict, loc: str, issues: Issues) -> bool:
    kind = value["kind"]
    allowed = INIT_KINDS[kind]
    ok = True
    for key in value:
        if key != "kind" and key not in allowed:
            issues.append(Issue("unknown_field", loc + pointer(key),
                                f"initializer {kind!r} takes no argument {key!r}",
                                f"{kind} takes: {', '.join(allowed) or 'no arguments'}"))
            ok = False
    for key, (_, default) in allowed.items():
        if default is ... and key not in value:
            issues.append(Issue("missing_field", loc + pointer(key), f"initializer {kind!r} needs {key!r}"))
            ok = False
    if ok and kind == "uniform" and value.get("low", -1.0) >= value.get("high", 1.0):
        issues.append(Issue("invalid_value", loc + "/high", "uniform needs low < high"))
        ok = False
    return ok


def _init_kind_schemas() -> list[dict]:
    """JSON Schema twin of _init_rule: each kind admits only its own arguments."""
    rules = []
    for kind, args in INIT_KINDS.items():
        then: dict = {"propertyNames": {"enum": ["kind", *args]}}
        required = [a for a, (_, default) in args.items() if default is ...]
        if required:
            then["required"] = required
        rules.append({"if": {"properties": {"kind": {"const": kind}}}, "then": then})
    return rules


INIT = Ref("initializer", Obj(
    {"kind": Field(INIT_KIND, required=True),
     **{arg: Field(spec) for args in INIT_KINDS.values() for arg, (spec, _) in args.items()}},
    description="How a parameter is initialised: zeros, ones, constant(value), normal(mean, std), "
                "uniform(low, high), glorot(gain) (Glorot/Xavier uniform).",
    rule=_init_rule,
    extra_schema={"allOf": _init_kind_schemas()},
))


PARAMETER = Ref("parameter", Obj({
    "dtype": Field(Enum(FLOAT_DTYPES), required=True),
    "shape": Field(List(Int(minimum=1, maximum=MAX_DIM), max_items=MAX_TENSOR_RANK), required=True),
    "init": Field(INIT),
    "value": Field(TENSOR),
    "doc": Field(Str(max_length=2000)),
}, description="A trainable tensor: exactly one of init or value.", rule=exactly_one_of("init", "value"),
    extra_schema={"oneOf": [{"required": ["init"]}, {"required": ["value"]}]}))

NODE = Ref("node", Obj({
    "id": Field(Str(pattern=NAME, pattern_code="invalid_name"), required=True),
    "op": Field(Str(min_length=1, max_length=64), required=True),
    "inputs": Field(List(Str(pattern=NAME, pattern_code="invalid_name"), max_items=MAX_NODE_INPUTS)),
    "attrs": Field(Map(Any_(), key_pattern=r"[a-z_][a-z0-9_]{0,63}")),
    "doc": Field(Str(max_length=2000)),
}, description="One op application. Inputs name inputs, parameters or other nodes' ids."))

METADATA = Obj({
    "description": Field(Str(max_length=20000)),
    "author": Field(Str(max_length=500)),
    "created": Field(Str(pattern=r"[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9:.]+(Z|[+-][0-9]{2}:?[0-9]{2})?)?",
                         description="ISO 8601 date or date-time")),
    "tags": Field(Map(OneOf((Str(max_length=1000), Num(), Bool(), Null())), key_pattern=r"[^\x00-\x1f]{1,128}",
                      max_items=256, description="free-form labels")),
})

DOCUMENT = Obj({
    "format": Field(Const(FORMAT_ID), required=True),
    "version": Field(Str(pattern=r"(0|[1-9][0-9]{0,5})\.(0|[1-9][0-9]{0,5})"), required=True),
    "name": Field(Str(min_length=1, max_length=200), required=True),
    "metadata": Field(METADATA),
    "inputs": Field(Map(INPUT, key_pattern=NAME)),
    "parameters": Field(Map(PARAMETER, key_pattern=NAME)),
    "nodes": Field(List(NODE), required=True),
    "outputs": Field(Map(Str(pattern=NAME, pattern_code="invalid_name"), key_pattern=NAME, min_items=1),
                     required=True),
    "loss": Field(Str(pattern=NAME, pattern_code="invalid_name"), required=True),
}, description="A chainrule computational graph.")


# -- in-memory model ---------------------------------------------------------------------

@dataclass
class InputSpec:
    dtype: str
    shape: Shape
    doc: str | None = None


@dataclass
class Initializer:
    kind: str
    args: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, kind: str, **args: float) -> "Initializer":
        """An initializer of ``kind`` with its default arguments filled in.

        An unknown kind raises :class:`GraphSpecError` located at ``/kind`` (within the
        initializer), with the message a document with that kind gets.
        """
        issues: list[Issue] = []
        if not INIT_KIND.check(kind, "/kind", issues):
            raise GraphSpecError(issues)
        defaults = {k: d for k, (_, d) in INIT_KINDS[kind].items() if d is not ...}
        return cls(kind, {**defaults, **{k: float(v) for k, v in args.items()}})


@dataclass
class ParamSpec:
    dtype: str
    shape: tuple[int, ...]
    init: Initializer | None = None
    value: np.ndarray | None = None
    doc: str | None = None


@dataclass
class Node:
    id: str
    op: str
    inputs: tuple[str, ...] = ()
    attrs: dict[str, Any] = field(default_factory=dict)
    doc: str | None = None


@dataclass
class Metadata:
    description: str | None = None
    author: str | None = None
    created: str | None = None
    tags: dict[str, Any] = field(default_factory=dict)


@dataclass(eq=False)
class Graph:
    """A graph document in memory. Compare graphs with ``==`` (canonical content)."""

    name: str
    inputs: dict[str, InputSpec]
    parameters: dict[str, ParamSpec]
    nodes: list[Node]
    outputs: dict[str, str]
    loss: str
    metadata: Metadata = field(default_factory=Metadata)
    version: str = format_version(CURRENT_VERSION)
    # Filled by validation: inferred type of every value and a topological order of nodes.
    analysis: Any = field(default=None, repr=False)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Graph):
            return NotImplemented
        from .codec import canonical_bytes

        return canonical_bytes(self) == canonical_bytes(other)

    def node(self, node_id: str) -> Node:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)

    def summary(self) -> dict:
        """A short description: inputs, parameters with element counts, nodes by op, loss."""
        ops: dict[str, int] = {}
        for n in self.nodes:
            ops[n.op] = ops.get(n.op, 0) + 1
        params = {name: {"dtype": p.dtype, "shape": list(p.shape), "count": math.prod(p.shape)}
                  for name, p in self.parameters.items()}
        return {
            "name": self.name,
            "version": self.version,
            "inputs": {k: {"dtype": v.dtype, "shape": list(v.shape)} for k, v in self.inputs.items()},
            "parameters": params,
            "parameter_count": sum(p["count"] for p in params.values()),
            "nodes": len(self.nodes),
            "ops": ops,
            "outputs": dict(self.outputs),
            "loss": self.loss,
        }


# -- tree <-> model ----------------------------------------------------------------------

TensorEncoder = Callable[[np.ndarray], dict]


def to_tree(graph: Graph, encode_tensor: TensorEncoder, *, explicit_defaults: bool = True) -> dict:
    """The document as plain data; tensors go through ``encode_tensor``.

    With ``explicit_defaults`` (documents people read) every attribute and initializer
    argument is written out; without it (the canonical form) values equal to their
    defaults are left out.
    """
    tree: dict[str, Any] = {"format": FORMAT_ID, "version": graph.version, "name": graph.name}
    meta = {k: v for k, v in (("description", graph.metadata.description), ("author", graph.metadata.author),
                              ("created", graph.metadata.created)) if v is not None}
    if graph.metadata.tags:
        meta["tags"] = dict(graph.metadata.tags)
    if meta:
        tree["metadata"] = meta
    tree["inputs"] = {name: _drop_none({"dtype": s.dtype, "shape": list(s.shape), "doc": s.doc})
                      for name, s in graph.inputs.items()}
    params = {}
    for name, p in graph.parameters.items():
        entry: dict[str, Any] = {"dtype": p.dtype, "shape": list(p.shape)}
        if p.value is not None:
            entry["value"] = encode_tensor(p.value)
        else:
            assert p.init is not None
            defaults = INIT_KINDS.get(p.init.kind, {})
            entry["init"] = {"kind": p.init.kind, **{
                k: v for k, v in p.init.args.items()
                if explicit_defaults or k not in defaults or defaults[k][1] is ... or v != defaults[k][1]}}
        if p.doc is not None:
            entry["doc"] = p.doc
        params[name] = entry
    tree["parameters"] = params
    tree["nodes"] = [_node_tree(n, encode_tensor, explicit_defaults) for n in graph.nodes]
    tree["outputs"] = dict(graph.outputs)
    if graph.loss:  # no loss yet (a builder without g.loss): the document lacks the field, and says so
        tree["loss"] = graph.loss
    return tree


def _node_tree(node: Node, encode_tensor: TensorEncoder, explicit_defaults: bool) -> dict:
    contract = OPS.get(node.op)
    attrs = {}
    for key, value in node.attrs.items():
        if isinstance(value, np.ndarray):
            attrs[key] = encode_tensor(value)
            continue
        attr = contract.attr(key) if contract else None
        if explicit_defaults or attr is None or attr.required or value != attr.default \
                or type(value) is not type(attr.default):
            attrs[key] = value
    return _drop_none({"id": node.id, "op": node.op, "inputs": list(node.inputs), "attrs": attrs, "doc": node.doc})


def _drop_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


@dataclass
class Draft:
    """A document read leniently: the model, the problems found so far, and the names of
    inputs/parameters whose declarations are broken (known to exist, type unknown)."""

    graph: Graph | None
    issues: list[Issue]
    unresolved: set[str]


def from_tree(tree: dict, *, max_tensor_elements: int) -> Draft:
    """Check a parsed tree's structure and build the model, collecting every issue.

    The model is built even when parts are broken (they are left out or marked
    unknown), so that semantic validation can still report the rest at once.
    """
    issues: list[Issue] = []
    DOCUMENT.check(tree, "", issues)
    if not isinstance(tree, dict):
        return Draft(None, issues, set())
    builder = _Builder(issues, max_tensor_elements)
    graph = builder.graph(tree)
    return Draft(graph, issues, builder.broken)


class _Builder:
    def __init__(self, issues: list[Issue], max_tensor_elements: int):
        self.issues = issues
        self.max_elements = max_tensor_elements
        self.broken: set[str] = set()  # names whose declaration is broken: their type is unknown

    def reported(self, loc: str) -> bool:
        """Whether the structural check already found a problem at or below ``loc``."""
        return any(i.location == loc or i.location.startswith(loc + "/") for i in self.issues)

    def tensor(self, obj: Any, loc: str) -> np.ndarray | None:
        if self.reported(loc):
            return None  # decoding would only say it again
        try:
            return decode_tensor(obj, loc, max_elements=self.max_elements)
        except TensorDecodeError as exc:
            if exc.issue not in self.issues:
                self.issues.append(exc.issue)
            return None

    def graph(self, tree: dict) -> Graph:
        inputs = {}
        for name, spec in _dict(tree.get("inputs")).items():
            if isinstance(spec, dict) and spec.get("dtype") in DTYPES and _valid_shape(spec.get("shape"), True):
                inputs[name] = InputSpec(spec["dtype"], tuple(spec["shape"]), _str(spec.get("doc")))
            else:
                self.broken.add(name)
        params = {}
        for name, spec in _dict(tree.get("parameters")).items():
            param = self.parameter(name, spec) if isinstance(spec, dict) else None
            if param is None:
                self.broken.add(name)
            else:
                params[name] = param
        nodes = [self.node(i, n) for i, n in enumerate(_list(tree.get("nodes")))]
        meta = _dict(tree.get("metadata"))
        return Graph(
            name=_str(tree.get("name")) or "",
            inputs=inputs,
            parameters=params,
            nodes=nodes,
            outputs={k: v for k, v in _dict(tree.get("outputs")).items() if isinstance(v, str)},
            loss=_str(tree.get("loss")) or "",
            metadata=Metadata(_str(meta.get("description")), _str(meta.get("author")), _str(meta.get("created")),
                              dict(_dict(meta.get("tags")))),
            version=_str(tree.get("version")) or format_version(CURRENT_VERSION),
        )

    def parameter(self, name: str, spec: dict) -> ParamSpec | None:
        loc = pointer("parameters", name)
        if self.reported(loc):
            return None
        dtype, shape = spec.get("dtype"), spec.get("shape")
        if dtype not in FLOAT_DTYPES or not _valid_shape(shape, False):
            return None
        shape = tuple(shape)
        count = math.prod(shape)
        if count > self.max_elements:
            self.issues.append(Issue("too_large", loc + "/shape",
                                     f"parameter has {count} elements; the limit is {self.max_elements}"))
            return None
        if "value" in spec:
            value = self.tensor(spec["value"], loc + "/value")
            if value is None:
                return None
            if value.dtype.name != dtype or value.shape != shape:
                self.issues.append(Issue(
                    "shape_mismatch" if value.dtype.name == dtype else "dtype_mismatch", loc + "/value",
                    f"stored value is {value.dtype.name}{format_shape(value.shape)} but the parameter is declared "
                    f"{dtype}{format_shape(shape)}"))
                return None
            return ParamSpec(dtype, shape, value=value, doc=_str(spec.get("doc")))
        init = spec.get("init")
        if not isinstance(init, dict) or not isinstance(init.get("kind"), str) or init["kind"] not in INIT_KINDS:
            return None
        args = {k: v for k, v in init.items() if k != "kind" and k in INIT_KINDS[init["kind"]]
                and isinstance(v, (int, float)) and not isinstance(v, bool)}
        try:
            initializer = Initializer.of(init["kind"], **args)
        except TypeError:
            return None
        return ParamSpec(dtype, shape, init=initializer, doc=_str(spec.get("doc")))

    def node(self, index: int, raw: Any) -> Node:
        """Always returns a Node; broken fields become '' (id/op) so analysis can skip them."""
        loc = pointer("nodes", index)
        raw = raw if isinstance(raw, dict) else {}
        node_id = raw.get("id") if isinstance(raw.get("id"), str) else ""
        op = raw.get("op") if isinstance(raw.get("op"), str) else ""
        inputs = tuple(i if isinstance(i, str) else "" for i in _list(raw.get("inputs")))
        attrs = dict(_dict(raw.get("attrs")))
        if not isinstance(raw.get("inputs", []), list) or not isinstance(raw.get("attrs", {}), dict):
            op = ""  # already reported by the structural check; arity/attrs would only echo it
        contract = OPS.get(op)
        if contract is not None:
            for attr in contract.attrs:
                if attr.spec is TENSOR and attr.name in attrs:
                    attrs[attr.name] = self.tensor(attrs[attr.name], loc + pointer("attrs", attr.name))
                    if attrs[attr.name] is None:
                        op = ""  # value undecodable: already reported, type unknown
                elif attr.name not in attrs and not attr.required:
                    attrs[attr.name] = attr.default
                elif isinstance(attr.spec, Num) and isinstance(attrs.get(attr.name), int) \
                        and not isinstance(attrs[attr.name], bool) and abs(attrs[attr.name]) < 2**1023:
                    attrs[attr.name] = float(attrs[attr.name])  # 2 and 2.0 are one document
        return Node(node_id, op, inputs, attrs, _str(raw.get("doc")))


def _dict(v: Any) -> dict:
    return v if isinstance(v, dict) else {}


def _list(v: Any) -> list:
    return v if isinstance(v, list) else []


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _valid_shape(shape: Any, symbolic: bool) -> bool:
    if not isinstance(shape, list) or len(shape) > MAX_TENSOR_RANK:
        return False
    for d in shape:
        if isinstance(d, bool):
            return False
        if isinstance(d, int):
            if d < 1:
                return False
        elif not (symbolic and (d is None or isinstance(d, str))):
            return False
    return True
