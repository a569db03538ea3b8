"""The emitter: what a kernel's ``forward_into`` / ``vjp_into`` write their numpy calls to.

A compiled step is a *tape*: a list of ``(function, args)`` pairs whose arguments are
arrays allocated once, at compile time, for one set of input shapes. Running the step is
``for fn, args in tape: fn(*args)`` — nothing is looked up, allocated or dispatched per
node, which is where an interpreter spends its time on small graphs.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

import numpy as np

Shape = tuple[int, ...]


class Emitter:
    """Collects the tape and owns every buffer it refers to.

    Buffers come in two kinds. :meth:`buffer` arrays are persistent: each holds one value
    (or gradient) for the whole step, so later calls may read it. :meth:`scratch` arrays
    are temporaries that a single kernel function uses and forgets: they are pooled by
    shape and dtype and handed to the next kernel function too, so a kernel must never
    return one or read it from another of its functions.
    """

    def __init__(self) -> None:
        self.tape: list[tuple[Callable[..., Any], tuple]] = []
        self.bytes = 0  # persistent and scratch buffers allocated
        # d(loss)/d(loss), where the backward pass starts: 1, or the learning rate when plain SGD
        # folds it in (see Program.set_seed); constants derived from it are kept up to date
        self.seed: np.ndarray | None = None
        self.seed_constants: list[tuple[np.ndarray, Callable[[np.ndarray], Any]]] = []
        self.state: dict[str, Any] = {}  # the current node's private buffers, shared by its forward and VJP
        self._targets: dict[int, np.ndarray] = {}
        self._reusable: set[int] = set()
        self._pool: dict[tuple, list[np.ndarray]] = {}
        self._pool_taken: dict[tuple, int] = {}

    # -- what kernels call ---------------------------------------------------------------
    def emit(self, fn: Callable[..., Any], *args: Any, **keywords: Any) -> None:
        """Append the call ``fn(*args, **keywords)`` (pass a ufunc's ``out`` positionally
        where numpy allows it: keywords cost a ``functools.partial`` call)."""
        self.tape.append((partial(fn, **keywords) if keywords else fn, args))

    def buffer(self, shape: Shape, dtype) -> np.ndarray:
        """A persistent array of its own, uninitialised: every buffer is written by the tape
        before it is read (zero-filling large ones cost more than the rest of lowering)."""
        array = np.empty(shape, dtype)
        self.bytes += array.nbytes
        return array

    def scratch(self, shape: Shape, dtype) -> np.ndarray:
        """A temporary for the current kernel function only (see the class docstring)."""
        key = (tuple(shape), np.dtype(dtype).str)
        pool = self._pool.setdefault(key, [])
        taken = self._pool_taken.get(key, 0)
        if taken == len(pool):
            pool.append(self.buffer(shape, dtype))
        self._pool_taken[key] = taken + 1
        return pool[taken]

    def grad_for(self, i: int, shape: Shape, dtype, *, reuse: np.ndarray | None = None) -> np.ndarray:
        """Where to write input ``i``'s gradient (of ``shape``): the parameter's own gradient
        array when that is where it ends up, else ``reuse`` (the incoming gradient) when
        the engine knows nothing else reads it, else a new buffer."""
        target = self._targets.get(i)
        if target is not None and target.shape == tuple(shape):
            return target
        if reuse is not None and id(reuse) in self._reusable and reuse.shape == tuple(shape) \
                and reuse.dtype == np.dtype(dtype):
            self._reusable.discard(id(reuse))
            return reuse
        return self.buffer(shape, dtype)

    def is_seed(self, g: np.ndarray) -> bool:
        """True when ``g`` is the seed: one value per run (1, or the learning rate), so what a
        kernel derives from it can be a :meth:`seed_constant` instead of calls on every step."""
        return g is self.seed

    def seed_constant(self, derive: Callable[[np.ndarray], Any]) -> np.ndarray:
        """An array holding ``derive(seed)``, recomputed whenever the seed's value changes."""
        value = np.asarray(derive(self.seed))
        array = self.buffer(value.shape, value.dtype)
        array[...] = value
        self.seed_constants.append((array, derive))
        return array

    # -- what the lowering calls ---------------------------------------------------------
    def begin(self, state: dict[str, Any], targets: dict[int, np.ndarray] | None = None,
              reusable: np.ndarray | None = None) -> None:
        """Start one kernel function: scratch is free again; set its targets."""
        self._pool_taken.clear()
        self.state = state
        self._targets = targets or {}
        self._reusable = {id(reusable)} if reusable is not None else set()
