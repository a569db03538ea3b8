"""A dependency-free progress bar for training runs, local or remote.

On a terminal it redraws one line (``\\r``); in a log or a pipe it prints a line at
each tenth of the run, so CI logs stay short and readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    def __init__(self, total: int | None, *, stream: TextIO | None = None, width: int = 30, label: str = "step"):
        self.total = total
        self.stream = stream or sys.stderr
        self.width = width
        self.label = label
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.started = time.monotonic()
        self._last_tenth = -1

    def update(self, step: int, loss: float, extra: str = "") -> None:
        text = self._line(step, loss, extra)
        if self.interactive:
            self.stream.write("\r" + text)
            self.stream.flush()
            return
        tenth = int(10 * step / self.total) if self.total else step
        if tenth != self._last_tenth:
            self._last_tenth = tenth
            self.stream.write(text + "\n")

    def close(self, step: int, loss: float, extra: str = "") -> None:
        if self.interactive:
            self.stream.write("\r" + self._line(step, loss, extra) + "\n")
        elif self.total is None or int(10 * step / self.total) == self._last_tenth and step != self.total:
            self.stream.write(self._line(step, loss, extra) + "\n")
        self.stream.flush()

    def _line(self, step: int, loss: float, extra: str) -> str:
        elapsed = time.monotonic() - self.started
        if self.total:
            done = int(self.width * min(step / self.total, 1.0))
            bar = "[" + "#" * done + "." * (self.width - done) + "] "
            count = f"{self.label} {step}/{self.total}"
        else:
            bar, count = "", f"{self.label} {step}"
        return f"{bar}{count}  loss {loss:.6g}  {elapsed:.1f}s{('  ' + extra) if extra else ''}"
