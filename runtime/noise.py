"""Training-time randomness (dropout's masks), reproducible per step.

A training step that runs a random kernel (one registered with ``draws``) passes a
:class:`Noise`: the run's seed and the step's number. Each random node draws from its own
generator, seeded from (seed, step, node id), so a step's masks depend on nothing else — not
on the engine, the batch order of earlier steps, or whether the job was resumed from a
checkpoint at step k (step k + 1 draws what an uninterrupted run draws). Without a
``Noise`` (evaluation, explain, gradient checks by default) random kernels get None and act
as in inference: dropout is the identity.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .kernels import Kernel


@dataclass(frozen=True)
class Noise:
    """The draws of one training step: the run's ``seed`` and the step's ``step`` number."""

    seed: int
    step: int

    def generator(self, node: str) -> np.random.Generator:
        key = [self.seed & 0xFFFFFFFFFFFFFFFF, self.step & 0xFFFFFFFFFFFFFFFF, zlib.crc32(node.encode())]
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence(key)))

    def draw(self, kernel: Kernel, node: str, shape: tuple[int, ...], dtype: Any, attrs: Mapping[str, Any]
             ) -> np.ndarray:
        """``kernel``'s draw for ``node`` at this step, for a first input of ``shape`` and ``dtype``."""
        return kernel.draws(self.generator(node), tuple(shape), np.dtype(dtype), **attrs)


def draw_for(noise: Noise | None, kernel: Kernel, node: str, like: Any, attrs: Mapping[str, Any]):
    """What a random kernel gets after its inputs (None outside training); ``like`` is its first
    input (an array or a :class:`~runtime.kernels.Meta`)."""
    return None if noise is None else noise.draw(kernel, node, like.shape, like.dtype, attrs)
