"""Request examples for the OpenAPI document, embedded at import time.

The seed graph is read from the repository's ``examples/`` folder; when the service is
installed without it, the same graph is built with graphspec's builder instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import graphspec

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
ROWS = 4


def _seed_graph() -> dict[str, Any]:
    try:
        return json.loads((EXAMPLES_DIR / "logistic_regression.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        g = graphspec.GraphBuilder("logistic_regression", dtype="float64")
        x1, x2, y = g.input("x1", ["N"]), g.input("x2", ["N"]), g.input("y", ["N"])
        w1, w2, b = (g.param(n, [], init="zeros") for n in ("w1", "w2", "b"))
        a = (x1 * w1 + x2 * w2 + b).sigmoid(name="a")
        g.output("a", a)
        g.loss(g.bce(a, y, name="L"))
        return json.loads(graphspec.dumps(g.build(), "json"))


def _seed_rows() -> dict[str, Any]:
    try:
        data = json.loads((EXAMPLES_DIR / "data" / "seed_data.json").read_text(encoding="utf-8"))
        return {name: {"dtype": t["dtype"], "shape": [ROWS], "data": t["data"][:ROWS]} for name, t in data.items()}
    except (OSError, ValueError, KeyError, TypeError):
        return {"x1": {"dtype": "float64", "shape": [ROWS], "data": [0.50, 1.59, 1.10, -0.80]},
                "x2": {"dtype": "float64", "shape": [ROWS], "data": [-0.24, -1.12, 0.35, 0.94]},
                "y": {"dtype": "float64", "shape": [ROWS], "data": [1.0, 1.0, 1.0, 0.0]}}


SEED_GRAPH: dict[str, Any] = _seed_graph()
SEED_ROWS: dict[str, Any] = _seed_rows()

JOB_EXAMPLE: dict[str, Any] = {
    "graph": SEED_GRAPH,
    "data": SEED_ROWS,
    "optimizer": {"name": "sgd", "lr": 0.5},
    "steps": 200,
    "batch_size": 2,
    "seed": 0,
    "report_every": 10,
    "gradients": "norms",
}

EXPLAIN_EXAMPLE: dict[str, Any] = {
    "inputs": {"x1": {"dtype": "float64", "shape": [1], "data": [1.0]},
               "x2": {"dtype": "float64", "shape": [1], "data": [2.0]},
               "y": {"dtype": "float64", "shape": [1], "data": [1.0]}},
    "params": {"w1": {"dtype": "float64", "shape": [], "data": 0.5},
               "w2": {"dtype": "float64", "shape": [], "data": -0.25},
               "b": {"dtype": "float64", "shape": [], "data": 0.1}},
}
