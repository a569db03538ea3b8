"""The settings the worker and the API share, read from environment variables (CHAINRULE_*).

Both sides read this object, so they agree on the Redis URL, the key namespace, the queue and
the job limits. ``REDIS_URL`` is also accepted without the prefix. What only the API reads
(API keys, request limits) is ``service.settings.ApiSettings``, a subclass of this one.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


# The Celery task that trains a job (worker/tasks.py registers it, worker/dispatch.py sends it).
TRAIN_TASK = "chainrule.train"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHAINRULE_", extra="ignore", populate_by_name=True)

    redis_url: str = Field("redis://127.0.0.1:6379/0", validation_alias=AliasChoices("CHAINRULE_REDIS_URL",
                                                                                        "REDIS_URL"))
    # Every key chainrule writes (its own and Celery's) starts with this, so several
    # deployments or test runs can share one Redis without touching each other's data.
    namespace: str = "chainrule"
    queue: str = TRAIN_TASK  # the Celery queue training tasks go to (named like the task unless set)

    # Celery's Redis transport redelivers an unacknowledged task after this many seconds
    # (at-least-once). It must exceed the longest job; the job lease (not the broker) is
    # what keeps a second delivery from training a job whose first trainer is alive.
    visibility_timeout_s: int = 3 * 3600
    lease_ttl_s: float = 30.0
    # A "running" job whose lease has expired lost its worker: the sweep (at each worker start
    # and every sweep_interval_s in every worker) requeues it, or fails it after max_attempts.
    sweep_interval_s: float = 10.0
    max_attempts: int = 3
    # A job stored but not confirmed sent to the broker after this long (its sender died in
    # between) is sent by the sweep.
    unsent_grace_s: float = 15.0
    # How long a trainer waits for Redis to come back (a restart) before leaving its job to
    # the sweep; the job then resumes from its last checkpoint.
    redis_outage_s: float = 120.0

    # Jobs
    default_time_limit_s: int = 3600
    # Must stay below the visibility timeout, or a long job is redelivered while it runs.
    max_time_limit_s: int = 2 * 3600
    stream_maxlen: int = 100_000
    retention_s: int = 7 * 24 * 3600
    checkpoint_every_s: float = 10.0  # default checkpoint cadence when a job sets no checkpoint_every
    # Memory (docs/runtime.md, "Memory"). The API refuses a job whose estimated peak
    # (runtime.memory: data, parameters, optimizer state, every node's value and gradient for a
    # batch, the compiled engine's buffers) is over this: 2 GiB keeps several pool children
    # within a common 8-16 GiB worker machine, and the estimate is an upper bound (1.6-3x).
    max_job_memory_bytes: int = Field(2 * 2**30, ge=1)
    # The address space (RLIMIT_AS) each prefork pool child may add to what it had mapped when
    # it started (measured then: interpreter, numpy, OpenBLAS's buffers; ~200 MiB on 2 cores),
    # so a job over it fails with OutOfMemory and the worker lives on (worker/memory.py).
    # None: max_job_memory_bytes + 1 GiB (an over-estimated job still fits; the rest is the
    # allocator's and the Redis replies' room). 0: no cap. Not applied with --pool solo.
    worker_memory_limit_bytes: int | None = Field(None, ge=0)

    # console lines, or JSON lines with request and job ids (worker/logs.py)
    log_format: Literal["console", "json"] = "console"
    # Celery task events (task-sent, -received, -started, -succeeded...), what Flower shows
    task_events: bool = True
    # A worker node's Prometheus metrics (worker/metrics.py): off unless a port is given
    worker_metrics_port: int | None = None
    worker_metrics_host: str = "127.0.0.1"

    @model_validator(mode="after")
    def _time_limits_fit_the_visibility_timeout(self) -> "Settings":
        if self.max_time_limit_s + 60 >= self.visibility_timeout_s:
            raise ValueError(f"CHAINRULE_VISIBILITY_TIMEOUT_S ({self.visibility_timeout_s}) must exceed "
                             f"CHAINRULE_MAX_TIME_LIMIT_S ({self.max_time_limit_s}) by more than a minute: "
                             "otherwise Celery redelivers jobs that are still running")
        return self

    def worker_memory_allowance(self) -> int | None:
        """The bytes a pool child may map beyond its baseline (None: no cap)."""
        if self.worker_memory_limit_bytes is None:
            return self.max_job_memory_bytes + 2**30
        return self.worker_memory_limit_bytes or None


@lru_cache
def get_settings() -> Settings:
    return Settings()
