"""Per-tenant limits in Redis, as methods of worker.store.JobStore (a mixin, like SweepRecords):
checked and counted in the same Lua step as the write they limit, so any number of API
processes enforce them exactly. docs/security.md "Quotas" is the policy; service/quotas.py turns
a refusal into a 429.

    {ns}:tenant:{t}:bucket         hash  the request token bucket: tokens, at (Redis's clock)
    {ns}:tenant:{t}:queued         set   the tenant's queued jobs  (kept by JobStore.transition)
    {ns}:tenant:{t}:running        set   its running/cancelling jobs (likewise)
    {ns}:tenant:{t}:usage:{kind}   zset  what holds storage (a job id, a graph id) -> when its keys
                                         expire (+inf while they do not)
    {ns}:tenant:{t}:usage:{kind}:bytes  hash  member -> bytes it counts for; '=' -> the total

``kind`` is ``jobs`` (a job's data, eval data, warm-start parameters and its step history's
bound, reserved at submit) or ``graphs`` (stored documents). Keys expire in Redis by themselves;
a ledger entry is dropped lazily, by the next write that reads the ledger, once its score (the
expiry time) has passed, so the total never counts an expired job or graph.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
import redis.exceptions

# A full Redis (maxmemory, noeviction) refuses a script's commands that may grow memory (HSET,
# HINCRBY, ZADD, SET...) and runs the ones that free it (DEL, HDEL, ZREM, EXPIRE): so every script
# here issues a growing write before any freeing one, and a refusal leaves nothing half done.

# Drop the ledger's entries whose keys have expired, and keep the total.
# Used with: KEYS[z] ledger zset, KEYS[h] its bytes hash; now.
_PURGE = """
local function purge(z, h, now)
  local gone = redis.call('ZRANGEBYSCORE', z, '-inf', now, 'LIMIT', 0, 1000)
  if #gone == 0 then return end
  local freed = 0
  for _, member in ipairs(gone) do
    freed = freed + (tonumber(redis.call('HGET', h, member)) or 0)
  end
  redis.call('HINCRBY', h, '=', -freed)
  redis.call('HDEL', h, unpack(gone))
  redis.call('ZREM', z, unpack(gone))
end
local function used(h)
  return tonumber(redis.call('HGET', h, '=')) or 0
end
-- seconds until the ledger's first entry expires, '' if none is due to
local function first_expiry(z, now)
  local row = redis.call('ZRANGEBYSCORE', z, '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if #row == 0 or row[2] == 'inf' then return '' end
  return tostring(tonumber(row[2]) - now)
end
"""

# A token bucket on Redis's clock (every API process shares it).
# KEYS[1] bucket; ARGV: rate per second, burst. Returns {1, ''} or {0, seconds until a token}.
_TAKE_TOKEN = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local ok = tokens >= 1
if ok then tokens = tokens - 1 end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
if ok then return {1, ''} end
return {0, tostring((1 - tokens) / rate)}
"""

# Store a graph document (or refresh it) within the tenant's graph bytes.
# KEYS: graph key, ledger zset, ledger hash. ARGV: blob, ttl (s), now, cap (0 = off), the member.
# Returns {1, ''} or {0, used, seconds until the first stored graph expires or ''}.
_PUT_GRAPH = _PURGE + """
local ttl, now, cap = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local size = string.len(ARGV[1])
purge(KEYS[2], KEYS[3], now)
if redis.call('EXISTS', KEYS[1]) == 0 then
  if cap > 0 and used(KEYS[3]) + size > cap then
    return {0, tostring(used(KEYS[3])), first_expiry(KEYS[2], now)}
  end
  redis.call('SET', KEYS[1], ARGV[1])
  -- an entry whose key expired a moment before its score passed is replaced, not counted twice
  local old = tonumber(redis.call('HGET', KEYS[3], ARGV[5])) or 0
  redis.call('HSET', KEYS[3], ARGV[5], size)
  redis.call('HINCRBY', KEYS[3], '=', size - old)
end
if redis.call('TTL', KEYS[1]) < ttl then
  redis.call('ZADD', KEYS[2], now + ttl, ARGV[5])
  redis.call('EXPIRE', KEYS[1], ttl)
end
return {1, ''}
"""

# Keep a stored graph at least ``ttl`` more seconds, and date its ledger entry to match; 0 when it
# is not stored. Also part of the move that finishes a job (worker/store.py: _TRANSITION).
KEEP_GRAPH = """
local function keep_graph(graph, ledger, member, ttl, now)
  local left = redis.call('TTL', graph)
  if left == -2 then return 0 end
  if left >= 0 and left < ttl then
    redis.call('ZADD', ledger, 'XX', now + ttl, member)
    redis.call('EXPIRE', graph, ttl)
  end
  return 1
end
"""

# A job uses a graph. KEYS: graph key, ledger zset. ARGV: ttl (s), now, the member.
_TOUCH_GRAPH = KEEP_GRAPH + """
return keep_graph(KEYS[1], KEYS[2], ARGV[3], tonumber(ARGV[1]), tonumber(ARGV[2]))
"""

# Create a queued job within the tenant's queued-jobs and job-bytes limits, in one step, and
# keep its graph stored at least the graph retention more (keep_graph; 0 = leave the graph as is).
# KEYS: job hash, data, eval data, init, tenant job index, outbox, queued, stats, tenant queued set,
#       job ledger zset, job ledger hash, graph key, graph ledger zset.
# ARGV: job id, created, max queued (0 = off), max bytes (0 = off), the job's bytes,
#       data, eval data ('' = none), init ('' = none), graph retention (s), then the hash's field, value...
# Returns {1, ''}, {0, limit, used, retry after ('' = unknown)}, or {0, 'graph_gone'} (nothing stored).
_CREATE_JOB = _PURGE + KEEP_GRAPH + """
local id, created = ARGV[1], tonumber(ARGV[2])
local max_queued, max_bytes, size = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local queued = redis.call('SCARD', KEYS[9])
if max_queued > 0 and queued >= max_queued then
  return {0, 'max_queued_jobs', tostring(queued), ''}
end
purge(KEYS[10], KEYS[11], created)
if max_bytes > 0 and used(KEYS[11]) + size > max_bytes then
  return {0, 'max_job_bytes', tostring(used(KEYS[11])), first_expiry(KEYS[10], created)}
end
local graph_ttl = tonumber(ARGV[9])
if graph_ttl > 0 and keep_graph(KEYS[12], KEYS[13], string.match(KEYS[12], '[^:]+$'), graph_ttl, created) == 0 then
  return {0, 'graph_gone'}
end
redis.call('HSET', KEYS[1], unpack(ARGV, 10))
redis.call('SET', KEYS[2], ARGV[6])
if ARGV[7] ~= '' then redis.call('SET', KEYS[3], ARGV[7]) end
if ARGV[8] ~= '' then redis.call('SET', KEYS[4], ARGV[8]) end
redis.call('ZADD', KEYS[5], created, id)
redis.call('ZADD', KEYS[6], created, id)
redis.call('ZADD', KEYS[7], created, id)
redis.call('HINCRBY', KEYS[8], 'submitted', 1)
redis.call('SADD', KEYS[9], id)
redis.call('ZADD', KEYS[10], 'inf', id)
redis.call('HSET', KEYS[11], id, size)
redis.call('HINCRBY', KEYS[11], '=', size)
return {1, ''}
"""

# Take a member out of a ledger. On a full Redis the total cannot be written: the entry then
# stays, counted until the time its keys would have expired (its score), when purge drops it.
_RELEASE = """
local function release(z, h, member)
  local size = tonumber(redis.call('HGET', h, member))
  if not size then return end
  local done = redis.pcall('HINCRBY', h, '=', -size)
  if type(done) == 'table' and done['err'] then return end
  redis.call('HDEL', h, member)
  redis.call('ZREM', z, member)
end
"""

# Delete a finished job: every key, its index entry, its ledger entry. It works on a full Redis
# (deleting is how a tenant frees memory).
# KEYS: job hash, tenant job index, ledger zset, ledger hash, then the job's other keys.
# ARGV: job id. Returns {1, state} when deleted, {0, state} when the job is not finished.
_DELETE_JOB = _RELEASE + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {0, ''} end
if state ~= 'succeeded' and state ~= 'failed' and state ~= 'cancelled' then return {0, state} end
redis.call('DEL', KEYS[1], unpack(KEYS, 5))
redis.call('ZREM', KEYS[2], ARGV[1])
release(KEYS[3], KEYS[4], ARGV[1])
return {1, state}
"""

# Delete a stored graph and its ledger entry. KEYS: graph key, ledger zset, ledger hash. ARGV: member.
_DELETE_GRAPH = _RELEASE + """
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
release(KEYS[2], KEYS[3], ARGV[1])
return 1
"""


# Drop from a zset index the members whose keys (ARGV[first], ...; the member is the key's last
# part) are gone: an expired key never comes back. Returns how many went.
_DROP_GONE = """
local function drop_gone(index, first)
  local gone = {}
  for i = first, #ARGV do
    if redis.call('EXISTS', ARGV[i]) == 0 then
      gone[#gone + 1] = string.match(ARGV[i], '[^:]+$')
    end
  end
  if #gone > 0 then redis.call('ZREM', index, unpack(gone)) end
  return #gone
end
"""

# Drop expired entries from a tenant's ledgers and job index (for tenants that write nothing new).
# KEYS: job index, jobs ledger zset, its hash, graphs ledger zset, its hash; ARGV: now, index cutoff,
# then the job hash keys of the index entries older than the cutoff (to see which are gone).
_PRUNE = _PURGE + _DROP_GONE + """
purge(KEYS[2], KEYS[3], tonumber(ARGV[1]))
purge(KEYS[4], KEYS[5], tonumber(ARGV[1]))
return drop_gone(KEYS[1], 3)
"""

# The same for an index alone (a tenant's sweeps). KEYS: the index; ARGV: the keys of its old members.
_PRUNE_INDEX = _DROP_GONE + """
return drop_gone(KEYS[1], 1)
"""


@dataclass(frozen=True)
class JobQuota:
    """The limits a job's creation is checked against (0 = off). The API builds it from the
    tenant's settings (service/settings.py: TenantLimits); a sweep's trials are created with the
    tenant's ``max_running_jobs`` as the sweep started (its ``max_concurrent`` bounds how many are
    queued; their bytes are the sweep's, stored once)."""
    max_queued_jobs: int = 0
    max_running_jobs: int = 0
    max_job_bytes: int = 0


class QuotaExceeded(Exception):
    """A write refused by a per-tenant limit: which one, its value, the usage, and when to retry
    (seconds; None when no stored item is due to expire)."""

    def __init__(self, limit: str, value: float, used: float, retry_after_s: float | None):
        super().__init__(f"{limit}: {used} of {value} used")
        self.limit, self.value, self.used, self.retry_after_s = limit, value, used, retry_after_s


def _token_wait(reply: list) -> float | None:
    """_TAKE_TOKEN's reply: None (a token taken) or the seconds until one, to the millisecond above."""
    ok, wait = reply
    return None if ok else math.ceil(_seconds(wait) * 1000) / 1000


def _seconds(raw: bytes | str) -> float | None:
    text = raw.decode() if isinstance(raw, bytes) else raw
    return None if text == "" else max(0.0, float(text))


class TenantQuotas:
    """Mixed into JobStore (which provides ``_r``, ``tenant_key`` and ``settings``)."""

    def _quota_scripts(self) -> None:
        r = self._r
        self._take_token = r.register_script(_TAKE_TOKEN)
        self._put_graph_script = r.register_script(_PUT_GRAPH)
        self._touch_graph = r.register_script(_TOUCH_GRAPH)
        self._delete_job = r.register_script(_DELETE_JOB)
        self._delete_graph = r.register_script(_DELETE_GRAPH)
        self._prune = r.register_script(_PRUNE)
        self._prune_index = r.register_script(_PRUNE_INDEX)

    def usage_keys(self, tenant: str, kind: str) -> list[str]:
        return [self.tenant_key(tenant, f"usage:{kind}"), self.tenant_key(tenant, f"usage:{kind}:bytes")]

    def take_request_token(self, tenant: str, per_second: float, burst: int) -> float | None:
        """None if the tenant may make a request now, else the seconds until it may. A Redis at
        its maxmemory cannot count: the request goes through (reads still work; writes get a 503)."""
        try:
            return _token_wait(self._take_token(keys=[self.tenant_key(tenant, "bucket")],
                                                args=[repr(per_second), max(1, burst)]))
        except redis.exceptions.OutOfMemoryError:
            return None

    async def take_request_token_async(self, client: aioredis.Redis, tenant: str, per_second: float,
                                       burst: int) -> float | None:
        """:meth:`take_request_token` on an async client of the same Redis (the API's event loop
        takes it without a thread)."""
        try:
            return _token_wait(await client.register_script(_TAKE_TOKEN)(keys=[self.tenant_key(tenant, "bucket")],
                                                                         args=[repr(per_second), max(1, burst)]))
        except redis.exceptions.OutOfMemoryError:
            return None

    def usage(self, tenant: str, kind: str) -> int:
        """Bytes the tenant's stored ``kind`` ("jobs", "graphs") counts for now (expired ones may
        still count until the next write of that kind drops them)."""
        return int(self._r.hget(self.usage_keys(tenant, kind)[1], "=") or 0)

    def prune_tenants(self) -> int:
        """Drop what expired from every tenant's job index, sweep list and ledgers: their keys
        expire by themselves, these entries would not. Returns how many index entries went."""
        cutoff = time.time() - self.settings.retention_s  # a job expires at least retention_s after it was made
        prefix = f"{self.ns}:tenant:"
        tenants = set()
        for raw in self._r.scan_iter(prefix + "*", count=1000):  # tenants with a job index or a ledger
            key = raw.decode()[len(prefix):]
            for suffix in (":jobs", ":usage:jobs", ":usage:graphs", ":sweeps"):
                if key.endswith(suffix) and ":" not in key[:-len(suffix)]:
                    tenants.add(key[:-len(suffix)])
        pruned = 0
        for tenant in tenants:
            index = self.tenant_key(tenant, "jobs")
            pruned += self._prune(keys=[index, *self.usage_keys(tenant, "jobs"), *self.usage_keys(tenant, "graphs")],
                                  args=[repr(time.time()), cutoff, *map(self.job_key, self._older(index, cutoff))])
            sweeps = self.tenant_key(tenant, "sweeps")  # a sweep too expires retention_s after it ends
            if old := self._older(sweeps, cutoff):
                pruned += self._prune_index(keys=[sweeps], args=list(map(self.sweep_key, old)))
        return pruned

    def _older(self, index: str, cutoff: float) -> list[str]:
        """The members of a tenant's index made before ``cutoff`` (a batch of them)."""
        return [m.decode() for m in self._r.zrangebyscore(index, "-inf", cutoff, start=0, num=5000)]

    def running_jobs(self, tenant: str) -> int:
        return self._r.scard(self.tenant_key(tenant, "running"))

    def queued_jobs(self, tenant: str) -> int:
        return self._r.scard(self.tenant_key(tenant, "queued"))
