"""Layers: :class:`~graphspec.GraphBuilder` helpers that add a layer's parameters and ops at once,
so a model reads like a model (a LeNet-style CNN is about ten lines):

    g = GraphBuilder("lenet", dtype="float32")
    x = g.input("x", ["N", 1, 8, 8])
    h = g.max_pool2d(g.relu(g.conv2d(x, 8, 3, padding=1)), 2)       # [N, 8, 4, 4]
    h = g.max_pool2d(g.relu(g.conv2d(h, 16, 3, padding=1)), 2)      # [N, 16, 2, 2]
    logits = g.mlp(g.flatten(h), [32, 10])                          # [N, 10]
    g.loss(g.softmax_cross_entropy(logits, g.input("label", ["N"], dtype="int64")))

Each layer names its parameters ``<layer>.weight`` and ``<layer>.bias`` (``conv2d_1.weight``...;
pass ``name=`` to choose), initialised as PyTorch does by default in spirit: He-normal for
convolutions (ReLU follows them), Glorot-uniform for linear layers, zeros for biases, ones and
zeros for a layer norm's scale and bias, N(0, 1) for embeddings. They build on the op catalogue
only: a graph made with them is an ordinary document.
"""

from __future__ import annotations

import math
from typing import Sequence


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


class Layers:
    """Mixed into GraphBuilder (which provides ``param``, ``op`` and ``_fresh``)."""

    def _layer(self, kind: str, name: str | None) -> str:
        return name or self._fresh(kind)

    def linear(self, x, features: int, *, bias: bool = True, name: str | None = None):
        """``x @ W + b`` over the last axis: W is [x's last size, features]."""
        name = self._layer("linear", name)
        weight = self.param(f"{name}.weight", [x.shape[-1], features], init="glorot")
        y = self.op("matmul", x, weight, name=f"{name}.matmul")
        return self.op("add", y, self.param(f"{name}.bias", [features], init="zeros"), name=name) if bias else y

    def mlp(self, x, sizes: Sequence[int], *, activation: str = "relu", name: str | None = None):
        """Linear layers of ``sizes`` with ``activation`` between them (none after the last)."""
        name = self._layer("mlp", name)
        for k, features in enumerate(sizes):
            x = self.linear(x, features, name=f"{name}.{k}")
            if k < len(sizes) - 1:
                x = self.op(activation, x, name=f"{name}.{k}.{activation}")
        return x

    def conv2d(self, x, out_channels: int, kernel_size, *, stride=1, padding=0, dilation=1, groups: int = 1,
               bias: bool = True, name: str | None = None):
        """A 2-D convolution of NCHW ``x`` with (out, in / groups, kh, kw) weights, plus a bias per channel."""
        name = self._layer("conv2d", name)
        kh, kw = _pair(kernel_size)
        fan_in = (x.shape[1] // groups) * kh * kw
        weight = self.param(f"{name}.weight", [out_channels, x.shape[1] // groups, kh, kw], init="normal",
                            std=math.sqrt(2.0 / fan_in))
        y = self.op("conv2d", x, weight, stride=stride, padding=padding, dilation=dilation, groups=groups,
                    name=f"{name}.conv" if bias else name)
        if not bias:
            return y
        return self.op("add", y, self.param(f"{name}.bias", [out_channels, 1, 1], init="zeros"), name=name)

    def max_pool2d(self, x, kernel_size, stride=None, padding=0, *, name: str | None = None):
        return self.op("max_pool2d", x, kernel_size=kernel_size, stride=stride, padding=padding, name=name)

    def avg_pool2d(self, x, kernel_size, stride=None, padding=0, *, name: str | None = None):
        return self.op("avg_pool2d", x, kernel_size=kernel_size, stride=stride, padding=padding, name=name)

    def layer_norm(self, x, *, eps: float = 1e-5, name: str | None = None):
        """Normalise over the last axis, then a learned scale (ones) and bias (zeros)."""
        name = self._layer("layer_norm", name)
        features = x.shape[-1]
        scale = self.param(f"{name}.weight", [features], init="ones")
        shift = self.param(f"{name}.bias", [features], init="zeros")
        return self.op("layer_norm", x, scale, shift, eps=eps, name=name)

    def dropout(self, x, rate: float = 0.5, *, name: str | None = None):
        """Zero each element with probability ``rate`` while training (the rest scaled by
        1 / (1 - rate)); the identity when evaluating, explaining or exported."""
        return self.op("dropout", x, rate=rate, name=name)

    def embedding(self, indices, vocabulary: int, features: int, *, name: str | None = None):
        """Rows of a [vocabulary, features] table at int64 ``indices``: shape indices + [features]."""
        name = self._layer("embedding", name)
        table = self.param(f"{name}.weight", [vocabulary, features], init="normal", std=1.0)
        return self.op("gather", table, indices, axis=0, name=name)
