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


def input_problem(exc: runtime.InputError, prefix: str) -> ProblemError:
    location = prefix + (pointer(exc.name) if exc.name else "")
    return unprocessable(str(exc), [{"code": exc.code, "location": location, "message": str(exc)}],
                         kind="data-mismatch", title="Data does not fit the graph")


def check_fits(trainer: runtime.Trainer, arrays: Mapping[str, np.ndarray], prefix: str) -> int | None:
    """Check training data against the graph as the trainer will (Trainer.check_data); returns
    the number of examples (None when no input is per-example), or a located 422."""
    try:
        return trainer.check_data(arrays, label="")
    except runtime.InputError as exc:
        raise input_problem(exc, prefix) from None
