"""The builder's layer helpers (graphspec/layers.py): models that read like models, made only of
catalogue ops, trained on both engines."""

from __future__ import annotations

import numpy as np
import pytest

import runtime
from graphspec import GraphBuilder


def lenet(dtype: str = "float32"):
    g = GraphBuilder("lenet", dtype=dtype)
    x = g.input("x", ["N", 1, 8, 8])
    h = g.max_pool2d(g.relu(g.conv2d(x, 8, 3, padding=1)), 2)       # [N, 8, 4, 4]
    h = g.max_pool2d(g.relu(g.conv2d(h, 16, 3, padding=1)), 2)      # [N, 16, 2, 2]
    logits = g.mlp(g.flatten(h), [32, 4])                           # [N, 4]
    g.output("logits", logits)
    g.loss(g.softmax_cross_entropy(logits, g.input("label", ["N"], dtype="int64")))
    return g.build()


def quadrants(n: int, seed: int = 0, dtype=np.float32):
    """8x8 images whose bright quadrant is the class (0..3), with noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, size=n)
    images = rng.normal(0.0, 0.3, size=(n, 1, 8, 8))
    for k, (r, c) in enumerate(((0, 0), (0, 4), (4, 0), (4, 4))):
        images[labels == k, 0, r:r + 4, c:c + 4] += 1.0
    return {"x": images.astype(dtype), "label": labels.astype(np.int64)}


def test_a_lenet_is_ten_lines_of_layers():
    graph = lenet()
    assert graph.version == "1.1"  # conv, pooling: 1.1 ops; no 1.2 op in it
    assert {name: spec.shape for name, spec in graph.parameters.items()} == {
        "conv2d_1.weight": (8, 1, 3, 3), "conv2d_1.bias": (8, 1, 1),
        "conv2d_2.weight": (16, 8, 3, 3), "conv2d_2.bias": (16, 1, 1),
        "mlp_1.0.weight": (64, 32), "mlp_1.0.bias": (32,), "mlp_1.1.weight": (32, 4), "mlp_1.1.bias": (4,)}
    assert graph.analysis.types[graph.outputs["logits"]].shape == ("N", 4)


@pytest.mark.parametrize("compiled", [True, False])
def test_a_lenet_learns_on_either_engine(compiled):
    graph = lenet()
    data, held_out = quadrants(256), quadrants(128, seed=1)
    trainer = runtime.Trainer(graph, runtime.Adam(lr=0.01), batch_size=32, seed=0, compiled=compiled)
    result = trainer.fit(data, runtime.init_params(graph, seed=0), epochs=4)
    assert result.loss < 0.2 * result.losses[0]
    logits = runtime.compile(graph).forward(held_out, result.params, with_grad=False).outputs["logits"]
    assert (logits.argmax(axis=1) == held_out["label"]).mean() >= 0.95


def test_both_engines_take_the_same_steps():
    graph, data = lenet(), quadrants(64)
    runs = {}
    for compiled in (True, False):
        trainer = runtime.Trainer(graph, runtime.Adam(lr=0.01), batch_size=16, seed=0, compiled=compiled)
        runs[compiled] = trainer.fit(data, runtime.init_params(graph, seed=0), steps=6).losses
    assert runs[True] == runs[False]  # no fusion in this graph: the same calls, the same bits


def test_embedding_layer_norm_and_linear_gradcheck():
    g = GraphBuilder("bag", dtype="float64")
    tokens = g.input("tokens", ["N", 5], dtype="int64")
    h = g.layer_norm(g.embedding(tokens, 7, 4))                      # [N, 5, 4]
    pooled = g.mean(h, axis=1)                                       # [N, 4]
    g.loss(g.mse(g.linear(pooled, 2), g.input("y", ["N", 2])))
    graph = g.build()
    rng = np.random.default_rng(3)
    inputs = {"tokens": rng.integers(0, 7, size=(3, 5)).astype(np.int64), "y": rng.normal(size=(3, 2))}
    params = runtime.init_params(graph, seed=1)
    params = {k: v + rng.normal(0, 0.1, size=v.shape) for k, v in params.items()}  # scale != 1, bias != 0
    for engine in ("interpreter", "compiled"):
        assert runtime.gradcheck(graph, inputs, params, engine=engine).ok, engine
