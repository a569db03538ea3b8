"""The compiled engine: a training step lowered once to a flat list of numpy calls into
preallocated buffers (:mod:`.lower`), run by :class:`CompiledStep` (:mod:`.step`)."""

from .lower import Program
from .step import CompiledStep

__all__ = ["CompiledStep", "Program"]
