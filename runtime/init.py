"""Parameter initialisation from the graph's initializers (or its stored values)."""

from __future__ import annotations

import math

import numpy as np

from graphspec import Graph, Initializer


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    # Weights are used as x @ W, so W is [fan_in, fan_out]; leading dims are a receptive field.
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def sample(init: Initializer, shape: tuple[int, ...], dtype: str, rng: np.random.Generator) -> np.ndarray:
    a = init.args
    if init.kind == "zeros":
        return np.zeros(shape, dtype=dtype)
    if init.kind == "ones":
        return np.ones(shape, dtype=dtype)
    if init.kind == "constant":
        return np.full(shape, a["value"], dtype=dtype)
    if init.kind == "normal":
        return rng.normal(a["mean"], a["std"], size=shape).astype(dtype)
    if init.kind == "uniform":
        return rng.uniform(a["low"], a["high"], size=shape).astype(dtype)
    if init.kind == "glorot":
        fan_in, fan_out = _fans(shape)
        limit = a["gain"] * math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, size=shape).astype(dtype)
    raise ValueError(f"unknown initializer {init.kind!r}")


def init_params(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    """Fresh parameters: stored values copied, initializers drawn in document order from ``seed``."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, spec in graph.parameters.items():
        if spec.value is not None:
            params[name] = np.array(spec.value, dtype=spec.dtype)  # a writable copy
        else:
            params[name] = sample(spec.init, tuple(spec.shape), spec.dtype, rng)
    return params
