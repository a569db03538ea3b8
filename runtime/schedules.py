"""Learning-rate schedules: the rate of each update as a pure function of its number.

    schedule = Schedule("cosine", warmup_steps=100)
    schedule.rate(base_lr=0.1, update=1, total=1000)    # 0.001: the first warmup step

``update`` counts from 1 (the first update). A warmup ramps the rate linearly over
``warmup_steps`` updates up to the base rate (``base * k / warmup_steps`` for update k); the
schedule then runs on the updates after it:

* ``constant``: the base rate;
* ``step``: multiplied by ``decay_rate`` (default 0.1) every ``decay_steps`` updates, never
  below ``min_lr``;
* ``exponential``: multiplied by ``decay_rate`` every update, never below ``min_lr``;
* ``cosine``: from the base rate down to ``min_lr`` along half a cosine over ``decay_steps``
  updates (default: the rest of the run), then ``min_lr``;
* ``linear``: from the base rate down to ``min_lr`` in a straight line, the same span.

These are PyTorch's ``StepLR``, ``ExponentialLR``, ``CosineAnnealingLR`` (one half period)
and ``LinearLR`` stepped once per update, after a ``LinearLR`` warmup. Since a rate depends
on nothing but the update's number, a run resumed from a checkpoint continues its schedule
bit for bit; the trainer checks that the checkpoint was made with the same schedule.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

SCHEDULES = ("constant", "step", "exponential", "cosine", "linear")
DEFAULT_STEP_DECAY = 0.1


class ScheduleError(ValueError):
    """A schedule that cannot run; ``setting`` names the field at fault."""

    def __init__(self, setting: str, message: str):
        self.setting = setting
        super().__init__(message)


@dataclass(frozen=True)
class Schedule:
    name: str = "constant"
    warmup_steps: int = 0
    decay_steps: int | None = None
    decay_rate: float | None = None
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ScheduleError("schedule", f"unknown schedule {self.name!r}; choose one of {', '.join(SCHEDULES)}")
        if self.name == "step" and self.decay_steps is None:
            raise ScheduleError("decay_steps", "the step schedule multiplies the rate by decay_rate every decay_steps "
                                               "updates: give decay_steps")
        if self.name == "exponential" and self.decay_rate is None:
            raise ScheduleError("decay_rate", "the exponential schedule multiplies the rate by decay_rate every "
                                              "update: give decay_rate (e.g. 0.99)")
        if self.decay_rate is not None and self.name not in ("step", "exponential"):
            raise ScheduleError("decay_rate", f"decay_rate belongs to the step and exponential schedules, not to "
                                              f"{self.name!r}")
        if self.decay_steps is not None and self.name not in ("step", "cosine", "linear"):
            raise ScheduleError("decay_steps", f"decay_steps belongs to the step, cosine and linear schedules, not "
                                               f"to {self.name!r}")
        if self.min_lr and self.name == "constant":
            raise ScheduleError("min_lr", "min_lr is where a decaying schedule stops: the constant schedule does not "
                                          "decay (choose step, exponential, cosine or linear)")

    def check(self, base_lr: float, total: int | None) -> None:
        """Raise :class:`ScheduleError` when this schedule cannot run from ``base_lr`` over ``total``
        updates (None: unknown until the data is seen)."""
        if self.min_lr > base_lr:
            raise ScheduleError("min_lr", f"min_lr {self.min_lr:g} is above the learning rate {base_lr:g}: the "
                                          f"{self.name} schedule decays from the learning rate down to min_lr")
        if self.name in ("cosine", "linear") and self.decay_steps is None and total is not None:
            if total <= self.warmup_steps:
                raise ScheduleError("warmup_steps", f"the warmup ({self.warmup_steps} updates) takes the whole run "
                                                    f"({total} updates): nothing is left to decay over")

    def rate(self, base_lr: float, update: int, total: int | None = None) -> float:
        """The learning rate of update number ``update`` (from 1) of a run of ``total`` updates."""
        if update <= self.warmup_steps:
            return base_lr * update / self.warmup_steps
        t = update - self.warmup_steps - 1  # updates since the warmup (0 for the first)
        if self.name == "constant":
            return base_lr
        if self.name == "step":
            rate = (self.decay_rate if self.decay_rate is not None else DEFAULT_STEP_DECAY) ** (t // self.decay_steps)
            return max(base_lr * rate, self.min_lr)
        if self.name == "exponential":
            return max(base_lr * self.decay_rate ** t, self.min_lr)
        span = self.decay_steps if self.decay_steps is not None else (
            None if total is None else total - self.warmup_steps)
        if span is None:
            raise ScheduleError("decay_steps", f"the {self.name} schedule needs decay_steps when the run's length is "
                                               "not known (steps or epochs)")
        progress = min(t / span, 1.0)
        if self.name == "cosine":
            return self.min_lr + (base_lr - self.min_lr) * (1 + math.cos(math.pi * progress)) / 2
        return self.min_lr + (base_lr - self.min_lr) * (1 - progress)

    @property
    def varies(self) -> bool:
        """Whether the rate ever differs from the base rate."""
        return self.name != "constant" or self.warmup_steps > 0

    def config(self) -> dict[str, Any]:
        return asdict(self)
