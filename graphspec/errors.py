"""Validation problems as data, and the one exception that carries them.

Every problem the format can find is an :class:`Issue` with a JSON-pointer
``location`` into the document (``/nodes/3/inputs/1``), so a person, an HTTP
problem body and a test can all say exactly where the document is wrong.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass
from typing import Iterable


@dataclass(frozen=True)
class Issue:
    """One problem found in a graph document.

    ``code`` is a stable machine-readable kind (``unknown_op``, ``shape_mismatch``...),
    ``location`` a JSON pointer (RFC 6901) into the document, ``hint`` an optional
    suggestion such as a did-you-mean.
    """

    code: str
    location: str
    message: str
    hint: str | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def __str__(self) -> str:
        text = f"{self.location or '/'}: {self.message} [{self.code}]"
        return f"{text} ({self.hint})" if self.hint else text


class GraphSpecError(ValueError):
    """A document could not be read or is invalid; ``issues`` lists every problem."""

    def __init__(self, issues: Iterable[Issue]):
        self.issues: list[Issue] = list(issues)
        if not self.issues:
            raise ValueError("GraphSpecError needs at least one issue")
        super().__init__(self._summary())

    def _summary(self) -> str:
        count = len(self.issues)
        head = f"{count} problem{'s' if count != 1 else ''} in graph document"
        return head + ":\n" + "\n".join(f"  {issue}" for issue in self.issues)

    def to_list(self) -> list[dict]:
        return [issue.to_dict() for issue in self.issues]


def pointer(*parts: str | int) -> str:
    """Build a JSON pointer from path parts, escaping ``~`` and ``/`` per RFC 6901."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def did_you_mean(name: object, candidates: Iterable[str]) -> str | None:
    """A ``did you mean 'x'?`` hint for a misspelt name, or None when nothing is close."""
    if not isinstance(name, str):
        return None
    matches = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)
    if not matches:
        return None
    return "did you mean " + " or ".join(repr(m) for m in matches) + "?"
