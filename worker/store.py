"""The Redis data model of jobs, shared by the service (writes requests, reads progress)
and the workers (write progress). Documented in docs/architecture.md. One module, past 300
lines, because every key and every atomic (Lua) write of the model is here and nowhere
else: the fencing, outbox and lease rules can be checked against each other in one read.

Keys (``{ns}`` is Settings.namespace):

    {ns}:job:{id}                  hash    state, tenant, progress, timestamps, error, settings
    {ns}:job:{id}:steps            stream  one entry per reported step; entry id = "{step}-0"
    {ns}:job:{id}:series           string  the same entries as fixed-width float64 rows (plots)
    {ns}:job:{id}:series:columns   string  the series' column names, JSON (set once)
    {ns}:job:{id}:data             string  training data, msgpack tensors
    {ns}:job:{id}:checkpoint       string  runtime.Checkpoint bytes (msgpack)
    {ns}:job:{id}:result           string  trained parameters + final loss, msgpack
    {ns}:job:{id}:lease            string  the token of the trainer running the job (SET NX PX)
    {ns}:tenant:{t}:jobs           zset    job ids by creation time (listing, pagination)
    {ns}:tenant:{t}:graph:{hash}   string  a graph document, canonical msgpack
    {ns}:tenant:{t}:idem:{key}     string  job id submitted with that Idempotency-Key
    {ns}:tenant:{t}:queued|running set     the tenant's queued / running jobs (per-tenant limits)
    {ns}:tenant:{t}:usage:...      zset, hash  what the tenant stores, in bytes (worker/quota_store.py)

Stream entry ids carry the step number, so a step written twice (a redelivered task
replaying from its checkpoint) is refused by Redis itself instead of duplicated.
Everything is JSON or msgpack: nothing is ever pickled.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import msgpack
import numpy as np
import redis
import redis.asyncio as aioredis

import graphspec
from graphspec.codec import pack
from graphspec.tensors import encode_tensor_raw

from .dispatch import TRAIN_TASK
from .records import JobRecord
from .settings import Settings
from .quota_store import _CREATE_JOB, KEEP_GRAPH, JobQuota, QuotaExceeded, TenantQuotas, _seconds
from .sweep_store import SweepRecords

STATES = ("queued", "running", "succeeded", "failed", "cancelling", "cancelled")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})

# a job's keys besides its hash ({ns}:job:{id}:{part})
JOB_PARTS = ("steps", "series", "series:columns", "data", "eval_data", "checkpoint", "result", "init", "lease")
_EXPIRING_PARTS = tuple(part for part in JOB_PARTS if part != "lease")  # the lease keeps its own short life

# The fence: a trainer may write only while it holds the job's lease. A lease that lapsed
# while nobody took over (Redis restarted, a long pause) is taken back, so an outage costs
# a pause, not a rollback to the last checkpoint; once the sweep has requeued the job
# (state no longer running) or another trainer holds the lease, the writer is refused.
# KEYS[1] = lease, KEYS[2] = job hash; ARGV[1] = token; ARGV[2] = lease TTL (ms).
_FENCE = """
local function fenced(token, ttl)
  local holder = redis.call('GET', KEYS[1])
  if holder == token then return true end
  if holder then return false end
  local state = redis.call('HGET', KEYS[2], 'state')
  if (state == 'running' or state == 'cancelling') and redis.call('HGET', KEYS[2], 'lease') == token then
    redis.call('SET', KEYS[1], token, 'PX', ttl)
    return true
  end
  return false
end
"""

# Compare-and-set of a job's state: move only from an allowed state, set fields with it, and
# keep the indexes in the same atomic step (a crash in between would lose a job from them).
# KEYS: lease, job hash, active set, outbox zset, queued zset[, a blob key written with the move].
# ARGV: token ('' = unfenced, '!' = only while no lease exists: the sweep), lease TTL (ms),
#       job id, now, flags ('e': the job's message must be (re)sent; 'a': the move starts an attempt,
#       counted in the same step so a trainer killed right after it is never left uncounted),
#       retention (s: a finished job's keys expire after it), n, allowed x n, to, field, value... [, the blob]
_TRANSITION = _FENCE + KEEP_GRAPH + ("""
local token = ARGV[1]
if token == '!' then
  if redis.call('EXISTS', KEYS[1]) == 1 then return {0, 'leased'} end
elseif token ~= '' and not fenced(token, ARGV[2]) then
  return {-1, ''}
end
local state = redis.call('HGET', KEYS[2], 'state')
if not state then return {0, ''} end
local n = tonumber(ARGV[7])
-- the tenant's queued and running sets, next to the namespace's (KEYS[3] is '{ns}:active')
local tenant = redis.call('HGET', KEYS[2], 'tenant') or ''
local tenant_key = string.sub(KEYS[3], 1, -8) .. ':tenant:' .. tenant
for i = 1, n do
  if ARGV[7 + i] == state then
    local to = ARGV[8 + n]
    if to == 'running' and state == 'queued' then  -- the tenant's max_running_jobs, recorded at submit
      local cap = tonumber(redis.call('HGET', KEYS[2], 'max_running') or '') or 0
      if cap > 0 and redis.call('SCARD', tenant_key .. ':running') >= cap then return {0, 'tenant_busy'} end
    end
    local last = #ARGV
    if #KEYS == 6 then
      last = last - 1
      redis.call('SET', KEYS[6], ARGV[#ARGV])
    end
    redis.call('HSET', KEYS[2], 'state', to, unpack(ARGV, 9 + n, last))
    if to == 'running' or to == 'cancelling' then
      redis.call('SADD', KEYS[3], ARGV[3])
      redis.call('SADD', tenant_key .. ':running', ARGV[3])
    else
      redis.call('SREM', KEYS[3], ARGV[3])
      redis.call('SREM', tenant_key .. ':running', ARGV[3])
    end
    if to == 'queued' then
      redis.call('ZADD', KEYS[5], ARGV[4], ARGV[3])
      redis.call('SADD', tenant_key .. ':queued', ARGV[3])
    else
      redis.call('ZREM', KEYS[5], ARGV[3])
      redis.call('SREM', tenant_key .. ':queued', ARGV[3])
    end
    local attempts = 0
    if string.find(ARGV[5], 'a', 1, true) then
      attempts = redis.call('HINCRBY', KEYS[2], 'attempts', 1)
    end
    if string.find(ARGV[5], 'e', 1, true) then
      redis.call('ZADD', KEYS[4], ARGV[4], ARGV[3])
    elseif to == 'succeeded' or to == 'failed' or to == 'cancelled' then
      redis.call('ZREM', KEYS[4], ARGV[3])
      -- finished: in the same step, its keys expire after retention, its bytes stop counting then,
      -- its graph is kept at least as long, and the namespace counts it (a trainer killed after
      -- this step leaves nothing undone: no key without an expiry)
      local ttl = tonumber(ARGV[6])
      local ended = tonumber(ARGV[4])
      redis.call('ZADD', tenant_key .. ':usage:jobs', 'XX', ended + ttl, ARGV[3])
      redis.call('HINCRBY', string.sub(KEYS[3], 1, -8) .. ':stats:jobs', to, 1)
      for _, part in ipairs({%(parts)s}) do
        redis.call('EXPIRE', KEYS[2] .. part, ttl)
      end
      local graph_id = redis.call('HGET', KEYS[2], 'graph_id')
      if graph_id then
        keep_graph(tenant_key .. ':graph:' .. graph_id, tenant_key .. ':usage:graphs', graph_id, ttl, ended)
      end
    end
    return {1, state, attempts}
  end
end
return {0, state}
""" % {"parts": ", ".join(repr(p) for p in ["", *(f":{part}" for part in _EXPIRING_PARTS)])})


# Step entries, progress and a read of the state in one fenced round trip.
# KEYS: lease, job hash, steps stream, series, series columns.
# ARGV: token, lease TTL, maxlen, the series' columns (JSON; '' = no series rows this time),
#       the records' series rows (float64, one after the other), the bytes of one row,
#       the records as one msgpack array of [entry id, its loss if finite (else ''), [field, value, ...]]
#       (one argument, not a dozen per record: redis-py's encoding of each argument was most of a
#       flush's cost, issue #19's reporting overhead), then progress field, value...
# Only entries XADD accepts (not a replay's, which it refuses) get their series row and count for
# best_loss, so the series holds exactly the stream's entries; a series whose columns differ from
# the ones stored first gets no rows, and readers then see it is short (JobStore.read_series).
_REPORT = _FENCE + """
if not fenced(ARGV[1], ARGV[2]) then return {-1, '', {}} end
local series = ARGV[4] ~= ''
if series then
  redis.call('SET', KEYS[5], ARGV[4], 'NX')
  series = redis.call('GET', KEYS[5]) == ARGV[4]
end
local best = tonumber(redis.call('HGET', KEYS[2], 'best_loss') or '')
local best_text, best_step = nil, nil
local width = tonumber(ARGV[6])
local records = cmsgpack.unpack(ARGV[7])
local refused, accepted = {}, {}
for r, record in ipairs(records) do
  local id, loss_text = record[1], record[2]
  local added = redis.pcall('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], id, unpack(record[3]))
  if type(added) == 'table' and added.err then
    refused[#refused + 1] = id
  else
    accepted[#accepted + 1] = r
    local loss = tonumber(loss_text)
    if loss and (best == nil or loss < best) then best, best_text, best_step = loss, loss_text, id end
  end
end
if series and #accepted == #records then
  redis.call('APPEND', KEYS[4], ARGV[5])
elseif series and #accepted > 0 then
  local rows = {}
  for k, r in ipairs(accepted) do rows[k] = string.sub(ARGV[5], (r - 1) * width + 1, r * width) end
  redis.call('APPEND', KEYS[4], table.concat(rows))
end
if best_text then
  redis.call('HSET', KEYS[2], 'best_loss', best_text, 'best_loss_step', string.match(best_step, '^(%d+)'))
end
if #ARGV > 7 then redis.call('HSET', KEYS[2], unpack(ARGV, 8)) end
return {1, redis.call('HGET', KEYS[2], 'state') or '', refused}
"""

# KEYS: lease, job hash, blob key. ARGV: token, lease TTL, blob.
_PUT_FENCED = _FENCE + """
if not fenced(ARGV[1], ARGV[2]) then return 0 end
redis.call('SET', KEYS[3], ARGV[3])
return 1
"""

# KEYS: lease, job hash. ARGV: token, lease TTL.
_RENEW = _FENCE + """
if not fenced(ARGV[1], ARGV[2]) then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Claim an outbox entry that has waited past the grace period: re-score it to now, so other
# sweepers leave it alone while this one sends (a sweeper that dies mid-way leaves it due again).
_CLAIM_UNSENT = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) <= tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  return 1
end
return 0
"""
# Remove an outbox entry only if nobody re-added it since (a later hand-back needs its own send).
_SENT = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then return redis.call('ZREM', KEYS[1], ARGV[1]) end
return 0
"""


JOB_ID = re.compile(r"job_[0-9a-f]{32}")
# A job deferred by its tenant's max_running_jobs is sent again after about this long (and the
# sweep's interval): a slot freed by a finishing job is taken within seconds.
DEFER_S = 2.0


# Validated graphs by the SHA-256 of their stored bytes (JobStore.get_graph), least recently used
# out first: a worker trains the same few graphs over and over.
_GRAPHS: "OrderedDict[bytes, graphspec.Graph]" = OrderedDict()
_GRAPHS_LOCK = threading.Lock()
_GRAPHS_KEPT = 256


def now() -> float:
    return time.time()


def encode_tensors(tensors: dict[str, np.ndarray]) -> bytes:
    return pack({name: encode_tensor_raw(np.asarray(value)) for name, value in tensors.items()})


def decode_tensors(blob: bytes, limits: graphspec.Limits | None = None) -> dict[str, np.ndarray]:
    from runtime.data import tensors_from_tree

    limits = limits or graphspec.Limits(max_bytes=max(len(blob), 1), max_tensor_elements=2**40)
    return tensors_from_tree(graphspec.parse(blob, "msgpack", limits), "stored tensors", limits=limits)


def _job_of_envelope(raw: bytes | None) -> str | None:
    """The job id of a chainrule.train message as kombu stores it: in the queue list (JSON,
    body base64) or unacked ([message, exchange, routing key])."""
    try:
        message = json.loads(raw)
        if isinstance(message, list):
            message = message[0]
        if message["headers"].get("task") != TRAIN_TASK:
            return None
        body = message["body"]
        if message["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        job_id = json.loads(body)[0][0]
    except (TypeError, ValueError, KeyError, IndexError):
        return None
    return job_id if isinstance(job_id, str) and JOB_ID.fullmatch(job_id) else None


def _record(raw: dict[bytes, bytes]) -> JobRecord | None:
    """A job hash as Redis returns it (bytes), as a record; None for no hash."""
    return JobRecord.from_hash({k.decode(): v.decode() for k, v in raw.items()}) if raw else None


class LeaseLost(Exception):
    """A trainer's write was refused: the job's lease is held by another trainer, or the
    sweep has already given the job back to the queue. The trainer must stop at once."""

    def __init__(self, job_id: str):
        super().__init__(f"job {job_id}: this trainer no longer holds the job's lease")
        self.job_id = job_id


class GraphGone(Exception):
    """A job was not stored: its graph is not (or no longer) stored for the tenant."""

    def __init__(self, graph_id: str):
        super().__init__(f"graph {graph_id} is not stored")
        self.graph_id = graph_id


class IdempotencyConflict(Exception):
    """An Idempotency-Key reused with a different request body."""

    def __init__(self, job_id: str):
        super().__init__(f"this Idempotency-Key was already used for job {job_id} with a different request")
        self.job_id = job_id


def request_fingerprint(graph_id: str, spec: dict[str, Any], data: bytes, eval_data: bytes | None) -> str:
    digest = hashlib.sha256()
    for part in (graph_id.encode(), json.dumps(spec, sort_keys=True).encode(), data, eval_data or b""):
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()


SERIES_LEAD = ("step", "time", "loss", "eval_loss")
METRIC_PREFIX = "metric:"
NORM_PREFIX = "grad_norm:"
SERIES_DTYPE = np.dtype("<f8")


def series_columns(norm_names: Iterable[str], metric_names: Iterable[str] = ()) -> list[str]:
    """The columns of a job's series (and of its CSV export): step, time, loss, eval_loss
    (NaN when the entry has none), one ``metric:<name>`` per metric (lr, grad_norm, accuracy,
    eval_accuracy, ...), then one ``grad_norm:<parameter>`` per parameter."""
    return [*SERIES_LEAD, *(METRIC_PREFIX + name for name in metric_names), *(NORM_PREFIX + name for name in norm_names)]


def series_rows(records: Sequence["StepRecord"], norm_names: list[str],
                norms: Sequence[Mapping[str, float]] | None = None, metric_names: Sequence[str] = ()) -> np.ndarray:
    """Step entries as rows of a series (:func:`series_columns` with ``norm_names`` and
    ``metric_names``): absent values are NaN. ``norms``: each record's gradient norms, when already read."""
    norms = [r.grad_norms for r in records] if norms is None else norms

    def value(v):
        return np.nan if v is None else v
    return np.array([[r.step, r.time, r.loss, value(r.eval_loss), *(value(r.metrics.get(m)) for m in metric_names),
                      *(n.get(name, np.nan) for name in norm_names)] for r, n in zip(records, norms)],
                    dtype=SERIES_DTYPE).reshape(len(records), len(SERIES_LEAD) + len(metric_names) + len(norm_names))


@dataclass(frozen=True)
class StepSeries:
    """A job's step history as numbers, one row per entry in step order: ``values[:, j]`` is
    column ``columns[j]`` (see :func:`series_columns`); absent values are NaN. ``source`` says
    where it was read: the ``series`` key (one GET) or the ``stream`` (jobs written before it)."""

    columns: list[str]
    values: np.ndarray
    source: str

    @property
    def norm_names(self) -> list[str]:
        return [c.removeprefix(NORM_PREFIX) for c in self.columns if c.startswith(NORM_PREFIX)]

    @property
    def metric_names(self) -> list[str]:
        return [c.removeprefix(METRIC_PREFIX) for c in self.columns if c.startswith(METRIC_PREFIX)]

    def column(self, name: str) -> int:
        return self.columns.index(name)

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True)
class StepRecord:
    step: int
    loss: float
    grad_norms: Mapping[str, float]  # any mapping (runtime's are computed lazily): read once, when stored
    time: float
    eval_loss: float | None = None
    grads: bytes | None = None  # msgpack tensors when the job asked for gradients: "full"
    # lr, grad_norm (before clipping), accuracy, eval_accuracy, ...: one key set per job (None: absent here)
    metrics: Mapping[str, float | None] = field(default_factory=dict)

    def to_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"step": self.step, "loss": repr(self.loss), "norms": json.dumps(dict(self.grad_norms)),
                                  "t": repr(self.time)}
        if self.eval_loss is not None:
            fields["eval_loss"] = repr(self.eval_loss)
        if self.grads is not None:
            fields["grads"] = self.grads
        if self.metrics:  # non-finite numbers as strings: JSON has none
            fields["metrics"] = json.dumps({k: v if v is None or math.isfinite(v) else repr(v)
                                            for k, v in self.metrics.items()})
        return fields

    @classmethod
    def size_bound(cls, params: Mapping[str, tuple[np.dtype, tuple[int, ...]]], gradients: str,
                   metric_names: Sequence[str] = ()) -> int:
        """At most how many bytes one entry of a job takes in Redis, for parameters
        ``{name: (dtype, shape)}``, the job's ``gradients`` option and its metrics
        (worker.step_metrics): the fields as :meth:`to_fields` writes them, with the longest
        floats, plus Redis's per-field overhead, plus the entry's float64 row in the job's series key."""
        longest = -2.2250738585072014e-308  # as long as a float's repr gets
        norms = {name: longest for name in params} if gradients != "none" else {}
        record = cls(step=2**63 - 1, loss=longest, grad_norms=norms, time=longest, eval_loss=longest,
                     metrics={name: longest for name in metric_names})
        fields = record.to_fields()
        size = sum(len(str(k)) + len(str(v)) for k, v in fields.items())
        size += len(series_columns(norms, metric_names)) * 8  # its row in the series key
        if gradients == "full":
            # the encoding of empty arrays of the same dtype and rank, plus the data and its
            # length prefix, plus room for the shape's integers: no gradient is allocated here
            size += len(encode_tensors({n: np.zeros((0,) * len(shape), dtype) for n, (dtype, shape) in params.items()}))
            size += sum(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize + 5 + 9 * len(shape)
                        for dtype, shape in params.values())
        return size + 16 * (len(fields) + 1) + 64

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> "StepRecord":
        get = {k.decode(): v for k, v in fields.items()}
        metrics = {k: None if v is None else float(v) for k, v in json.loads(get.get("metrics", b"{}")).items()}
        return cls(step=int(get["step"]), loss=float(get["loss"]), grad_norms=json.loads(get["norms"]),
                   time=float(get["t"]), eval_loss=float(get["eval_loss"]) if "eval_loss" in get else None,
                   grads=get.get("grads"), metrics=metrics)


class JobStore(SweepRecords, TenantQuotas):
    """Every Redis read and write of the job model goes through here (sweeps' records: the
    SweepRecords mixin, worker/sweep_store.py)."""

    def __init__(self, client: redis.Redis, settings: Settings):
        self._r = client  # private: every read and write is a method here
        self.settings = settings
        self.ns = settings.namespace
        self._transition = client.register_script(_TRANSITION)
        self._report = client.register_script(_REPORT)
        self._put_fenced = client.register_script(_PUT_FENCED)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._claim_unsent = client.register_script(_CLAIM_UNSENT)
        self._sent = client.register_script(_SENT)
        self._create_job = client.register_script(_CREATE_JOB)
        self._quota_scripts()
        self.active_key = f"{self.ns}:active"
        self.outbox_key = f"{self.ns}:outbox"
        self.queued_key = f"{self.ns}:queued"
        self.stats_key = f"{self.ns}:stats:jobs"  # counters: submitted, succeeded, failed, cancelled

    @classmethod
    def connect(cls, settings: Settings) -> "JobStore":
        return cls(redis.Redis.from_url(settings.redis_url, socket_timeout=30, socket_connect_timeout=5,
                                        health_check_interval=30), settings)

    # -- keys --------------------------------------------------------------------------
    def job_key(self, job_id: str, part: str | None = None) -> str:
        return f"{self.ns}:job:{job_id}" + (f":{part}" if part else "")

    def tenant_key(self, tenant: str, part: str) -> str:
        return f"{self.ns}:tenant:{tenant}:{part}"

    # -- graphs ------------------------------------------------------------------------
    def put_graph(self, tenant: str, graph: graphspec.Graph, *, ttl_s: int | None = None, max_bytes: int = 0,
                  graph_id: str | None = None) -> str:
        """Store a graph for ``ttl_s`` seconds (default ``retention_s``) or refresh a stored one;
        its bytes count toward the tenant's ``max_bytes`` (0 = off): over it, :class:`QuotaExceeded`.
        ``graph_id``: its content hash, when the caller has it already."""
        graph_id = graph_id or graphspec.content_hash(graph)
        ttl = ttl_s or self.settings.retention_s
        ok, *refused = self._put_graph_script(
            keys=[self.tenant_key(tenant, f"graph:{graph_id}"), *self.usage_keys(tenant, "graphs")],
            args=[graphspec.dumps(graph, "msgpack"), ttl, repr(now()), max_bytes, graph_id])
        if not ok:
            raise QuotaExceeded("max_graph_bytes", max_bytes, int(refused[0]), _seconds(refused[1]))
        return graph_id

    def keep_graph(self, tenant: str, graph_id: str, ttl_s: int) -> bool:
        """Keep a stored graph at least ``ttl_s`` more seconds (a job uses it); False if it is gone."""
        return bool(self._touch_graph(keys=[self.tenant_key(tenant, f"graph:{graph_id}"),
                                            self.usage_keys(tenant, "graphs")[0]],
                                      args=[int(ttl_s), repr(now()), graph_id]))

    def graph_users(self, tenant: str, graph_id: str, *, limit: int = 5) -> list[str]:
        """Up to ``limit`` of the tenant's stored jobs that train ``graph_id`` (one pipelined read
        of the tenant's job index: deleting a graph is rare)."""
        ids = [raw.decode() for raw in self._r.zrange(self.tenant_key(tenant, "jobs"), 0, -1)]
        used = self._pipelined(ids, lambda pipe, job_id: pipe.hget(self.job_key(job_id), "graph_id"))
        users = [job_id for job_id, (by,) in zip(ids, used) if by is not None and by.decode() == graph_id]
        return users[:limit]

    def delete_graph(self, tenant: str, graph_id: str) -> bool:
        return bool(self._delete_graph(keys=[self.tenant_key(tenant, f"graph:{graph_id}"),
                                             *self.usage_keys(tenant, "graphs")], args=[graph_id]))

    def delete_job(self, tenant: str, job_id: str) -> tuple[bool, str | None]:
        """Delete a finished job and everything it stored; (deleted, its state): a job that is not
        finished is left alone (False, its state); (False, None) when there is no such job."""
        deleted, state = self._delete_job(
            keys=[self.job_key(job_id), self.tenant_key(tenant, "jobs"), *self.usage_keys(tenant, "jobs"),
                  *(self.job_key(job_id, part) for part in JOB_PARTS)], args=[job_id])
        state = state.decode() if isinstance(state, bytes) else state
        return bool(deleted), state or None

    def get_graph(self, tenant: str, graph_id: str) -> graphspec.Graph | None:
        """The tenant's stored graph, validated (a graph is a value, never modified: the same stored
        bytes give the same object back, from a per-process cache, instead of a parse and a full
        validation per job)."""
        return self._graph_of(self._r.get(self.tenant_key(tenant, f"graph:{graph_id}")))

    def get_graph_and_blobs(self, tenant: str, graph_id: str, job_id: str,
                            *parts: str) -> tuple[graphspec.Graph | None, list[bytes | None]]:
        """The tenant's graph (as :meth:`get_graph`) and several of the job's blobs, in the order
        asked, in one round trip (MGET): what a trainer starts from."""
        graph_blob, *blobs = self._r.mget([self.tenant_key(tenant, f"graph:{graph_id}"),
                                           *(self.job_key(job_id, part) for part in parts)])
        return self._graph_of(graph_blob), blobs

    @staticmethod
    def _graph_of(blob: bytes | None) -> graphspec.Graph | None:
        if blob is None:
            return None
        key = hashlib.sha256(blob).digest()
        with _GRAPHS_LOCK:
            graph = _GRAPHS.get(key)
            if graph is not None:
                _GRAPHS.move_to_end(key)
                return graph
        graph = graphspec.loads(blob, "msgpack", limits=graphspec.Limits(max_bytes=len(blob) + 1, max_nodes=10**6,
                                                                         max_tensor_elements=2**40))
        with _GRAPHS_LOCK:
            _GRAPHS[key] = graph
            if len(_GRAPHS) > _GRAPHS_KEPT:
                _GRAPHS.popitem(last=False)
        return graph

    # -- jobs --------------------------------------------------------------------------
    def create_job(self, *args: Any, **kwargs: Any) -> tuple[str, bool]:
        """:meth:`store_job`'s (job id, created)."""
        record, created = self.store_job(*args, **kwargs)
        return record.id, created

    def store_job(self, tenant: str, graph_id: str, spec: dict[str, Any], data: bytes,
                  eval_data: bytes | None = None, idempotency_key: str | None = None,
                  init: bytes | None = None, request_id: str | None = None, quota: JobQuota = JobQuota(),
                  history_bytes: int = 0, keep_graph_s: int = 0) -> tuple[JobRecord, bool]:
        """Store a queued job, in the outbox until :meth:`mark_sent` (a job whose sender died
        before sending is sent by the sweep); returns (the job as stored, created): its ``created`` is
        its outbox entry's score, for :meth:`mark_sent`. With an Idempotency-Key already used
        by this tenant for the same request, returns the existing job's id instead (a record holding
        only its id and tenant; created=False); the same key with a different request raises :class:`IdempotencyConflict`. Over one of
        ``quota``'s limits nothing is stored and :class:`QuotaExceeded` says which; the job's bytes
        (its blobs and ``history_bytes``, its step history's bound) count toward ``max_job_bytes``.
        With ``keep_graph_s`` the graph is kept stored at least that long more in the same step
        (:meth:`keep_graph`), and :class:`GraphGone` is raised, nothing stored, if it is not stored."""
        job_id = "job_" + uuid.uuid4().hex  # JOB_ID
        if idempotency_key is not None:
            idem = self.tenant_key(tenant, f"idem:{idempotency_key}")
            fingerprint = request_fingerprint(graph_id, spec, data, eval_data)
            if not self._r.set(idem, f"{job_id} {fingerprint}", nx=True, ex=self.settings.retention_s):
                existing_id, _, existing_print = (self._r.get(idem) or b"").decode().partition(" ")
                if existing_print != fingerprint:
                    raise IdempotencyConflict(existing_id)
                return JobRecord.from_hash({"id": existing_id, "tenant": tenant}), False
        created = now()
        fields = {
            "id": job_id, "tenant": tenant, "state": "queued", "graph_id": graph_id, "created": repr(created),
            "step": 0, "total_steps": spec.get("steps") or 0, "attempts": 0, "spec": json.dumps(spec),
            "max_running": quota.max_running_jobs,  # read by the move to running (the tenant's cap)
            **({"request_id": request_id} if request_id else {}),  # the submitting request's, for the worker's logs
        }
        # What the job holds in Redis: its blobs, and the most its step history may take.
        size = len(data) + len(eval_data or b"") + len(init or b"") + history_bytes
        keys = [self.job_key(job_id), self.job_key(job_id, "data"), self.job_key(job_id, "eval_data"),
                self.job_key(job_id, "init"), self.tenant_key(tenant, "jobs"), self.outbox_key, self.queued_key,
                self.stats_key, self.tenant_key(tenant, "queued"), *self.usage_keys(tenant, "jobs"),
                self.tenant_key(tenant, f"graph:{graph_id}"), self.usage_keys(tenant, "graphs")[0]]
        # init: the starting parameters (a warm start), copied: the source may expire first
        args = [job_id, repr(created), quota.max_queued_jobs, quota.max_job_bytes, size, data, eval_data or b"",
                init or b"", int(keep_graph_s), *(item for pair in fields.items() for item in pair)]
        ok, *refused = self._create_job(keys=keys, args=args)
        if not ok:
            if idempotency_key is not None:  # nothing was stored: a retry with the key submits afresh
                self.release_idempotency_key(tenant, idempotency_key)
            limit = refused[0].decode()
            if limit == "graph_gone":
                raise GraphGone(graph_id)
            raise QuotaExceeded(limit, getattr(quota, limit), int(refused[1]), _seconds(refused[2]))
        return JobRecord.from_hash({k: str(v) for k, v in fields.items()}), True

    def release_idempotency_key(self, tenant: str, key: str) -> None:
        """Forget a key (its job could not be queued), so a retry submits afresh."""
        self._r.delete(self.tenant_key(tenant, f"idem:{key}"))

    def get_job(self, job_id: str) -> JobRecord | None:
        if not JOB_ID.fullmatch(job_id):
            return None  # not ours: and "job_x:data" must not reach another key of job_x
        raw = self._r.hgetall(self.job_key(job_id))
        return _record(raw)

    def job_for_tenant(self, tenant: str, job_id: str) -> JobRecord | None:
        job = self.get_job(job_id)
        return job if job is not None and job.tenant == tenant else None

    def job_state(self, job_id: str) -> str | None:
        """Just the state (one field read), or None for a job that is not stored."""
        raw = self._r.hget(self.job_key(job_id), "state")
        return None if raw is None else raw.decode()

    def give_back_attempt(self, job_id: str) -> None:
        """A graceful hand-back is not a lost attempt: undo the count the start made."""
        self._r.hincrby(self.job_key(job_id), "attempts", -1)

    def flag_worker_stopping(self, worker: str, stopping: bool = True) -> None:
        """Mark (or clear) a worker node as shutting down: its running jobs hand themselves back."""
        if stopping:
            self._r.set(self.worker_stopping_key(worker), "1", ex=3600)
        else:
            self._r.delete(self.worker_stopping_key(worker))

    def worker_stopping(self, worker_key: str) -> bool:
        return bool(self._r.exists(worker_key))

    def forget_active(self, job_id: str) -> None:
        """Drop a job that no longer exists from the set of running jobs the sweep watches."""
        self._r.srem(self.active_key, job_id)

    def claim_once(self, name: str, ttl_s: float) -> bool:
        """True for the first caller in ``ttl_s`` seconds across every process (a periodic
        task that one worker should do at a time)."""
        return bool(self._r.set(f"{self.ns}:{name}", "1", nx=True, px=max(1, int(ttl_s * 1000))))

    def ping(self) -> bool:
        return bool(self._r.ping())

    def redis_version(self) -> str | None:
        return self._r.info("server").get("redis_version")

    def step_count(self, job_id: str) -> int:
        """Step entries in the job's history (XLEN of its stream)."""
        return self._r.xlen(self.job_key(job_id, "steps"))

    def delete_namespace(self) -> int:
        """Delete every key of this store's namespace — for a throwaway namespace a benchmark
        or a test made; keys of other namespaces are never touched. Returns how many."""
        deleted = 0
        for key in self._r.scan_iter(f"{self.ns}:*", count=1000):
            deleted += self._r.delete(key)
        return deleted

    def close(self) -> None:
        self._r.close()

    def list_jobs(self, tenant: str, *, state: str | None = None, before: tuple[float, str] | None = None,
                  limit: int = 50) -> tuple[list[JobRecord], tuple[float, str] | None]:
        """Newest first. ``before`` is the cursor from the previous page: (creation time, job id)
        of its last job; jobs created in the same instant are ordered by id, so none is skipped.

        Candidates are read in batches, their states in one pipelined round trip per batch and
        only the jobs on the page in full: filtering 10,000 jobs for a rare state is a few
        round trips, not one per job."""
        key = self.tenant_key(tenant, "jobs")
        out: list[JobRecord] = []
        offset = 0
        batch = max(2 * limit, 500) if state is not None else 2 * limit
        while True:
            rows = self._r.zrevrangebyscore(key, "+inf" if before is None else repr(before[0]), "-inf",
                                           start=offset, num=batch, withscores=True)
            if not rows:
                return out, None
            offset += len(rows)
            rows = [(raw.decode(), score) for raw, score in rows]
            rows = [(job_id, score) for job_id, score in rows
                    if not (before is not None and score == before[0] and job_id >= before[1])]
            # the cursor's own job, or one listed before it in the same instant, is left out above
            states = [st for st, in self._pipelined([job_id for job_id, _ in rows],
                                                    lambda pipe, job_id: pipe.hget(self.job_key(job_id), "state"))]
            expired = [job_id for (job_id, _), st in zip(rows, states) if st is None]
            if expired:  # expired by retention
                self._r.zrem(key, *expired)
                offset -= len(expired)
            for (job_id, score), job_state in zip(rows, states):
                if job_state is None or (state is not None and job_state.decode() != state):
                    continue
                job = self.get_job(job_id)
                if job is None:
                    continue
                out.append(job)
                if len(out) == limit:
                    return out, (score, job_id)

    def transition(self, job_id: str, allowed: Iterable[str], to: str, *, token: str | None = None,
                   enqueue: bool = False, attempt: bool = False, blob: tuple[str, bytes] | None = None,
                   **fields: Any) -> tuple[bool, str]:
        """Atomically move ``job_id`` to state ``to`` if it is in one of ``allowed``; returns
        (moved, the state before). With ``token`` (a trainer's) the move is fenced: refused
        with :class:`LeaseLost` unless that trainer holds the lease; ``token="!"`` (the sweep)
        moves only while no trainer holds it. ``enqueue`` puts the job in the outbox: its
        message is to be sent, and the sweep sends it if the sender dies first. ``attempt``
        adds one to the job's ``attempts`` with the move (a trainer starting it). ``blob``
        (part, bytes) is stored with the move and only if it happens: a result must not
        outlive a cancel that won the race."""
        moved, previous, _ = self._move(job_id, allowed, to, token=token, enqueue=enqueue, attempt=attempt,
                                        blob=blob, **fields)
        return moved, previous

    def start(self, job_id: str, token: str, **fields: Any) -> tuple[bool, str, int]:
        """A trainer holding lease ``token`` moves the job from queued (or running: a redelivery
        after its trainer was lost) to running, counting the attempt in the same step; returns
        (moved, the state before, attempts so far with this one)."""
        return self._move(job_id, ["queued", "running"], "running", token=token, attempt=True, lease=token, **fields)

    def _move(self, job_id: str, allowed: Iterable[str], to: str, *, token: str | None = None,
              enqueue: bool = False, attempt: bool = False, blob: tuple[str, bytes] | None = None,
              **fields: Any) -> tuple[bool, str, int]:
        """:meth:`transition`, and the job's ``attempts`` as the move counted them (0 unless ``attempt``
        and it moved)."""
        allowed = list(allowed)
        flat: list[Any] = []
        for k, v in fields.items():
            flat += [k, v]
        keys = [self.job_key(job_id, "lease"), self.job_key(job_id), self.active_key, self.outbox_key, self.queued_key]
        flags = ("e" if enqueue else "") + ("a" if attempt else "")
        args = [token or "", self._lease_ms(), job_id, repr(now()), flags, self.settings.retention_s, len(allowed),
                *allowed, to, *flat]
        if blob is not None:
            keys.append(self.job_key(job_id, blob[0]))
            args.append(blob[1])
        moved, previous, *attempts = self._transition(keys=keys, args=args)
        if moved == -1:
            raise LeaseLost(job_id)
        previous = previous.decode() if isinstance(previous, bytes) else previous
        return bool(moved), previous, (attempts or [0])[0]

    def add_stats(self, key: str, counts: dict[str, int], floats: dict[str, float] | None = None) -> None:
        """Add to a stats hash (worker/metrics.py) in one round trip."""
        pipe = self._r.pipeline(transaction=False)
        for field_, n in counts.items():
            pipe.hincrby(key, field_, n)
        for field_, x in (floats or {}).items():
            pipe.hincrbyfloat(key, field_, x)
        pipe.execute()

    def read_stats(self, key: str) -> dict[str, float]:
        return {k.decode(): float(v) for k, v in self._r.hgetall(key).items()}

    def job_counts(self) -> dict[str, int]:
        """Jobs submitted and ended (succeeded, failed, cancelled) since the namespace began, and
        queued and running now: what the API's /metrics reports."""
        pipe = self._r.pipeline(transaction=False)
        pipe.hgetall(self.stats_key)
        pipe.zcard(self.queued_key)
        pipe.scard(self.active_key)
        stats, queued, active = pipe.execute()
        counts = {k.decode(): int(v) for k, v in stats.items()}
        return {**{name: counts.get(name, 0) for name in ("submitted", "succeeded", "failed", "cancelled")},
                "queued": int(queued), "running": int(active)}

    def stranded_deliveries(self, grace_s: float) -> list[str]:
        """Jobs whose message a worker took from the queue over ``grace_s`` ago but never
        started: the job is still queued with no lease. A live worker starts what it takes
        within milliseconds (prefetch 1), so that worker died in between; its message stays
        in kombu's unacked set until the visibility timeout (hours). Each stranded delivery
        is returned once (claimed with SET NX) so the sweep resends it once.

        Reads kombu's Redis transport keys (``unacked_index``: delivery tag -> time taken,
        ``unacked``: tag -> the JSON envelope), read-only."""
        prefix = f"{self.ns}:celery:"
        stranded = []
        due = now() - grace_s
        for tag, taken_at in self._r.zrangebyscore(prefix + "unacked_index", "-inf", due, withscores=True):
            job_id = _job_of_envelope(self._r.hget(prefix + "unacked", tag))
            if job_id is None or self._r.exists(self.job_key(job_id, "lease")):
                continue
            state, created, requeued = self._r.hmget(self.job_key(job_id), "state", "created", "requeued")
            if state != b"queued" or taken_at < float(requeued or created or 0):
                continue  # not queued, or a delivery from before the job was last queued (already resent)
            if self._r.set(f"{self.ns}:rescued:{tag.decode()}", job_id, nx=True, ex=self.settings.visibility_timeout_s):
                stranded.append(job_id)
        return stranded

    def lost_messages(self, grace_s: float) -> list[str]:
        """Jobs queued over ``grace_s`` ago whose message is nowhere: not in the queue, not
        taken by a worker (unacked), not waiting in the outbox. Kombu's Redis transport pops
        a message with BRPOP and records it as unacked only afterwards; a worker killed in
        between loses it for good. Each such job is returned and re-dated, so it is resent
        at most once per grace period. Reads the whole queue: the sweep runs this rarely, and
        reads each batch of candidates in one pipelined round trip (a backlog of thousands of
        queued jobs cost a worker a round trip per job and read, seconds of its time).

        A message moving from the queue to unacked during the two reads can be taken for
        lost; its job is then sent twice, which is harmless."""
        due = now() - grace_s
        candidates = [raw.decode() for raw in self._r.zrangebyscore(self.queued_key, "-inf", due)]
        unsent = self._pipelined(candidates, lambda pipe, j: (pipe.zscore(self.outbox_key, j),
                                                               pipe.exists(self.job_key(j, "lease"))))
        candidates = [j for j, (outbox, leased) in zip(candidates, unsent) if outbox is None and not leased]
        if not candidates:
            return []
        prefix = f"{self.ns}:celery:"
        present = {_job_of_envelope(raw) for raw in self._r.hvals(prefix + "unacked")}
        present |= {_job_of_envelope(raw) for raw in self._r.lrange(prefix + self.settings.queue, 0, -1)}
        states = self._pipelined(candidates, lambda pipe, j: pipe.hget(self.job_key(j), "state"))
        gone = [j for j, (state,) in zip(candidates, states) if state is None]  # removed or expired
        if gone:
            self._r.zrem(self.queued_key, *gone)
        lost = [j for j, (state,) in zip(candidates, states) if j not in present and state == b"queued"]
        stamp = now()
        moved = self._pipelined(lost, lambda pipe, j: pipe.zadd(self.queued_key, {j: stamp}, xx=True, ch=True))
        return [j for j, (changed,) in zip(lost, moved) if changed]

    def _pipelined(self, items: list[str], queue_reads, batch: int = 1000) -> list[tuple]:
        """``queue_reads(pipe, item)`` queues a few commands per item; returns each item's
        replies as a tuple, one pipelined round trip per ``batch`` items."""
        replies: list[tuple] = []
        for start in range(0, len(items), batch):
            pipe = self._r.pipeline(transaction=False)
            chunk = items[start:start + batch]
            for item in chunk:
                queue_reads(pipe, item)
            flat = pipe.execute()
            per = len(flat) // len(chunk)
            replies.extend(tuple(flat[i:i + per]) for i in range(0, len(flat), per))
        return replies

    # -- the outbox: jobs whose task message is not yet known to be sent -------------------
    def mark_sent(self, job_id: str, enqueued_at: float | None = None) -> None:
        """The job's message is in the broker: drop it from the outbox (unless re-added since)."""
        score = enqueued_at if enqueued_at is not None else self._r.zscore(self.outbox_key, job_id)
        if score is not None:
            self._sent(keys=[self.outbox_key], args=[job_id, repr(score)])

    def defer_job(self, job_id: str, after_s: float = DEFER_S) -> None:
        """Leave a queued job for the sweep to send again in about ``after_s`` (an outbox entry
        that looks ``unsent_grace_s - after_s`` old): a job its tenant may not start yet."""
        self._r.zadd(self.outbox_key, {job_id: now() - self.settings.unsent_grace_s + after_s})

    def outbox_entry(self, job_id: str) -> float | None:
        return self._r.zscore(self.outbox_key, job_id)

    def claim_unsent(self, grace_s: float) -> list[tuple[str, float]]:
        """Outbox entries older than ``grace_s`` (their sender died or failed), each claimed by
        this caller alone; returns (job id, claim score) to pass to :meth:`mark_sent`."""
        claimed = []
        due = now() - grace_s
        for raw, _ in self._r.zrangebyscore(self.outbox_key, "-inf", due, withscores=True):
            stamp = now()
            if self._claim_unsent(keys=[self.outbox_key], args=[raw, repr(due), repr(stamp)]):
                claimed.append((raw.decode(), stamp))
        return claimed

    def worker_stopping_key(self, worker: str) -> str:
        """Set by a worker's main process when it begins a warm shutdown (any pool)."""
        return f"{self.ns}:worker:{worker}:stopping"

    def orphans(self) -> list[str]:
        """Running (or cancelling) jobs whose trainer's lease has expired: their worker was lost."""
        return [raw.decode() for raw in self._r.smembers(self.active_key)
                if not self._r.exists(self.job_key(raw.decode(), "lease"))]

    def request_cancel(self, job_id: str) -> str | None:
        """Queued jobs are cancelled at once; running ones move to cancelling and the worker
        stops. Returns the state after the request (None when the job no longer exists)."""
        ok, _ = self.transition(job_id, ["queued"], "cancelled", finished=repr(now()))
        if ok:
            return "cancelled"
        self.transition(job_id, ["running"], "cancelling")
        return self.job_state(job_id)

    # -- the lease: one trainer per job ---------------------------------------------------
    def acquire_lease(self, job_id: str, token: str) -> bool:
        """SET NX with a TTL: only one trainer holds a job; a second delivery finds it taken."""
        return bool(self._r.set(self.job_key(job_id, "lease"), token, nx=True,
                               px=int(self.settings.lease_ttl_s * 1000)))

    def renew_lease(self, job_id: str, token: str) -> bool:
        """False once the lease is lost for good (another trainer, or the job was requeued)."""
        return bool(self._renew(keys=[self.job_key(job_id, "lease"), self.job_key(job_id)],
                                args=[token, self._lease_ms()]))

    def release_lease(self, job_id: str, token: str) -> None:
        self._release(keys=[self.job_key(job_id, "lease")], args=[token])

    def _lease_ms(self) -> int:
        return int(self.settings.lease_ttl_s * 1000)

    # -- progress (worker side) ---------------------------------------------------------
    def report_steps(self, job_id: str, token: str, records: list[StepRecord],
                     progress: dict[str, Any]) -> tuple[list[int], str]:
        """Append step entries, update the job hash and read the job's state, in one fenced
        round trip (:class:`LeaseLost` if ``token`` no longer holds the job). Each entry the
        stream accepts also gets its float64 row in the job's series (:meth:`read_series`),
        and the hash's ``best_loss``/``best_loss_step`` follow the lowest finite loss accepted.

        Returns the steps Redis refused as already written (a replay after a redelivery)
        and the state (so the worker sees a cancel request without another round trip)."""
        norms = [dict(rec.grad_norms) for rec in records]  # read once: runtime's norms are computed lazily
        names = list(norms[0]) if norms else []
        metric_names = list(records[0].metrics) if records else []
        # One layout per job: a batch whose entries name other parameters or metrics writes no rows
        # (readers then fall back to the stream, which has everything).
        uniform = bool(records) and all(n.keys() == norms[0].keys() for n in norms) and all(
            r.metrics.keys() == records[0].metrics.keys() for r in records)
        rows = series_rows(records, names, norms, metric_names)
        entries = []
        for rec in records:
            loss = float(rec.loss)
            # strings and bytes only: a number would reach Lua as a float
            entries.append([f"{rec.step}-0", repr(loss) if math.isfinite(loss) else "",
                            [x for k, v in rec.to_fields().items() for x in (k, v if isinstance(v, bytes) else str(v))]])
        args: list[Any] = [token, self._lease_ms(), self.settings.stream_maxlen,
                           json.dumps(series_columns(names, metric_names)) if uniform else "",
                           rows.tobytes() if uniform else b"",
                           rows.shape[1] * SERIES_DTYPE.itemsize,
                           msgpack.packb(entries, use_bin_type=False)]  # Redis's cmsgpack reads no bin type
        for k, v in progress.items():
            args += [k, v]
        keys = [self.job_key(job_id, "lease"), self.job_key(job_id), self.job_key(job_id, "steps"),
                self.job_key(job_id, "series"), self.job_key(job_id, "series:columns")]
        ok, state, refused = self._report(keys=keys, args=args)
        if ok == -1:
            raise LeaseLost(job_id)
        return [int(r.decode().partition("-")[0]) for r in refused], state.decode()

    def read_steps(self, job_id: str, *, after: int = 0, limit: int = 100) -> list[StepRecord]:
        entries = self._r.xrange(self.job_key(job_id, "steps"), min=f"({after}-0" if after else "-", max="+",
                                count=limit)
        return [StepRecord.from_fields(fields) for _, fields in entries]

    def read_series(self, job_id: str) -> StepSeries | None:
        """The job's series key as a :class:`StepSeries`, read with one GET (and XLEN, in one
        transaction); None when it does not hold exactly the stream's entries: a job written
        before the series existed, or partly by an older worker, or a stream trimmed by MAXLEN."""
        pipe = self._r.pipeline(transaction=True)
        pipe.get(self.job_key(job_id, "series"))
        pipe.get(self.job_key(job_id, "series:columns"))
        pipe.xlen(self.job_key(job_id, "steps"))
        blob, raw_columns, entries = pipe.execute()
        if blob is None or raw_columns is None:
            return None
        columns = json.loads(raw_columns)
        width = len(columns) * SERIES_DTYPE.itemsize
        if len(blob) % width or len(blob) // width != entries:
            return None
        values = np.frombuffer(blob, dtype=SERIES_DTYPE).reshape(entries, len(columns))
        return StepSeries(columns=columns, values=values, source="series")

    def read_step_series(self, job_id: str, *, page: int = 5000) -> StepSeries:
        """The whole step history as numbers: from the series key when it is complete, else
        from the stream (read in pages of ``page`` entries: correct, slower)."""
        series = self.read_series(job_id)
        if series is not None:
            return series
        records: list[StepRecord] = []
        after = 0
        while True:
            chunk = self.read_steps(job_id, after=after, limit=page)
            records += [StepRecord(r.step, r.loss, r.grad_norms, r.time, r.eval_loss, metrics=r.metrics)
                        for r in chunk]  # no grads kept
            if len(chunk) < page:
                break
            after = chunk[-1].step
        names = list(records[0].grad_norms) if records else []
        metric_names = list(records[0].metrics) if records else []
        return StepSeries(columns=series_columns(names, metric_names),
                          values=series_rows(records, names, metric_names=metric_names), source="stream")

    def cancel_requested(self, job_id: str) -> bool:
        return self._r.hget(self.job_key(job_id), "state") in (b"cancelling", b"cancelled")

    def get_blob(self, job_id: str, part: str) -> bytes | None:
        return self._r.get(self.job_key(job_id, part))

    def put_blob(self, job_id: str, part: str, blob: bytes, *, token: str) -> None:
        """A trainer's write of a checkpoint or result, fenced by its lease token."""
        if not self._put_fenced(keys=[self.job_key(job_id, "lease"), self.job_key(job_id), self.job_key(job_id, part)],
                                args=[token, self._lease_ms(), blob]):
            raise LeaseLost(job_id)


class JobFollower:
    """The reads that follow one job live (the API's event stream): its new step entries, waiting
    up to ``block_ms`` for one, and its record. Async, on ``client`` (:meth:`connect`'s, shared by
    the streams of one event loop: a new client per stream cost each stream a connection's set-up,
    ~3 ms before its first read) or, without one, on a client of its own; part of the data model,
    so no caller reads these keys itself."""

    def __init__(self, store: JobStore, job_id: str, *, block_ms: int, batch: int,
                 client: aioredis.Redis | None = None):
        self._own = client is None
        self._client = self.connect(store.settings, block_ms) if client is None else client
        self._steps_key, self._job_key = store.job_key(job_id, "steps"), store.job_key(job_id)
        self._block_ms, self._batch = block_ms, batch

    async def steps_after(self, after: int, *, block: bool) -> list[StepRecord]:
        response = await self._client.xread({self._steps_key: f"{after}-0"}, count=self._batch,
                                            block=self._block_ms if block else None)
        if not response:
            return []
        _, entries = response[0]
        return [StepRecord.from_fields(fields) for _, fields in entries]

    async def job(self) -> JobRecord | None:
        raw = await self._client.hgetall(self._job_key)
        return _record(raw)

    async def close(self) -> None:
        if self._own:
            await self._client.aclose()

    @staticmethod
    def connect(settings: Settings, block_ms: int) -> aioredis.Redis:
        """A client for followers that wait up to ``block_ms``: its socket timeout outlasts the
        wait. Each waiting follower holds one of its pool's connections while it waits."""
        return aioredis.Redis.from_url(settings.redis_url, socket_timeout=block_ms / 1000 + 10,
                                       socket_connect_timeout=5)
