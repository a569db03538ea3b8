"""Server-Sent Events of a job's step entries, live from its Redis stream.

The stream's entry ids are ``{step}-0``, so ``XREAD`` from ``{after}-0`` resumes exactly
after a step a client has seen (``Last-Event-ID``). When the job is finished and every
entry has been sent, an ``end`` event carries the job resource and the stream closes.
"""

from __future__ import annotations

import json
import logging
from typing import AsyncIterator

import anyio
import redis
import redis.asyncio as aioredis
from sse_starlette import ServerSentEvent

from worker.store import TERMINAL, JobFollower, JobStore

from .problems import ProblemError, problem_body, unavailable
from .views import job_resource, step_json

log = logging.getLogger("service.events")

BLOCK_MS = 1000
BATCH = 100
# Stream ids are 64-bit; steps never come near this, and larger resume points are clamped to it.
MAX_STEP = 2**63 - 1


def resume_point(after: int, last_event_id: str | None) -> int:
    """Where a (re)connecting client resumes: after its Last-Event-ID, or ``?after=``, whichever is later."""
    if last_event_id:
        try:
            after = max(after, int(last_event_id.strip()))
        except ValueError:
            pass
    return min(after, MAX_STEP)


def event_loop_client(store: JobStore) -> aioredis.Redis:
    """The async Redis client of an API process's event loop (made in service/app.py's lifespan):
    the request-rate check and the event streams share it; its socket timeout outlasts the
    streams' blocking reads."""
    return JobFollower.connect(store.settings, BLOCK_MS)


async def job_events(store: JobStore, path: str, job_id: str, after: int,
                     client: aioredis.Redis | None = None) -> AsyncIterator[ServerSentEvent]:
    """The job's step events from step ``after`` on, then its end; on ``client``
    (:func:`event_loop_client`'s) when given, else on a connection of the stream's own."""
    follower = JobFollower(store, job_id, block_ms=BLOCK_MS, batch=BATCH, client=client)
    last = after
    try:
        while True:
            entries = await follower.steps_after(last, block=False)
            if not entries:
                # Nothing new: a finished job ends the stream at once, a live one is waited on.
                job = await follower.job()
                if job is None:  # expired or removed while streaming
                    return
                if job.state in TERMINAL:
                    # steps are written before the final state: whatever came in between is here now
                    while entries := await follower.steps_after(last, block=False):
                        for record in entries:
                            last = record.step
                            yield ServerSentEvent(step_json(record), event="step", id=str(record.step))
                    yield ServerSentEvent(job_resource(job).model_dump_json(), event="end")
                    return
                entries = await follower.steps_after(last, block=True)
            for record in entries:
                last = record.step
                yield ServerSentEvent(step_json(record), event="step", id=str(record.step))
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        log.warning("event stream of %s lost Redis: %s", job_id, exc)
        problem: ProblemError = unavailable("the job store (Redis) is not reachable; reconnect later",
                                            kind="store-unavailable")
        yield ServerSentEvent(json.dumps(problem_body(path, problem)), event="error")
    except Exception:  # noqa: BLE001 - never let a stream die with a traceback
        log.exception("event stream of %s failed", job_id)
        yield ServerSentEvent(json.dumps(problem_body(path, ProblemError(500, "the event stream failed",
                                                                           kind="internal-error"))),
                              event="error")
    finally:
        with anyio.CancelScope(shield=True):  # close the connection even when the client went away
            await follower.close()
