"""What a backward pass needs to know about a list of steps, computed one way for both engines.

The interpreter (:class:`runtime.plan.Plan`) asks it of the plan's steps; the compiled
engine's lowering (:mod:`runtime.compiled.lower`) of the same steps after fusion (a fused
step reads and saves what its kernel says, like any other). Steps are anything with
``id``, ``inputs``, ``grad_inputs``, ``saves_out`` and ``saves_inputs``.
"""

from __future__ import annotations

from typing import Iterable, Protocol, Sequence


class StepLike(Protocol):
    id: str
    inputs: tuple[str, ...]
    grad_inputs: tuple[int, ...]

    @property
    def saves_out(self) -> bool: ...

    @property
    def saves_inputs(self) -> tuple[int, ...]: ...


def needed(steps: Sequence[StepLike], loss: str, *also: str) -> list:
    """The steps the loss (and the values ``also`` names) depend on, in their order (the others need not run)."""
    producer = {s.id: s for s in steps}
    wanted: set[str] = set()
    stack = [loss, *also]
    while stack:
        name = stack.pop()
        if name in wanted or name not in producer:
            continue
        wanted.add(name)
        stack.extend(producer[name].inputs)
    return [s for s in steps if s.id in wanted]


def grad_path(steps: Sequence[StepLike], sources: Iterable[str], loss: str) -> frozenset[str]:
    """Values that depend on a source (parameters, and inputs when asked) through
    differentiable inputs and lead to the loss: the values that get gradients."""
    depends = set(sources)
    for s in steps:
        for i in s.grad_inputs:
            if s.inputs[i] in depends:
                depends.add(s.id)
                break
    feeds = {loss}
    for s in reversed(steps):
        if s.id in feeds:
            for i in s.grad_inputs:
                feeds.add(s.inputs[i])
    return frozenset(depends & feeds)


def saved_for_backward(steps: Iterable[StepLike], path: frozenset[str]) -> set[str]:
    """The forward values the VJPs along ``path`` read (a step's output and/or inputs)."""
    saved: set[str] = set()
    for s in steps:
        if s.id in path:
            if s.saves_out:
                saved.add(s.id)
            for i in s.saves_inputs:
                saved.add(s.inputs[i])
    return saved


def last_uses(steps: Sequence[StepLike]) -> dict[str, int]:
    """For each value, the position of the last step that reads it."""
    last: dict[str, int] = {}
    for position, s in enumerate(steps):
        for name in s.inputs:
            last[name] = position
    return last
