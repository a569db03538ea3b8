"""The runtime's exceptions: each names what is wrong and where (input, parameter or node)."""

from __future__ import annotations


class ChainruleRuntimeError(Exception):
    """Base class of every error the runtime raises on purpose."""


class InputError(ChainruleRuntimeError, ValueError):
    """Inputs or parameters that do not fit the graph: missing, unexpected, wrong dtype or shape, non-finite."""

    def __init__(self, message: str, *, name: str | None = None, expected: str | None = None,
                 actual: str | None = None, kind: str | None = None, code: str = "input_mismatch"):
        super().__init__(message)
        self.name = name
        self.expected = expected
        self.actual = actual
        self.kind = kind  # "input" or "parameter" when the error is about one of them
        self.code = code  # what an API reports it as: input_mismatch, or batch_mismatch


class ExecutionError(ChainruleRuntimeError):
    """A node could not be computed with the values it was given (e.g. a class label out of range)."""

    def __init__(self, message: str, *, node: str, op: str):
        super().__init__(f"node {node!r} ({op}): {message}")
        self.node = node
        self.op = op


class NonFiniteError(ChainruleRuntimeError):
    """Training produced NaN or inf; ``node`` is the first node (in execution order) that did."""

    def __init__(self, message: str, *, node: str | None, step: int | None = None, op: str | None = None):
        super().__init__(message)
        self.node = node
        self.step = step
        self.op = op


class MissingKernelError(ChainruleRuntimeError):
    """The graph uses an op that has a contract in graphspec but no kernel in this runtime."""
