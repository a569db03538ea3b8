"""Backpropagation made visible: every node's forward value and the gradient that flowed back to it.

    ex = runtime.explain(graph, inputs, params)
    print(ex.to_text())          # a table, in execution order
    ex.to_dot()                  # Graphviz: the picture learners draw by hand, with values and gradients
    ex.to_dict()                 # plain data (for the HTTP API)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from graphspec import Graph

from .plan import Plan

# Tensors up to this many elements are shown in full; larger ones as shape and summary.
SHOW_ELEMENTS = 6


@dataclass(frozen=True)
class Row:
    name: str
    kind: str  # "input", "parameter" or "node"
    op: str | None
    inputs: tuple[str, ...]
    value: np.ndarray
    grad: np.ndarray | None  # d(loss)/d(this value); None where no gradient flows (labels, constants)


@dataclass(frozen=True)
class Explanation:
    graph_name: str
    loss_name: str
    loss: float
    rows: tuple[Row, ...]

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)

    def to_text(self) -> str:
        header = ("value", "op(inputs)", "forward value", "gradient d(loss)/d(value)")
        body = [(r.name, r.kind if r.op is None else f"{r.op}({', '.join(r.inputs)})", format_tensor(r.value),
                 "—" if r.grad is None else format_tensor(r.grad)) for r in self.rows]
        widths = [max(len(line[i]) for line in [header, *body]) for i in range(4)]
        lines = [f"{self.graph_name}: {self.loss_name} = {self.loss:.6g}", ""]
        for line in [header, tuple("-" * w for w in widths), *body]:
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())
        return "\n".join(lines) + "\n"

    def to_dot(self) -> str:
        lines = [f"digraph {_quote(self.graph_name)} {{", "  rankdir=LR;",
                 '  node [fontname="Helvetica", fontsize=10];']
        for r in self.rows:
            shape = {"input": "box", "parameter": "box3d"}.get(r.kind, "ellipse")
            title = r.name if r.op is None else f"{r.name} = {r.op}"
            label = f"{title}\\nvalue {format_tensor(r.value)}"
            if r.grad is not None:
                label += f"\\ngrad {format_tensor(r.grad)}"
            lines.append(f"  {_quote(r.name)} [shape={shape}, label={_quote(label, escaped=True)}];")
        for r in self.rows:
            for source in dict.fromkeys(r.inputs):
                lines.append(f"  {_quote(source)} -> {_quote(r.name)};")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {
            "graph": self.graph_name, "loss_name": self.loss_name, "loss": self.loss,
            "nodes": [{"name": r.name, "kind": r.kind, "op": r.op, "inputs": list(r.inputs),
                       "dtype": r.value.dtype.name, "shape": list(r.value.shape), "value": r.value.tolist(),
                       "grad": None if r.grad is None else r.grad.tolist()} for r in self.rows],
        }


def explain(graph_or_plan: Graph | Plan, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> Explanation:
    """Run forward and backward once, keeping every value and every gradient."""
    plan = graph_or_plan if isinstance(graph_or_plan, Plan) else Plan(graph_or_plan)
    graph = plan.graph
    run = plan.forward(inputs, params, keep_values=True, grad_inputs=True)
    grads = run.backward(keep_grads=True)
    path = run.grad_path
    rows = [Row(name, "input", None, (), run.values[name], grads.get(name) if name in path else None)
            for name in graph.inputs]
    rows += [Row(name, "parameter", None, (), run.values[name], grads[name]) for name in graph.parameters]
    rows += [Row(s.id, "node", s.op, s.inputs, run.values[s.id], grads.get(s.id)) for s in plan.steps]
    return Explanation(graph.name, graph.loss, run.loss, tuple(rows))


def format_tensor(value: np.ndarray) -> str:
    value = np.asarray(value)
    if value.size <= SHOW_ELEMENTS:
        if value.dtype.kind == "f":
            return np.array2string(value, precision=4, separator=", ", suppress_small=False, floatmode="maxprec")
        return np.array2string(value, separator=", ")
    if value.dtype.kind == "f":
        return (f"{value.dtype.name}{list(value.shape)} mean {value.mean():.4g} min {value.min():.4g} "
                f"max {value.max():.4g}")
    return f"{value.dtype.name}{list(value.shape)}"


def _quote(text: str, escaped: bool = False) -> str:
    text = text.replace("\\", "\\\\") if not escaped else text
    return '"' + text.replace('"', '\\"') + '"'
