"""The emitter: the tapes a lowering appends to, and the buffers they refer to.

A compiled step is a *tape*: a list of ``(function, args)`` pairs whose arguments are
arrays allocated once, at compile time, for one set of input shapes. Running the step is
``for fn, args in tape: fn(*args)`` — nothing is looked up, allocated or dispatched per
node, which is where an interpreter spends its time on small graphs. The *seed tape*
holds the calls that read only the backward pass's seed and constants
(:mod:`.trace`); it runs when the seed changes, not on every step.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

Shape = tuple[int, ...]


class Emitter:
    """Collects the tapes and owns every buffer they refer to.

    Buffers come in two kinds. :meth:`buffer` arrays are persistent: each holds one value
    (or gradient) for the whole step, so later calls may read it. :meth:`scratch` arrays
    are temporaries that one kernel call uses and forgets: they are pooled by shape and
    dtype and handed to the next kernel call too (:meth:`begin` frees them).
    """

    def __init__(self) -> None:
        self.tape: list[tuple[Callable[..., Any], tuple]] = []
        self.seed_tape: list[tuple[Callable[..., Any], tuple]] = []
        self.bytes = 0  # persistent and scratch buffers allocated
        self._pool: dict[tuple, list[np.ndarray]] = {}
        self._pool_taken: dict[tuple, int] = {}

    def emit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Append the call ``fn(*args)`` to the step's tape."""
        self.tape.append((fn, args))

    def buffer(self, shape: Shape, dtype) -> np.ndarray:
        """A persistent array of its own, uninitialised: every buffer is written by the tape
        before it is read (zero-filling large ones cost more than the rest of lowering)."""
        array = np.empty(shape, dtype)
        self.bytes += array.nbytes
        return array

    def scratch(self, shape: Shape, dtype) -> np.ndarray:
        """A temporary for the current kernel call only (see the class docstring)."""
        key = (tuple(shape), np.dtype(dtype).str)
        pool = self._pool.setdefault(key, [])
        taken = self._pool_taken.get(key, 0)
        if taken == len(pool):
            pool.append(self.buffer(shape, dtype))
        self._pool_taken[key] = taken + 1
        return pool[taken]

    def begin(self) -> None:
        """Start one kernel call: its scratch arrays are free again."""
        self._pool_taken.clear()
