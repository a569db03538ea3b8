"""The compiled engine: a training step lowered once to a flat list of numpy calls into
preallocated buffers (see :mod:`.lower`), run by :class:`CompiledStep`."""

from .lower import Program, lower
from .step import CompiledStep

__all__ = ["CompiledStep", "Program", "lower"]
