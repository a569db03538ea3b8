"""Per-tenant limits, the API's side: the request rate checked on every /v1 request and the job
limits handed to the store; a refusal is a 429 (service/problems.py: over_limit). The counting is in
Redis (worker/quota_store.py), so every API process enforces the same limits exactly; the
limits' values are ApiSettings' (service/settings.py), per tenant."""

from __future__ import annotations

import redis.asyncio as aioredis
from starlette.concurrency import run_in_threadpool

from worker.quota_store import JobQuota, QuotaExceeded
from worker.store import JobStore

from .problems import over_limit
from .settings import ApiSettings, TenantLimits


def job_quota(limits: TenantLimits) -> JobQuota:
    return JobQuota(max_queued_jobs=limits.max_queued_jobs, max_running_jobs=limits.max_running_jobs,
                    max_job_bytes=limits.max_job_bytes)


async def check_request_rate(store: JobStore, settings: ApiSettings, tenant: str,
                             client: aioredis.Redis | None) -> None:
    """One token of the tenant's bucket per /v1 request; none left is a 429. On the API process's
    async client when it has one (service/app.py), else in a thread."""
    limits = settings.limits_for(tenant)
    if limits.requests_per_second <= 0:
        return
    if client is not None:
        wait = await store.take_request_token_async(client, tenant, limits.requests_per_second, limits.request_burst)
    else:
        wait = await run_in_threadpool(store.take_request_token, tenant, limits.requests_per_second,
                                       limits.request_burst)
    if wait is not None:
        raise over_limit(QuotaExceeded("requests_per_second", limits.requests_per_second, 0, wait))
