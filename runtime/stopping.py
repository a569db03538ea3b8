"""Stopping early: on an eval loss that stopped improving, or on a loss that reached a target.

    rules = StoppingRules(patience=5, min_delta=1e-4, restore_best=True)
    watch = rules.watch(history)          # history: the (step, eval_loss) pairs so far
    watch.evaluated(step, eval_loss)      # True when this evaluation is the best so far
    watch.reason                          # None, "patience" or "target_loss"

An evaluation counts as better when its loss is below the best so far by more than
``min_delta`` (Keras's ``EarlyStopping``); after ``patience`` evaluations in a row that are
not, the run stops. ``target_loss`` stops the run once the monitored loss is at or below it:
the eval loss when the run evaluates, else each step's training loss. The state is replayed
from the evaluation history, so a run resumed from a checkpoint stops where the
uninterrupted run would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

REASONS = {
    "steps": "it ran the steps asked for",
    "epochs": "it ran the epochs asked for",
    "callback": "its callback asked it to stop",
    "cancelled": "it was cancelled",
    "patience": "the eval loss stopped improving (patience)",
    "target_loss": "the loss reached target_loss",
}


@dataclass(frozen=True)
class StoppingRules:
    patience: int | None = None
    min_delta: float = 0.0
    target_loss: float | None = None
    restore_best: bool = False

    @property
    def active(self) -> bool:
        return self.patience is not None or self.target_loss is not None or self.restore_best

    def watch(self, history: Iterable[tuple[int, float]] = ()) -> "Watch":
        watch = Watch(self)
        for step, loss in history:
            watch.evaluated(step, loss)
        return watch


class Watch:
    """The rules applied to one run (see the module docstring)."""

    def __init__(self, rules: StoppingRules):
        self.rules = rules
        self.best: float | None = None
        self.best_step: int | None = None
        self.waited = 0  # evaluations since the best
        self.reason: str | None = None

    def evaluated(self, step: int, loss: float) -> bool:
        """Record an evaluation; True when it is the best so far (its parameters are the ones to keep)."""
        rules = self.rules
        improved = self.best is None or loss < self.best - rules.min_delta
        if improved:
            self.best, self.best_step, self.waited = loss, step, 0
        else:
            self.waited += 1
            if rules.patience is not None and self.waited >= rules.patience:
                self.reason = "patience"
        self.reached(loss)
        return improved

    def reached(self, loss: float) -> None:
        """Check the monitored ``loss`` against the target."""
        if self.rules.target_loss is not None and loss <= self.rules.target_loss and self.reason is None:
            self.reason = "target_loss"
