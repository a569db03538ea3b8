"""Logging for the API and the workers: console lines for people, or JSON lines for machines
(``--log-format json``): time, level, logger, event, and — when known — the request id (taken from
the request's ``X-Request-ID`` or made up, echoed in the response, stored with a job and carried into
the worker that trains it), the tenant and the job id. Secrets never get here: nothing logs a
header or an environment variable.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
from typing import Any

FORMATS = ("console", "json")
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
tenant: contextvars.ContextVar[str | None] = contextvars.ContextVar("tenant", default=None)
job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)
_CONTEXT = (("request_id", request_id), ("tenant", tenant), ("job_id", job_id))


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name, "event": record.getMessage()}
        for name, var in _CONTEXT:
            value = getattr(record, name, None) or var.get()
            if value:
                out[name] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class ContextFilter(logging.Filter):
    """Console lines: the job and request a line is about, appended when known."""

    def filter(self, record: logging.LogRecord) -> bool:
        parts = [f"{name}={var.get()}" for name, var in _CONTEXT if var.get() and name != "tenant"]
        record.context = f" [{' '.join(parts)}]" if parts else ""
        return True


def formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    return logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s%(context)s")


def configure(fmt: str = "console", level: str | int = "INFO") -> None:
    """The root logger writes ``fmt`` lines to stderr (every logger propagates to it)."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(fmt))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if isinstance(level, str) else level)


def uvicorn_config(fmt: str, level: str) -> dict[str, Any]:
    """uvicorn's ``log_config``: its loggers (access lines included) through our formatter."""
    return {
        "version": 1, "disable_existing_loggers": False,
        "filters": {"context": {"()": ContextFilter}},
        "formatters": {"main": {"()": JsonFormatter} if fmt == "json" else {
            "format": "%(asctime)s %(levelname)s %(name)s: %(message)s%(context)s"}},
        "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "main", "filters": ["context"],
                                 "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["default"], "level": level.upper()},
        "loggers": {name: {"handlers": [], "level": level.upper(), "propagate": True}
                    for name in ("uvicorn", "uvicorn.error", "uvicorn.access")},
    }
