"""The workers' hard memory cap: RLIMIT_AS on each prefork pool child.

worker/celery_app.py connects :func:`cap_pool_child` to Celery's ``worker_process_init``. In a
pool child it first makes OpenBLAS start its threads (one small matmul: their stacks and
buffers are the process's, not a job's), measures the address space the child has mapped
(``/proc/self/statm``), and sets ``RLIMIT_AS`` to that baseline plus
``Settings.worker_memory_allowance()`` (``CHAINRULE_WORKER_MEMORY_LIMIT_BYTES``; by default
``max_job_memory_bytes`` + 1 GiB). A job that allocates past it gets a MemoryError (numpy's
``_ArrayMemoryError`` is one): worker/jobs.py fails that job as ``OutOfMemory`` with
:func:`out_of_memory_message`, its reported steps kept, and the child lives on, its memory
freed as the job's frames unwind, to run the next job.

The main process is never capped: with ``--pool solo`` the jobs run there, beside the broker
connection and the recovery loop, and a cap would take those down with a job; that pool runs
uncapped (a job then fails with OutOfMemory only if the machine refuses the allocation, or is
killed by the kernel's OOM killer, retried, and failed as PoisonJob after max_attempts).
"""

from __future__ import annotations

import logging
import os
import resource

import numpy as np

from .settings import Settings, get_settings

log = logging.getLogger("chainrule.worker.memory")

_cap: dict[str, int] = {}  # this process's: {"limit": RLIMIT_AS, "allowance": bytes over the baseline, "baseline"}


def address_space() -> int:
    """The bytes this process has mapped now (VmSize)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _in_pool_child() -> bool:
    from billiard.process import current_process

    return current_process().name != "MainProcess"


def apply_cap(settings: Settings) -> int | None:
    """Set this process's RLIMIT_AS to its baseline + the allowance; the limit set (None: none)."""
    allowance = settings.worker_memory_allowance()
    if allowance is None:
        return None
    a = np.ones((64, 64))
    a @ a  # OpenBLAS's threads and buffers belong to the baseline, not to the first job
    baseline = address_space()
    limit = baseline + allowance
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY and limit > hard:
        limit = hard
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    _cap.update(limit=limit, allowance=allowance, baseline=baseline)
    return limit


def cap_pool_child(**_: object) -> None:
    """``worker_process_init``: cap a prefork pool child (never the main process: see the module)."""
    if not _in_pool_child():
        log.info("memory cap not applied: jobs run in the worker's main process (--pool solo)")
        return
    try:
        limit = apply_cap(get_settings())
    except (OSError, ValueError) as exc:  # an unreadable /proc or a refused limit: run uncapped, say so
        log.error("could not set the pool child's memory cap: %s", exc)
        return
    if limit is not None:
        log.info("pool child %d: address space %d bytes at start; RLIMIT_AS %d (+%d, "
                 "CHAINRULE_WORKER_MEMORY_LIMIT_BYTES)", os.getpid(), _cap["baseline"], limit, _cap["allowance"])


def out_of_memory_message(exc: BaseException) -> str:
    """What a job failed with when an allocation was refused: the cap, the setting, how to fit."""
    detail = str(exc) or type(exc).__name__
    if _cap:
        where = (f"the worker's memory cap: {_cap['allowance']} bytes beyond the process's own "
                 f"{_cap['baseline']} (RLIMIT_AS {_cap['limit']}; setting worker_memory_limit_bytes, "
                 "CHAINRULE_WORKER_MEMORY_LIMIT_BYTES)")
    else:
        where = "the machine's memory (this worker process has no memory cap)"
    return (f"the job ran out of memory: an allocation was refused ({detail}); it needed more than {where}. "
            "Use a smaller batch_size, less data or a smaller graph")
