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

from worker.records import JobRecord
from worker.settings import Settings
from worker.store import TERMINAL, JobStore, StepRecord

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


def async_client(settings: Settings) -> aioredis.Redis:
    # The socket timeout must outlast XREAD's BLOCK.
    return aioredis.Redis.from_url(settings.redis_url, socket_timeout=BLOCK_MS / 1000 + 10, socket_connect_timeout=5)


async def job_events(store: JobStore, settings: Settings, path: str, job_id: str,
                     after: int) -> AsyncIterator[ServerSentEvent]:
    client = async_client(settings)
    key = store.job_key(job_id, "steps")
    last = after
    try:
        while True:
            entries = await _read(client, key, last, block=False)
            if not entries:
                # Nothing new: a finished job ends the stream at once, a live one is waited on.
                raw = await client.hgetall(store.job_key(job_id))
                job = JobRecord.from_hash({k.decode(): v.decode() for k, v in raw.items()}) if raw else None
                if job is None:  # expired or removed while streaming
                    return
                if job.state in TERMINAL:
                    # steps are written before the final state: whatever came in between is here now
                    while entries := await _read(client, key, last, block=False):
                        for record in entries:
                            last = record.step
                            yield ServerSentEvent(step_json(record), event="step", id=str(record.step))
                    yield ServerSentEvent(job_resource(job).model_dump_json(), event="end")
                    return
                entries = await _read(client, key, last, block=True)
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
            await client.aclose()


async def _read(client: aioredis.Redis, key: str, after: int, *, block: bool) -> list[StepRecord]:
    response = await client.xread({key: f"{after}-0"}, count=BATCH, block=BLOCK_MS if block else None)
    if not response:
        return []
    _, entries = response[0]
    return [StepRecord.from_fields(fields) for _, fields in entries]
