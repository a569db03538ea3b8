"""Tensors in request bodies: decoded with located issues, and checked against a graph."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

import graphspec
import runtime
from graphspec.errors import pointer
from graphspec.tensors import TensorDecodeError, decode_tensor

from .problems import ProblemError, unprocessable


def decode_map(tree: Mapping[str, Any], prefix: str, limits: graphspec.Limits) -> dict[str, np.ndarray]:
    """``{name: tensor}`` to arrays; every undecodable tensor is one issue located under ``prefix``
    (``/data/x1/data/3``)."""
    out: dict[str, np.ndarray] = {}
    issues = []
    for name, obj in tree.items():
        try:
            out[name] = decode_tensor(obj, prefix + pointer(name), max_elements=limits.max_tensor_elements)
        except TensorDecodeError as exc:
            issues.append(exc.issue)
    if issues:
        raise unprocessable(f"{len(issues)} tensor(s) under {prefix or '/'} cannot be decoded", issues,
                            kind="invalid-data", title="Invalid tensor data")
    return out


def input_problem(exc: runtime.InputError, prefix: str, *, code: str = "input_mismatch") -> ProblemError:
    location = prefix + (pointer(exc.name) if exc.name else "")
    return unprocessable(str(exc), [{"code": code, "location": location, "message": str(exc)}],
                         kind="data-mismatch", title="Data does not fit the graph")


def placeholder_params(graph: graphspec.Graph) -> dict[str, np.ndarray]:
    """Zero-cost parameters of the declared dtypes and shapes (read-only broadcast views), for checking inputs."""
    return {name: np.broadcast_to(np.zeros((), dtype=spec.dtype), tuple(spec.shape))
            for name, spec in graph.parameters.items()}


def check_fits(plan: runtime.Plan, arrays: Mapping[str, np.ndarray], prefix: str) -> int | None:
    """Check training data against the graph (names, dtypes, shapes, symbols, finiteness), as the
    trainer will; returns the number of examples (None when no input is per-example)."""
    graph = plan.graph
    try:
        plan.check_inputs(arrays, placeholder_params(graph))
    except runtime.InputError as exc:
        raise input_problem(exc, prefix) from None
    # The trainer slices every input whose first declared dimension is symbolic: they must agree.
    examples, first = None, None
    for name, spec in graph.inputs.items():
        if len(spec.shape) == 0 or isinstance(spec.shape[0], int):
            continue
        n = arrays[name].shape[0]
        if examples is None:
            examples, first = n, name
        elif n != examples:
            message = (f"input {name!r} has {n} examples (axis 0) but {first!r} has {examples}; every "
                       "per-example input needs the same batch dimension")
            raise unprocessable(message, [{"code": "batch_mismatch", "location": prefix + pointer(name),
                                           "message": message}], kind="data-mismatch",
                                title="Data does not fit the graph")
    return examples
