"""What a training run reports: one :class:`StepReport` per step (to ``fit``'s callback) and a
:class:`TrainResult` at the end (runtime.trainer makes both)."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import ItemsView, Iterator, Mapping, ValuesView

import numpy as np

from .checkpoint import Checkpoint

Arrays = dict[str, np.ndarray]


@dataclass
class StepReport:
    """What one training step did; passed to ``fit``'s ``callback``.

    ``step`` counts updates from 1 (this is the ``step``-th); ``epoch`` and
    ``batch_index`` (from 0) locate the batch it used; ``epochs`` is the number of complete
    passes over the data after this step (the count :attr:`TrainResult.epochs` gives and the
    service shows as a job's ``epoch``: the last batch of the first epoch reports ``epoch`` 0
    and ``epochs`` 1); ``loss`` is that batch's loss
    before the update, ``grads`` the gradients the update used (the report's own copies; with
    ``fit(copy_grads=False)`` the engine's arrays, valid only during the callback) and
    ``grad_norms`` their L2 norms (computed when first read); ``eval_loss`` is the held-out loss after the update when an evaluation ran
    at this step, else None. ``lr`` is the learning rate of this update (the schedule's), and
    :attr:`grad_norm` the global L2 norm of the gradients before any clipping. ``metrics`` are the
    batch's metric outputs (an ``accuracy`` for a classification loss: :mod:`runtime.metrics`),
    ``eval_metrics`` the held-out data's when an evaluation ran.
    """

    step: int
    epoch: int
    loss: float
    grads: Mapping[str, np.ndarray]
    grad_norms: Mapping[str, float]
    eval_loss: float | None = None
    batch_index: int = 0
    epochs: int = 0
    lr: float | None = None
    clipped_from: float | None = None  # the global norm before clipping, when the run clips
    metrics: Mapping[str, float] = field(default_factory=dict)
    eval_metrics: Mapping[str, float] | None = None

    @property
    def grad_norm(self) -> float:
        """The global L2 norm of this step's gradients before clipping."""
        if self.clipped_from is not None:
            return self.clipped_from
        return float(np.sqrt(sum(n * n for n in self.grad_norms.values())))


@dataclass
class TrainResult:
    """``params`` after training; ``losses[i]`` is the training loss of step ``i + 1``
    (the whole history, including steps before a resumption); ``eval_losses`` the
    ``(step, loss)`` of each evaluation; ``steps`` the number of updates so far and
    ``epochs`` the number of complete epochs; ``checkpoint`` the final state; ``loss`` and
    ``eval_loss`` the last of each. Its repr is one line (the arrays and the history are not printed)."""

    params: Arrays
    losses: list[float]
    eval_losses: list[tuple[int, float]]
    steps: int
    epochs: int
    stopped_early: bool
    checkpoint: Checkpoint
    stop_reason: str = "steps"  # a key of runtime.stopping.REASONS
    best_step: int | None = None  # the step whose parameters ``params`` are, with restore_best
    metrics: Mapping[str, float] = field(default_factory=dict)  # the last step's
    eval_metrics: Mapping[str, float] | None = None  # the last evaluation's

    @property
    def loss(self) -> float | None:
        """The training loss of the last step (None when no step ran)."""
        return self.losses[-1] if self.losses else None

    @property
    def eval_loss(self) -> float | None:
        """The last held-out loss (None without eval data)."""
        return self.eval_losses[-1][1] if self.eval_losses else None

    def __repr__(self) -> str:
        # short: a result holds every parameter and every step's loss, which a REPL would print in full
        params = ", ".join(f"{name}: {a.dtype}{list(a.shape)}" for name, a in self.params.items())
        losses = "no steps" if not self.losses else (
            f"loss {self.losses[0]:.6g} -> {self.losses[-1]:.6g}" if len(self.losses) > 1 else f"loss {self.losses[0]:.6g}")
        extra = "" if self.eval_loss is None else f", eval_loss {self.eval_loss:.6g}"
        early = ", stopped early" if self.stopped_early else ""
        return (f"TrainResult(steps={self.steps}, epochs={self.epochs}, {losses}{extra}{early}, "
                f"params={{{params}}})")


# float32 gradients at least this large get their norm from one float32 dot product (BLAS,
# no copy) instead of a float64 copy: the copy cost ~160 us per 200k values, about a tenth of
# a W2-sized step (bench/README.md, issue #19), the dot product ~15 us.
FLOAT32_DOT_MIN = 4096
# Inside these bounds a float32 sum of squares has neither overflowed nor lost its small
# terms to underflow; outside them the norm is recomputed in float64.
_F32_SAFE = (1e-30, 1e30)


def sum_of_squares(g: np.ndarray) -> float:
    """What :func:`grad_norm` takes the square root of: one dot product, in float64 except for a
    large float32 gradient's (one float32 BLAS dot, no copy). Finite exactly when every value is,
    unless the squares overflow. The compiled engine takes these in its finiteness check (one
    pass over the gradients it makes anyway) when a report will want the norms."""
    a = np.asarray(g)
    flat = a.ravel() if a.dtype == np.float64 or (a.dtype == np.float32 and a.size >= FLOAT32_DOT_MIN) else \
        np.asarray(a, dtype=np.float64).ravel()
    return float(np.dot(flat, flat))


def grad_norm(g: np.ndarray, squares: float | None = None) -> float:
    """The L2 norm of one gradient: in float64, except a large float32 gradient's, whose sum
    of squares is one float32 dot product (relative error of the order of float32 rounding,
    like the gradient's own values) unless it overflowed or underflowed. ``squares``: its
    :func:`sum_of_squares`, when already taken."""
    a = np.asarray(g)
    squares = sum_of_squares(a) if squares is None else squares
    if a.dtype != np.float32 or a.size < FLOAT32_DOT_MIN or _F32_SAFE[0] < squares < _F32_SAFE[1]:
        return math.sqrt(squares)
    return float(np.linalg.norm(np.asarray(a, dtype=np.float64).ravel()))


class ScaledGrads(Mapping[str, np.ndarray]):
    """Gradients held multiplied by ``scale`` (the compiled engine's, when it folds the
    learning rate into the backward pass), read back divided: the true d(loss)/d(param).
    ``scaled`` are the engine's own arrays, so this mapping is only valid until the next step
    (``fit(copy_grads=False)``); a read divides into a new array unless ``scale`` is 1."""

    def __init__(self, scaled: Arrays, scale: float, squares: Mapping[str, float] | None = None):
        self.scaled, self.scale = scaled, scale
        self.squares = squares  # each scaled array's sum_of_squares, when the engine took them

    def __getitem__(self, name: str) -> np.ndarray:
        g = self.scaled[name]
        return g if self.scale == 1.0 else np.divide(g, self.scale)

    def __iter__(self) -> Iterator[str]:
        return iter(self.scaled)

    def __len__(self) -> int:
        return len(self.scaled)


class GradNorms(Mapping[str, float]):
    """The L2 norm of each gradient (:func:`grad_norm`), computed the first time any is read:
    most steps of a long run are never looked at. Of :class:`ScaledGrads`, the norms of the
    scaled arrays divided by the scale (no divided copy)."""

    def __init__(self, grads: Mapping[str, np.ndarray]):
        self._grads = grads
        self._norms: dict[str, float] | None = None

    def _computed(self) -> dict[str, float]:
        if self._norms is None:
            grads, scale, squares = ((self._grads.scaled, self._grads.scale, self._grads.squares or {})
                                     if isinstance(self._grads, ScaledGrads) else (self._grads, 1.0, {}))
            # finite sums of squares, every one taken already: nothing left to warn about, and numpy's
            # errstate alone would cost more than the norms (~6 us a step)
            quiet = contextlib.nullcontext() if len(squares) == len(grads) else np.errstate(all="ignore")
            with quiet:
                self._norms = {n: grad_norm(g, squares.get(n)) / scale for n, g in grads.items()}
        return self._norms

    def __getitem__(self, name: str) -> float:
        return self._computed()[name]

    # the views of the computed dict: a reporter reading every step's norms (``dict(norms.items())``)
    # or the global norm takes them at a dict's speed, not a Mapping's one lookup per name
    def items(self) -> ItemsView[str, float]:
        return self._computed().items()

    def values(self) -> ValuesView[float]:
        return self._computed().values()

    def __iter__(self) -> Iterator[str]:
        return iter(self._grads)

    def __len__(self) -> int:
        return len(self._grads)

    def __repr__(self) -> str:
        return repr(self._computed())
