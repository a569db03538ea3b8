"""Checking the engine's gradients against finite differences.

    from runtime.gradcheck import gradcheck, assert_gradcheck
    result = gradcheck(graph, inputs, params)          # wrt="params" (default), "inputs" or "all"
    result.ok, result.max_abs_error, result.max_rel_error
    print(result)                                     # one line per checked tensor, worst element named
    assert_gradcheck(graph, inputs, params)           # AssertionError with that text on a mismatch

The check always runs in float64: a graph with float32 inputs, parameters or constants
is copied to float64 first (:func:`cast_graph`), and float inputs and parameters are cast
too, so that a central difference with ``eps=1e-6`` is accurate to about 1e-9. The
analytic gradient is ``runtime.compile(g).forward(...).backward()`` (``engine="interpreter"``,
the default) or the compiled engine's (``engine="compiled"``: :class:`runtime.CompiledStep`,
whose loss is then also checked against the interpreter's); the numeric one is
``(L(x + eps) - L(x - eps)) / (2 eps)`` for every element of every checked tensor. An
element passes when ``|analytic - numeric| <= atol + rtol * |numeric|``.

What is checked (``wrt``):

* ``"params"``: every element of every parameter;
* ``"inputs"``: every float input;
* ``"all"``: both;
* a list of names: exactly those (float inputs or parameters).

Integer and bool inputs (class labels) are never checked. With ``"inputs"``/``"all"``,
a float input that the graph uses *only* as a non-differentiable operand (the target of
``mse``, the labels of ``softmax_cross_entropy``: data by the op contract) is skipped and
listed in :attr:`GradcheckResult.skipped`; name it explicitly to check it anyway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

import graphspec
from graphspec import OPS, Graph
from graphspec.model import to_tree
from graphspec.types import FLOAT_DTYPES

from .noise import Noise
from .plan import compile as compile_plan

__all__ = ["GradcheckEntry", "GradcheckResult", "assert_gradcheck", "cast_graph", "gradcheck"]


# -- float64 copies --------------------------------------------------------------------------------

def cast_graph(graph: Graph, dtype: str = "float64") -> Graph:
    """A validated copy of ``graph`` whose float inputs, parameters (and their stored values)
    and constants are all ``dtype``; integer and bool tensors are left alone."""
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"cast_graph casts to a float dtype ({', '.join(FLOAT_DTYPES)}), not {dtype!r}")

    def encode(array: np.ndarray) -> dict:
        array = np.asarray(array)
        if array.dtype.name in FLOAT_DTYPES:
            array = array.astype(dtype)
        return graphspec.encode_tensor_raw(array)

    tree = to_tree(graph, encode)
    for section in ("inputs", "parameters"):
        for spec in tree.get(section, {}).values():
            if spec.get("dtype") in FLOAT_DTYPES:
                spec["dtype"] = dtype
    for node in tree.get("nodes", []):  # an op that makes floats of its own (one_hot) says which
        if node.get("attrs", {}).get("dtype") in FLOAT_DTYPES:
            node["attrs"]["dtype"] = dtype
    return graphspec.from_data(tree)


def _float_dtypes(graph: Graph) -> set[str]:
    """Every float dtype the graph's declarations and constants use."""
    found = {s.dtype for s in graph.inputs.values()} | {p.dtype for p in graph.parameters.values()}
    for node in graph.nodes:
        for name, value in node.attrs.items():
            if isinstance(value, np.ndarray):
                found.add(value.dtype.name)
            elif name == "dtype" and value in FLOAT_DTYPES:
                found.add(value)
    return found & set(FLOAT_DTYPES)


def _as_float64(graph: Graph) -> Graph:
    if _float_dtypes(graph) <= {"float64"}:
        return graph if graph.analysis is not None else graphspec.validate(graph)
    return cast_graph(graph, "float64")


def _bind64(given: Mapping[str, Any], declared: Mapping[str, Any]) -> dict[str, Any]:
    """Float values as fresh float64 arrays (ours to perturb); everything else as given."""
    out: dict[str, Any] = {}
    for name, value in given.items():
        spec = declared.get(name)
        if spec is not None and spec.dtype in FLOAT_DTYPES:
            out[name] = np.array(value, dtype=np.float64)  # always a copy
        else:
            out[name] = value
    return out


# -- results ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GradcheckEntry:
    """The comparison for one input or parameter."""

    name: str
    kind: str  # "parameter" or "input"
    shape: tuple[int, ...]
    analytic: np.ndarray
    numeric: np.ndarray
    max_abs_error: float
    max_rel_error: float
    ok: bool
    worst: tuple[int, ...]  # the element furthest outside (or closest to) its tolerance
    bad: int  # how many elements fail
    note: str = ""  # e.g. the engine returned a gradient of the wrong shape or dtype

    def describe(self) -> str:
        status = "ok  " if self.ok else "FAIL"
        where = f"[{', '.join(map(str, self.worst))}]" if self.shape else ""
        line = (f"{status} {self.kind} {self.name!r} {list(self.shape)}: max abs error {self.max_abs_error:.3g}, "
                f"max rel error {self.max_rel_error:.3g}")
        if self.analytic.size:
            a, n = self.analytic[self.worst], self.numeric[self.worst]
            line += f"; worst element {self.name}{where}: analytic {a:.10g}, numeric {n:.10g}"
        if not self.ok:
            line += f" ({self.bad} of {self.analytic.size} element(s) outside tolerance)"
        if self.note:
            line += f"; {self.note}"
        return line


@dataclass(frozen=True)
class GradcheckResult:
    """Per checked tensor: the analytic and numeric gradients and how far apart they are."""

    graph: str
    entries: dict[str, GradcheckEntry]
    eps: float
    rtol: float
    atol: float
    loss: float
    skipped: dict[str, str] = field(default_factory=dict)  # name -> why it was not checked

    @property
    def ok(self) -> bool:
        return all(e.ok for e in self.entries.values())

    @property
    def max_abs_error(self) -> dict[str, float]:
        return {name: e.max_abs_error for name, e in self.entries.items()}

    @property
    def max_rel_error(self) -> dict[str, float]:
        return {name: e.max_rel_error for name, e in self.entries.items()}

    @property
    def failures(self) -> list[str]:
        return [name for name, e in self.entries.items() if not e.ok]

    def __str__(self) -> str:
        verdict = "passed" if self.ok else f"FAILED for {', '.join(map(repr, self.failures))}"
        lines = [f"gradcheck of graph {self.graph!r} {verdict} (loss {self.loss:.10g}; eps {self.eps:g}, "
                 f"|analytic - numeric| <= {self.atol:g} + {self.rtol:g} * |numeric|)"]
        lines += ["  " + e.describe() for e in self.entries.values()]
        lines += [f"  skipped {name!r}: {why}" for name, why in self.skipped.items()]
        if not self.entries:
            lines.append("  (nothing to check)")
        return "\n".join(lines)


# -- the check ---------------------------------------------------------------------------------------

def _data_only_inputs(graph: Graph) -> set[str]:
    """Inputs that every consumer takes as a non-differentiable operand (targets, labels)."""
    used_diff: set[str] = set()
    used_data: set[str] = set()
    for node in graph.nodes:
        contract = OPS.get(node.op)
        grad = contract.gradient_inputs(len(node.inputs)) if contract is not None else range(len(node.inputs))
        for i, name in enumerate(node.inputs):
            (used_diff if i in grad else used_data).add(name)
    return (used_data - used_diff) & set(graph.inputs)


def _targets(graph: Graph, wrt: str | Iterable[str]) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """[(name, kind)] to check, and {name: reason} for float inputs left out."""
    float_inputs = [n for n, s in graph.inputs.items() if s.dtype in FLOAT_DTYPES]
    params = list(graph.parameters)
    skipped: dict[str, str] = {}
    if isinstance(wrt, str):
        if wrt not in ("params", "inputs", "all"):
            raise ValueError(f"wrt must be 'params', 'inputs', 'all' or a list of names, not {wrt!r}")
        chosen: list[tuple[str, str]] = []
        if wrt in ("params", "all"):
            chosen += [(n, "parameter") for n in params]
        if wrt in ("inputs", "all"):
            data_only = _data_only_inputs(graph)
            for n in float_inputs:
                if n in data_only:
                    skipped[n] = "used only as a non-differentiable operand (a target or labels)"
                else:
                    chosen.append((n, "input"))
        return chosen, skipped
    chosen = []
    for n in wrt:
        if n in graph.parameters:
            chosen.append((n, "parameter"))
        elif n in graph.inputs:
            if graph.inputs[n].dtype not in FLOAT_DTYPES:
                raise ValueError(f"input {n!r} is {graph.inputs[n].dtype}: only float values have gradients")
            chosen.append((n, "input"))
        else:
            raise ValueError(f"{n!r} is neither an input nor a parameter of graph {graph.name!r}")
    return chosen, skipped


def _compare(name: str, kind: str, analytic: np.ndarray, numeric: np.ndarray, rtol: float,
             atol: float) -> GradcheckEntry:
    analytic = np.asarray(analytic, dtype=np.float64)
    diff = np.abs(analytic - numeric)
    allowed = atol + rtol * np.abs(numeric)
    scale = np.maximum(np.abs(analytic), np.abs(numeric))
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(scale > 0, diff / np.where(scale > 0, scale, 1.0), 0.0)
    bad_mask = ~(diff <= allowed)  # NaN anywhere fails
    if analytic.size:
        # The worst element: the largest error relative to its own tolerance (NaN first).
        badness = np.where(np.isnan(diff), np.inf, diff / allowed)
        worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(badness)), analytic.shape))
        max_abs = float(np.max(np.where(np.isnan(diff), np.inf, diff)))
        max_rel = float(np.max(np.where(np.isnan(rel), np.inf, rel)))
    else:
        worst, max_abs, max_rel = (), 0.0, 0.0
    return GradcheckEntry(name, kind, tuple(analytic.shape), analytic, numeric, max_abs, max_rel,
                          not bool(bad_mask.any()), worst, int(bad_mask.sum()))


def gradcheck(graph: Graph, inputs: Mapping[str, Any], params: Mapping[str, Any], *, eps: float = 1e-6,
              rtol: float = 1e-5, atol: float = 1e-8, wrt: str | Iterable[str] = "params",
              engine: str = "interpreter", noise: Noise | None = None) -> GradcheckResult:
    """Compare the engine's gradients of ``graph``'s loss with central finite differences.
    With ``noise`` the graph runs as that training step (dropout drops, with the same masks
    at every perturbed point: :mod:`runtime.noise`).

    Never raises on a mismatch (see :func:`assert_gradcheck`); raises ValueError for a bad
    ``wrt`` and the runtime's own errors for inputs that do not fit the graph.
    """
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")
    if engine not in ("interpreter", "compiled"):
        raise ValueError(f"engine must be 'interpreter' or 'compiled', not {engine!r}")
    g64 = _as_float64(graph)
    targets, skipped = _targets(g64, wrt)
    inputs64 = _bind64(inputs, g64.inputs)
    params64 = _bind64(params, g64.parameters)
    plan = compile_plan(g64)
    with_inputs = any(kind == "input" for _, kind in targets)

    run = plan.forward(inputs64, params64, grad_inputs=with_inputs, noise=noise)
    loss = run.loss
    entries: dict[str, GradcheckEntry] = {}
    if engine == "compiled":
        from .compiled import CompiledStep  # the compiled engine builds on this module's neighbours

        step = CompiledStep(plan, grad_inputs=with_inputs)
        step.load_params(params64)
        compiled_loss, analytic = step.gradients(inputs64, noise)
        entries["(loss)"] = _compare("(loss)", "loss", np.array(compiled_loss), np.array(loss), rtol, atol)
    elif run.grad_path:
        analytic = run.backward()
    else:  # no checked tensor reaches the loss: every gradient is zero
        analytic = {}

    def loss_at() -> float:
        return plan.forward(inputs64, params64, with_grad=False, noise=noise).loss

    for name, kind in targets:
        values = (params64 if kind == "parameter" else inputs64)
        array = values[name] = np.array(values[name], dtype=np.float64)  # bound and owned
        numeric = np.empty(array.shape, dtype=np.float64)
        flat, out = array.reshape(-1), numeric.reshape(-1)  # views (the copy above is contiguous)
        for i in range(flat.size):
            original = flat[i]
            flat[i] = original + eps
            up = loss_at()
            flat[i] = original - eps
            down = loss_at()
            flat[i] = original
            out[i] = (up - down) / (2 * eps)
        grad = analytic.get(name)
        if grad is None:
            grad = np.zeros(array.shape)
        grad = np.asarray(grad)
        if grad.shape != array.shape:
            entries[name] = GradcheckEntry(
                name, kind, array.shape, np.full(array.shape, np.nan), numeric, math.inf, math.inf, False,
                (0,) * array.ndim, array.size, f"the engine's gradient has shape {list(grad.shape)}")
            continue
        entries[name] = _compare(name, kind, grad, numeric, rtol, atol)
    return GradcheckResult(g64.name, entries, eps, rtol, atol, loss, skipped)


def assert_gradcheck(graph: Graph, inputs: Mapping[str, Any], params: Mapping[str, Any], **options: Any
                     ) -> GradcheckResult:  # options: those of gradcheck, engine included
    """:func:`gradcheck`, raising AssertionError (with the readable report) when it fails."""
    result = gradcheck(graph, inputs, params, **options)
    if not result.ok:
        raise AssertionError(str(result))
    return result
