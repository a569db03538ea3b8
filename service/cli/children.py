"""The child processes of ``chainrule serve``: each started in its own session, its output in a
log file of the stack's directory, and on Linux sent SIGTERM when ``serve`` itself dies; the
tail of that log is what ``serve`` shows when a child fails (``ServeError`` names the child to
blame). ``say`` is how ``serve`` itself speaks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

LOG_TAIL_LINES = 40


class ServeError(Exception):
    """Startup or supervision failed; ``child`` (when set) is the process to blame."""

    def __init__(self, message: str, child: Child | None = None):
        super().__init__(message)
        self.child = child


def say(message: str = "", *, err: bool = False) -> None:
    """One line of ``serve``'s own output, flushed at once."""
    print(message, file=sys.stderr if err else sys.stdout, flush=True)


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log_path: Path
    stopping: bool = field(default=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return tail(self.log_path, lines)


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file (reads at most its last 64 KiB)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 65536))
            text = fh.read().decode(errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def start(name: str, argv: list[str], env: dict[str, str], log_dir: Path, *,
          cwd: str | None = None, preexec: Callable[[], None] | None = None) -> Child:
    """Start ``argv`` as a child in its own session, appending its output to ``log_dir/<name>.log``."""
    log_path = log_dir / f"{name}.log"
    with open(log_path, "ab") as log:
        log.write(f"\n===== chainrule serve (pid {os.getpid()}) starts {name} at "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=preexec)
    return Child(name, proc, log_path)


def make_preexec() -> Callable[[], None] | None:
    """On Linux: a child gets SIGTERM when this process dies (even by SIGKILL), so none is orphaned."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork: nothing to load in the child
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM))
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec
