"""Rows of a job's stored training data, for picking an example (GET /v1/jobs/{id}/data)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import graphspec
from worker.store import decode_tensors

from .problems import unprocessable

MAX_ROWS = 100


def per_example(graph: graphspec.Graph, name: str) -> bool:
    """Whether the trainer slices input ``name`` into batches: its first declared dimension is not a number."""
    spec = graph.inputs.get(name)
    return spec is not None and len(spec.shape) > 0 and not isinstance(spec.shape[0], int)


@dataclass(frozen=True)
class Rows:
    examples: int | None  # rows in all; None when no input is per-example
    offset: int
    count: int
    arrays: dict[str, np.ndarray]


def data_rows(graph: graphspec.Graph, blob: bytes, offset: int, limit: int) -> Rows:
    """Rows ``offset`` to ``offset + limit`` of the stored data ``blob`` (msgpack tensors):
    per-example inputs sliced along axis 0, the others whole. An offset past the last row is a
    422 located at ``/query/offset``."""
    arrays = decode_tensors(blob)
    sliced = [name for name in arrays if per_example(graph, name)]
    examples = int(arrays[sliced[0]].shape[0]) if sliced else None
    if offset and offset >= (examples or 0):
        message = (f"offset {offset} is past the data's last row ({examples} rows)" if examples
                   else "the data has no per-example input: only offset 0 exists")
        raise unprocessable(message, [{"code": "out_of_range", "location": "/query/offset", "message": message}])
    rows = range(examples or 0)[offset:offset + limit]
    out = {name: a[rows.start:rows.stop] if name in sliced else a for name, a in arrays.items()}
    return Rows(examples=examples, offset=offset, count=len(rows), arrays=out)
