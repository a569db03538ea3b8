"""Writes the example graphs in this folder with the builder API.

    python examples/build_examples.py

The JSON files are committed; tests/test_examples.py checks that they validate and
that this script still reproduces them, so the builder and the files cannot drift.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import graphspec
from graphspec import GraphBuilder, Metadata

HERE = Path(__file__).resolve().parent


def _logreg_inputs(g: GraphBuilder):
    x1 = g.input("x1", ["N"], doc="first feature")
    x2 = g.input("x2", ["N"], doc="second feature")
    y = g.input("y", ["N"], doc="label, 0 or 1")
    w1 = g.param("w1", [], init="zeros")
    w2 = g.param("w2", [], init="zeros")
    b = g.param("b", [], init="zeros")
    # z = x1*w1 + x2*w2 + b, named as the seed example names them
    z = g.add(g.add(g.mul(x1, w1, name="x1w1"), g.mul(x2, w2, name="x2w2"), name="s"), b, name="z")
    return z, y


def logistic_regression() -> graphspec.Graph:
    g = GraphBuilder("logistic_regression", dtype="float64", metadata=Metadata(
        description="The seed example: z = x1*w1 + x2*w2 + b, a = sigmoid(z), "
                    "L = -(y*log a + (1-y)*log(1-a)) averaged over the batch.",
        author="chainrule", created="2026-11-27", tags={"seed": True}))
    z, y = _logreg_inputs(g)
    a = g.sigmoid(z, name="a")
    g.output("a", a)
    g.loss(g.bce(a, y, name="L"))
    return g.build()


def sigmoid_primitives() -> graphspec.Graph:
    g = GraphBuilder("sigmoid_primitives", dtype="float64", metadata=Metadata(
        description="The seed example with sigma built from primitive nodes: a = 1 / (1 + exp(-1 * z)). "
                    "Backward: '/' passes -1/d^2, '+' passes through, 'exp' multiplies by exp(-z), "
                    "'x-1' flips the sign; together sigma(z)(1 - sigma(z)).",
        author="chainrule", created="2026-11-27", tags={"seed": True}))
    z, y = _logreg_inputs(g)
    minus_one = g.constant(-1.0, name="minus_one")
    one = g.constant(1.0, name="one")
    neg = g.mul(z, minus_one, name="neg_z")        # x -1
    e = g.exp(neg, name="exp_neg_z")               # exp
    d = g.add(e, one, name="one_plus_exp")         # +1
    a = g.div(one, d, name="a")                    # 1/x
    g.output("a", a)
    g.loss(g.bce(a, y, name="L"))
    return g.build()


def small_mlp() -> graphspec.Graph:
    g = GraphBuilder("small_mlp", dtype="float32", metadata=Metadata(
        description="A 4-16-3 tanh MLP with softmax cross-entropy on integer class labels.",
        author="chainrule", created="2026-11-27", tags={"kind": "classifier"}))
    x = g.input("x", ["N", 4], doc="features")
    labels = g.input("labels", ["N"], dtype="int64", doc="class index in 0..2")
    w1 = g.param("w1", [4, 16], init="glorot")
    b1 = g.param("b1", [16], init="zeros")
    w2 = g.param("w2", [16, 3], init="glorot")
    b2 = g.param("b2", [3], init="zeros")
    h = g.tanh(g.add(g.matmul(x, w1, name="xw1"), b1, name="h_pre"), name="h")
    logits = g.add(g.matmul(h, w2, name="hw2"), b2, name="logits")
    g.output("logits", logits)
    g.output("probabilities", g.softmax(logits, name="probabilities"))
    g.loss(g.softmax_cross_entropy(logits, labels, name="L"))
    return g.build()


EXAMPLES = {
    "logistic_regression.json": logistic_regression,
    "sigmoid_primitives.json": sigmoid_primitives,
    "small_mlp.json": small_mlp,
}


def seed_data(n: int = 64, seed: int = 7) -> dict[str, np.ndarray]:
    """A linearly separable two-feature set for the seed graphs: y = 1 where 2*x1 - x2 + 0.5 > 0."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.uniform(-2, 2, n), rng.uniform(-2, 2, n)
    margin = 2 * x1 - x2 + 0.5
    keep = np.abs(margin) > 0.3  # a gap between the classes, so the set is separable with room
    return {"x1": x1[keep], "x2": x2[keep], "y": (margin[keep] > 0).astype(np.float64)}


def small_mlp_data(per_class: int = 40, seed: int = 11) -> dict[str, np.ndarray]:
    """Three Gaussian blobs in four dimensions, one per class, for small_mlp (float32 features,
    int64 class indices, as the graph declares them)."""
    rng = np.random.default_rng(seed)
    centres = np.array([[2.0, 0.0, 0.0, -1.0], [-1.0, 2.0, 0.5, 0.0], [0.0, -2.0, -1.0, 1.5]])
    x = np.concatenate([c + rng.normal(scale=0.7, size=(per_class, 4)) for c in centres])
    labels = np.repeat(np.arange(3), per_class)
    order = rng.permutation(len(labels))
    return {"x": np.round(x[order], 4).astype(np.float32), "labels": labels[order].astype(np.int64)}


# Every example graph has a training data file, so `chainrule train GRAPH --data FILE` and
# `chainrule submit ...` work on each as written (examples/README.md shows the commands).
TRAINING_DATA = {
    "logistic_regression.json": "seed_data.json",
    "sigmoid_primitives.json": "seed_data.json",
    "small_mlp.json": "small_mlp_data.json",
}


def main() -> int:
    for filename, make in EXAMPLES.items():
        graphspec.dump(make(), HERE / filename)
        print(f"wrote {HERE / filename}")
    from runtime.data import save_tensors

    save_tensors(HERE / "data" / "seed_data.json", seed_data())
    save_tensors(HERE / "data" / "seed_one_example.json", {"x1": np.array([1.0]), "x2": np.array([2.0]), "y": np.array([1.0])})
    save_tensors(HERE / "data" / "seed_params.json", {"w1": np.array(0.5), "w2": np.array(-0.3), "b": np.array(0.1)})
    save_tensors(HERE / "data" / "small_mlp_data.json", small_mlp_data())
    print(f"wrote {HERE / 'data'}/seed_data.json, seed_one_example.json, seed_params.json, small_mlp_data.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
