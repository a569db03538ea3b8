"""Semantic validation: references, ids, cycles, op contracts and whole-graph shape inference.

Runs on a built :class:`~graphspec.model.Graph` and reports every problem at once.
Parts already reported as structurally broken (empty ids/ops, unknown types) are
skipped quietly so one mistake yields one issue, not a cascade. A node's references are
checked whatever the state of its op (unknown, missing, too new): a misspelt op and a
dangling input are two mistakes, and both are reported; the node's type stays unknown,
so nothing downstream of it is type-checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import GraphSpecError, Issue, did_you_mean, pointer
from .model import Graph
from .ops import OPS
from .types import FLOAT_DTYPES, ContractViolation, TensorType
from .versioning import parse_version


@dataclass
class Analysis:
    """What validation learnt: every value's type and a topological order of node indices."""

    types: dict[str, TensorType] = field(default_factory=dict)
    order: tuple[int, ...] = ()
    issues: list[Issue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.issues


def analyze(graph: Graph, known_issues: list[Issue] | None = None, unresolved: set[str] = frozenset()) -> Analysis:
    """Validate ``graph``.

    ``known_issues`` (from the structural check) come first; ``unresolved`` names inputs or
    parameters whose declarations were broken: references to them are not dangling, and
    whatever depends on them has an unknown type, so one mistake is reported once.
    """
    issues: list[Issue] = list(known_issues or [])
    types: dict[str, TensorType] = {n: TensorType(s.dtype, s.shape) for n, s in graph.inputs.items()}
    types.update({n: TensorType(p.dtype, p.shape) for n, p in graph.parameters.items()})
    declared = set(graph.inputs) | set(graph.parameters) | set(unresolved)
    doc_version = parse_version(graph.version) or (1, 0)

    # 1. names: unique across inputs, parameters and nodes
    for name in graph.parameters:
        if name in graph.inputs:
            issues.append(Issue("duplicate_id", pointer("parameters", name),
                                f"name {name!r} is used by an input and a parameter", "every name must be unique"))
    producer: dict[str, int] = {}
    for i, node in enumerate(graph.nodes):
        if not node.id:
            continue
        if node.id in declared or node.id in producer:
            first = (f"node {producer[node.id]}" if node.id in producer
                     else ("an input" if node.id in graph.inputs else "a parameter"))
            issues.append(Issue("duplicate_id", pointer("nodes", i, "id"),
                                f"id {node.id!r} is already used by {first}", "every name must be unique"))
            continue
        producer[node.id] = i
    known = declared | set(producer)

    # 2. per node: op, version, arity, attributes; then references, whether or not the op is known
    usable: set[int] = set()
    reported = {issue.location for issue in issues}  # e.g. a reference that is not a valid name
    for i, node in enumerate(graph.nodes):
        op_ok = _check_node(graph, i, doc_version, issues)
        if _check_references(i, node.inputs, known, reported, issues) and op_ok:
            usable.add(i)

    # 3. cycles and order
    order, cyclic = _topological_order(graph, producer, issues)

    # 4. types, in order; a node whose inputs are unknown stays unknown (no cascade)
    for i in order:
        node = graph.nodes[i]
        if i not in usable or i in cyclic or not node.id or producer.get(node.id) != i:
            continue
        in_types = [types.get(ref) for ref in node.inputs]
        if any(t is None for t in in_types):
            continue
        try:
            types[node.id] = OPS[node.op].infer(in_types, node.attrs)  # type: ignore[arg-type]
        except ContractViolation as exc:
            issues.append(Issue(exc.code, pointer("nodes", i, *exc.where), exc.message, exc.hint))

    # 5. outputs and loss
    for name, ref in graph.outputs.items():
        if ref not in known:
            issues.append(Issue("dangling_reference", pointer("outputs", name),
                                f"output {name!r} refers to unknown value {ref!r}", _unknown_value_hint(ref, known)))
    if graph.loss:
        if graph.loss not in graph.outputs:
            issues.append(Issue("missing_loss", "/loss", f"loss {graph.loss!r} is not one of the outputs",
                                did_you_mean(graph.loss, graph.outputs) or
                                f"outputs are: {', '.join(graph.outputs) or 'none'}"))
        else:
            loss_type = types.get(graph.outputs[graph.loss])
            if loss_type is not None and loss_type.shape != ():
                issues.append(Issue("loss_not_scalar", "/loss",
                                    f"the loss must be a scalar, but {graph.outputs[graph.loss]!r} is {loss_type}",
                                    "reduce it with mean or sum, or use a loss op with reduction='mean'"))
            elif loss_type is not None and loss_type.dtype not in FLOAT_DTYPES:
                issues.append(Issue("dtype_mismatch", "/loss", f"the loss must be a float, got {loss_type.dtype}"))
    return Analysis(types=types, order=tuple(order), issues=issues)


def validate_draft(graph: Graph, known_issues: list[Issue] | None = None, unresolved: set[str] = frozenset()) -> Graph:
    """Raise :class:`GraphSpecError` listing every problem; attach the analysis and return the graph."""
    analysis = analyze(graph, known_issues, unresolved)
    if analysis.issues:
        raise GraphSpecError(analysis.issues)
    graph.analysis = analysis
    return graph


def _check_node(graph: Graph, i: int, doc_version, issues: list[Issue]) -> bool:
    """The node's op and what the op's contract asks of it (version, arity, attributes)."""
    node = graph.nodes[i]
    loc = pointer("nodes", i)
    if not node.op:
        return False  # already reported by the structural check
    contract = OPS.get(node.op)
    if contract is None:
        issues.append(Issue("unknown_op", loc + "/op", f"unknown op {node.op!r}",
                            did_you_mean(node.op, OPS) or "see docs/ops.md for the catalogue"))
        return False
    ok = True
    since = parse_version(contract.since)
    if since is not None and since > doc_version:
        issues.append(Issue("op_too_new", loc + "/op",
                            f"op {node.op!r} was introduced in format {contract.since}; "
                            f"the document declares {graph.version}", f"declare version {contract.since}"))
        ok = False
    if not contract.accepts(len(node.inputs)):
        names = ", ".join(contract.inputs) or "none"
        count = f"{contract.arity} or more" if contract.variadic else f"{contract.arity}"
        issues.append(Issue("arity", loc + "/inputs",
                            f"{node.op} takes {count} input(s) ({names}{', ...' if contract.variadic else ''}), "
                            f"got {len(node.inputs)}"))
        ok = False
    for key, value in node.attrs.items():
        attr = contract.attr(key)
        if attr is None:
            issues.append(Issue("unknown_attribute", loc + pointer("attrs", key),
                                f"{node.op} has no attribute {key!r}",
                                did_you_mean(key, [a.name for a in contract.attrs])
                                or f"{node.op} takes: {', '.join(a.name for a in contract.attrs) or 'no attributes'}"))
            ok = False
        elif value is None and attr.default is None and not attr.required:
            continue
        elif value is None and attr.required:
            ok = False  # a tensor that failed to decode, already reported
        else:
            attr_issues: list[Issue] = []
            if not attr.spec.check(_as_tree(value), loc + pointer("attrs", key), attr_issues):
                issues.extend(Issue("invalid_attribute", x.location, f"{node.op}.{key}: {x.message}", x.hint)
                              for x in attr_issues)
                ok = False
    for attr in contract.attrs:
        if attr.required and attr.name not in node.attrs:
            issues.append(Issue("missing_attribute", loc + pointer("attrs", attr.name),
                                f"{node.op} needs attribute {attr.name!r} ({attr.doc})"))
            ok = False
    return ok


def _check_references(i: int, refs: tuple[str, ...], known: set[str], reported: set[str],
                      issues: list[Issue]) -> bool:
    """Whether every input of node ``i`` names a value; dangling ones are reported unless the
    structural check already reported that reference (a non-string, a name breaking the pattern)."""
    ok = True
    for j, ref in enumerate(refs):
        if ref in known:
            continue
        ok = False
        loc = pointer("nodes", i, "inputs", j)
        if ref and loc not in reported:
            issues.append(Issue("dangling_reference", loc,
                                f"{ref!r} is not an input, parameter or node id", _unknown_value_hint(ref, known)))
    return ok


def _unknown_value_hint(ref: str, known: set[str]) -> str:
    return did_you_mean(ref, known) or f"declare {ref!r} under inputs or parameters, or give a node that id"


def _as_tree(value):
    if isinstance(value, np.ndarray):  # decoded tensors were checked while decoding
        return {"dtype": value.dtype.name, "shape": list(value.shape), "data": None}
    return value


def _topological_order(graph: Graph, producer: dict[str, int], issues: list[Issue]) -> tuple[list[int], set[int]]:
    """Kahn's order over node->node edges; each cycle is reported once, at its closing edge."""
    n = len(graph.nodes)
    deps = [[producer[r] for r in node.inputs if r in producer] for node in graph.nodes]
    color = [0] * n  # 0 new, 1 on stack, 2 done
    order: list[int] = []
    cyclic: set[int] = set()
    for start in range(n):
        if color[start]:
            continue
        stack = [(start, 0)]
        color[start] = 1
        path = [start]
        while stack:
            v, k = stack[-1]
            if k < len(deps[v]):
                stack[-1] = (v, k + 1)
                w = deps[v][k]
                if color[w] == 0:
                    color[w] = 1
                    stack.append((w, 0))
                    path.append(w)
                elif color[w] == 1:
                    cycle = path[path.index(w):]
                    cyclic.update(cycle)
                    names = " -> ".join(graph.nodes[c].id for c in reversed(cycle))
                    j = graph.nodes[v].inputs.index(graph.nodes[w].id)
                    issues.append(Issue("cycle", pointer("nodes", v, "inputs", j),
                                        f"cycle: {names} -> {graph.nodes[cycle[-1]].id}",
                                        "a graph must be acyclic; break the loop"))
            else:
                stack.pop()
                path.pop()
                color[v] = 2
                order.append(v)
    return order, cyclic
