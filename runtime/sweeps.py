"""Hyperparameter sweeps, the part that is pure logic: search spaces, the trials they expand to,
and the early-termination rules — usable from a laptop, and what the service's sweeps run on.

    space = SearchSpace.from_dict({"optimizer.lr": {"log_uniform": [1e-3, 1]},
                                   "batch_size": {"values": [16, 32, 64]}})
    trials = space.trials("random", max_trials=12, seed=0)    # [{"optimizer.lr": 0.0123, "batch_size": 32}, ...]
    spec = apply(base_spec, trials[0])                          # a runtime.TrainingSpec with those values

A space names training settings (``batch_size``, ``schedule``, ``warmup_steps``...) and optimizer
hyperparameters (``optimizer.lr``, ``optimizer.momentum``), each with a distribution:
``{"values": [...]}`` (a choice; the only kind a grid takes), ``{"uniform": [low, high]}`` or
``{"log_uniform": [low, high]}`` (``low > 0``). ``grid`` is every combination of the values, in
order; ``random`` draws ``max_trials`` assignments from ``numpy.random.default_rng(seed)``, so a
sweep is reproducible. Every mistake is a :class:`~runtime.spec.SpecError` located under
``/space/<name>``.

Early termination reads the objective (lower is better) each trial reported at each step:

* :func:`median_stopping` (Vizier's median stopping rule): after ``grace_steps``, a trial whose
  best objective so far is worse than the median of the other trials' at the same step stops;
* :func:`asha` (asynchronous successive halving): rungs at ``min_steps * eta**k`` steps; a trial
  reaching a rung continues only while it is in the best ``1/eta`` of the trials that reached it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from .spec import SpecError, TrainingSpec, settings

KINDS = ("values", "uniform", "log_uniform")
METHODS = ("grid", "random")


def _issue(location: str, message: str) -> dict[str, str]:
    return {"code": "invalid_space", "location": location, "message": message}


@dataclass(frozen=True)
class Dimension:
    name: str  # a setting ("batch_size") or an optimizer hyperparameter ("optimizer.lr")
    kind: str  # one of KINDS
    values: tuple  # the choices, or (low, high)

    def sample(self, rng: np.random.Generator) -> Any:
        if self.kind == "values":
            return self.values[int(rng.integers(len(self.values)))]
        low, high = self.values
        if self.kind == "uniform":
            return float(rng.uniform(low, high))
        return float(math.exp(rng.uniform(math.log(low), math.log(high))))


@dataclass(frozen=True)
class SearchSpace:
    dimensions: tuple[Dimension, ...]

    @classmethod
    def from_dict(cls, space: Any, *, prefix: str = "/space") -> "SearchSpace":
        if not isinstance(space, Mapping) or not space:
            raise SpecError([_issue(prefix, "a search space maps settings to distributions, e.g. "
                                            '{"optimizer.lr": {"log_uniform": [0.001, 1]}}')])
        issues: list[dict[str, str]] = []
        dims = []
        known = {f.name for f, _ in settings() if f.name != "optimizer"}
        for name, dist in space.items():
            where = f"{prefix}/{name}"
            if not (name in known or (name.startswith("optimizer.") and name.count(".") == 1)):
                issues.append(_issue(where, f"{name!r} is not a training setting or an optimizer hyperparameter "
                                            "(optimizer.lr, optimizer.momentum, ...)"))
                continue
            if not isinstance(dist, Mapping) or len(dist) != 1 or next(iter(dist)) not in KINDS:
                issues.append(_issue(where, f"a distribution is one of {', '.join(KINDS)}: "
                                            '{"values": [...]}, {"uniform": [low, high]}, {"log_uniform": [low, high]}'))
                continue
            kind, values = next(iter(dist.items()))
            if kind == "values":
                if not isinstance(values, list) or not values:
                    issues.append(_issue(f"{where}/values", "give a non-empty list of values"))
                    continue
            elif (not isinstance(values, list) or len(values) != 2
                  or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                             for v in values) or not values[0] < values[1]):
                issues.append(_issue(f"{where}/{kind}", "give [low, high], two finite numbers with low < high"))
                continue
            elif kind == "log_uniform" and values[0] <= 0:
                issues.append(_issue(f"{where}/{kind}", "a log-uniform range needs low > 0"))
                continue
            dims.append(Dimension(name, kind, tuple(values)))
        if issues:
            raise SpecError(issues)
        return cls(tuple(dims))

    def trials(self, method: str, *, max_trials: int, seed: int = 0) -> list[dict[str, Any]]:
        """The assignments of a sweep: every grid combination (at most ``max_trials``, in order), or
        ``max_trials`` random draws."""
        if method == "grid":
            continuous = [d.name for d in self.dimensions if d.kind != "values"]
            if continuous:
                raise SpecError([_issue(f"/space/{continuous[0]}", "a grid takes values only: give "
                                                                   '{"values": [...]}, or use method "random"')])
            combos = itertools.product(*(d.values for d in self.dimensions))
            return [dict(zip((d.name for d in self.dimensions), combo)) for combo in itertools.islice(combos, max_trials)]
        if method != "random":
            raise SpecError([_issue("/method", f"method is one of {', '.join(METHODS)}, got {method!r}")])
        rng = np.random.default_rng(seed)
        return [{d.name: d.sample(rng) for d in self.dimensions} for _ in range(max_trials)]


def apply(base: Mapping[str, Any], assignment: Mapping[str, Any]) -> TrainingSpec:
    """The training spec of one trial: ``base`` (the body form: setting names, the optimizer as an
    object) with ``assignment``'s values; checked as any spec is (a value that cannot train, such as
    a negative rate, is a :class:`SpecError` located at ``/space/<name>``)."""
    body = {k: v for k, v in base.items()}
    optimizer = dict(body.get("optimizer") or {"name": "sgd"})
    for name, value in assignment.items():
        if name.startswith("optimizer."):
            optimizer[name.partition(".")[2]] = value
        else:
            body[name] = value
    body["optimizer"] = optimizer
    try:
        return TrainingSpec.from_dict(body)
    except SpecError as exc:
        raise SpecError([{**issue, "location": _space_location(issue["location"], assignment)}
                         for issue in exc.issues]) from None


def _space_location(location: str, assignment: Mapping[str, Any]) -> str:
    name = location.lstrip("/").replace("/", ".", 1) if location.startswith("/optimizer/") else location.lstrip("/")
    return f"/space/{name}" if name in assignment else location


def median_stopping(histories: Mapping[str, Sequence[tuple[int, float]]], trial: str, *, grace_steps: int = 0,
                    min_trials: int = 3) -> bool:
    """Whether ``trial`` should stop now: its best objective up to its latest step is worse than the
    median of the other trials' best objectives up to that step (trials that got that far; at least
    ``min_trials`` of them), once past ``grace_steps``."""
    mine = histories.get(trial) or []
    if not mine:
        return False
    step = mine[-1][0]
    if step <= grace_steps:
        return False
    best = min(v for _, v in mine)
    others = []
    for name, history in histories.items():
        reached = [v for s, v in history if s <= step]
        if name != trial and history and history[-1][0] >= step and reached:
            others.append(min(reached))
    if len(others) < min_trials:
        return False
    return best > float(np.median(others))


def rungs(min_steps: int, eta: int, max_steps: int) -> list[int]:
    """ASHA's rungs: min_steps, min_steps * eta, ... below max_steps."""
    out, step = [], min_steps
    while step < max_steps:
        out.append(step)
        step *= eta
    return out


def asha(histories: Mapping[str, Sequence[tuple[int, float]]], trial: str, *, min_steps: int, eta: int = 3,
         max_steps: int) -> bool:
    """Whether ``trial`` should stop now: at each rung it has reached, it must be among the best
    ``ceil(n / eta)`` of the ``n`` trials that reached that rung (their objective there)."""
    mine = histories.get(trial) or []
    for rung in rungs(min_steps, eta, max_steps):
        at_rung = {}
        for name, history in histories.items():
            reached = [v for s, v in history if s <= rung]
            if history and history[-1][0] >= rung and reached:
                at_rung[name] = reached[-1]
        if trial not in at_rung or not mine:
            break
        ranked = sorted(at_rung, key=lambda name: (at_rung[name], name))
        keep = max(1, math.ceil(len(ranked) / eta))
        if len(ranked) >= eta and trial not in ranked[:keep]:
            return True
    return False

