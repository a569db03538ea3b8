"""The Redis data model of jobs, shared by the service (writes requests, reads progress)
and the workers (write progress). Documented in docs/architecture.md.

Keys (``{ns}`` is Settings.namespace):

    {ns}:job:{id}                  hash    state, tenant, progress, timestamps, error, settings
    {ns}:job:{id}:steps            stream  one entry per reported step; entry id = "{step}-0"
    {ns}:job:{id}:data             string  training data, msgpack tensors
    {ns}:job:{id}:checkpoint       string  runtime.Checkpoint bytes (msgpack)
    {ns}:job:{id}:result           string  trained parameters + final loss, msgpack
    {ns}:job:{id}:lease            string  the token of the trainer running the job (SET NX PX)
    {ns}:tenant:{t}:jobs           zset    job ids by creation time (listing, pagination)
    {ns}:tenant:{t}:graph:{hash}   string  a graph document, canonical msgpack
    {ns}:tenant:{t}:idem:{key}     string  job id submitted with that Idempotency-Key

Stream entry ids carry the step number, so a step written twice (a redelivered task
replaying from its checkpoint) is refused by Redis itself instead of duplicated.
Everything is JSON or msgpack: nothing is ever pickled.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import redis

import graphspec
from graphspec.codec import pack
from graphspec.tensors import encode_tensor_raw

from .settings import Settings

STATES = ("queued", "running", "succeeded", "failed", "cancelling", "cancelled")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})

# Compare-and-set of a job's state: move only from an allowed state, and set fields with it.
_TRANSITION = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {0, ''} end
for i = 1, tonumber(ARGV[1]) do
  if ARGV[1 + i] == state then
    redis.call('HSET', KEYS[1], 'state', ARGV[2 + tonumber(ARGV[1])], unpack(ARGV, 3 + tonumber(ARGV[1])))
    return {1, state}
  end
end
return {0, state}
"""


# The lease is renewed or released only by the trainer whose token it holds.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def now() -> float:
    return time.time()


def encode_tensors(tensors: dict[str, np.ndarray]) -> bytes:
    return pack({name: encode_tensor_raw(np.asarray(value)) for name, value in tensors.items()})


def decode_tensors(blob: bytes, limits: graphspec.Limits | None = None) -> dict[str, np.ndarray]:
    from runtime.data import tensors_from_tree

    limits = limits or graphspec.Limits(max_bytes=max(len(blob), 1), max_tensor_elements=2**40)
    return tensors_from_tree(graphspec.parse(blob, "msgpack", limits), "stored tensors", limits=limits)


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


@dataclass(frozen=True)
class StepRecord:
    step: int
    loss: float
    grad_norms: dict[str, float]
    time: float
    eval_loss: float | None = None
    grads: bytes | None = None  # msgpack tensors when the job asked for gradients: "full"

    def to_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"step": self.step, "loss": repr(self.loss), "norms": json.dumps(self.grad_norms),
                                  "t": repr(self.time)}
        if self.eval_loss is not None:
            fields["eval_loss"] = repr(self.eval_loss)
        if self.grads is not None:
            fields["grads"] = self.grads
        return fields

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> "StepRecord":
        get = {k.decode(): v for k, v in fields.items()}
        return cls(step=int(get["step"]), loss=float(get["loss"]), grad_norms=json.loads(get["norms"]),
                   time=float(get["t"]), eval_loss=float(get["eval_loss"]) if "eval_loss" in get else None,
                   grads=get.get("grads"))


class JobStore:
    """Every Redis read and write of the job model goes through here."""

    def __init__(self, client: redis.Redis, settings: Settings):
        self.r = client
        self.settings = settings
        self.ns = settings.namespace
        self._transition = client.register_script(_TRANSITION)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

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
    def put_graph(self, tenant: str, graph: graphspec.Graph) -> str:
        graph_id = graphspec.content_hash(graph)
        self.r.set(self.tenant_key(tenant, f"graph:{graph_id}"), graphspec.dumps(graph, "msgpack"))
        return graph_id

    def get_graph(self, tenant: str, graph_id: str) -> graphspec.Graph | None:
        blob = self.r.get(self.tenant_key(tenant, f"graph:{graph_id}"))
        return None if blob is None else graphspec.loads(blob, "msgpack",
                                                        limits=graphspec.Limits(max_bytes=len(blob) + 1,
                                                                                max_nodes=10**6,
                                                                                max_tensor_elements=2**40))

    # -- jobs --------------------------------------------------------------------------
    def create_job(self, tenant: str, graph_id: str, spec: dict[str, Any], data: bytes,
                   eval_data: bytes | None = None, idempotency_key: str | None = None) -> tuple[str, bool]:
        """Store a queued job; returns (job id, created). With an Idempotency-Key already used
        by this tenant for the same request, returns the existing job instead (created=False);
        the same key with a different request raises :class:`IdempotencyConflict`."""
        job_id = "job_" + uuid.uuid4().hex
        if idempotency_key is not None:
            idem = self.tenant_key(tenant, f"idem:{idempotency_key}")
            fingerprint = request_fingerprint(graph_id, spec, data, eval_data)
            if not self.r.set(idem, f"{job_id} {fingerprint}", nx=True, ex=self.settings.retention_s):
                existing_id, _, existing_print = (self.r.get(idem) or b"").decode().partition(" ")
                if existing_print != fingerprint:
                    raise IdempotencyConflict(existing_id)
                return existing_id, False
        created = now()
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.job_key(job_id), mapping={
            "id": job_id, "tenant": tenant, "state": "queued", "graph_id": graph_id, "created": repr(created),
            "step": 0, "total_steps": spec.get("steps") or 0, "attempts": 0, "spec": json.dumps(spec),
        })
        pipe.set(self.job_key(job_id, "data"), data)
        if eval_data is not None:
            pipe.set(self.job_key(job_id, "eval_data"), eval_data)
        pipe.zadd(self.tenant_key(tenant, "jobs"), {job_id: created})
        pipe.execute()
        return job_id, True

    def release_idempotency_key(self, tenant: str, key: str) -> None:
        """Forget a key (its job could not be queued), so a retry submits afresh."""
        self.r.delete(self.tenant_key(tenant, f"idem:{key}"))

    def get_job(self, job_id: str) -> dict[str, str] | None:
        raw = self.r.hgetall(self.job_key(job_id))
        return {k.decode(): v.decode() for k, v in raw.items()} if raw else None

    def job_for_tenant(self, tenant: str, job_id: str) -> dict[str, str] | None:
        job = self.get_job(job_id)
        return job if job is not None and job.get("tenant") == tenant else None

    def list_jobs(self, tenant: str, *, state: str | None = None, before: float | None = None,
                  limit: int = 50) -> tuple[list[dict[str, str]], float | None]:
        """Newest first; ``before`` is the cursor (a creation time) from the previous page."""
        key = self.tenant_key(tenant, "jobs")
        out: list[dict[str, str]] = []
        cursor = "+inf" if before is None else f"({before!r}"
        while len(out) < limit:
            ids = self.r.zrevrangebyscore(key, cursor, "-inf", start=0, num=limit * 2, withscores=True)
            if not ids:
                return out, None
            for job_id, score in ids:
                job = self.get_job(job_id.decode())
                cursor = f"({score!r}"
                if job is None:
                    self.r.zrem(key, job_id)  # expired by retention
                    continue
                if state is None or job["state"] == state:
                    out.append(job)
                    if len(out) == limit:
                        return out, score
        return out, None

    def transition(self, job_id: str, allowed: Iterable[str], to: str, **fields: Any) -> tuple[bool, str]:
        """Atomically move ``job_id`` to state ``to`` if it is in one of ``allowed``."""
        allowed = list(allowed)
        flat: list[Any] = []
        for k, v in fields.items():
            flat += [k, v]
        ok, previous = self._transition(keys=[self.job_key(job_id)], args=[len(allowed), *allowed, to, *flat])
        previous = previous.decode() if isinstance(previous, bytes) else previous
        if ok:
            # the index of jobs that a worker is running, for the orphan sweep
            # A job sent back to the queue by a worker (requeued=True) stays in the index until
            # a trainer picks it up, so a requeue interrupted before its message was sent is found.
            if to in ("running", "cancelling") or (to == "queued" and fields.get("requeued")):
                self.r.sadd(f"{self.ns}:active", job_id)
            else:
                self.r.srem(f"{self.ns}:active", job_id)
            if to in TERMINAL:
                self.expire_job(job_id)
        return bool(ok), previous

    def worker_stopping_key(self, worker: str) -> str:
        """Set by a worker's main process when it begins a warm shutdown (any pool)."""
        return f"{self.ns}:worker:{worker}:stopping"

    def orphans(self) -> list[str]:
        """Jobs in the index whose trainer's lease has expired: running (or cancelling) ones lost
        their worker; requeued ones may have lost their message (resent after 3 lease TTLs)."""
        orphaned = []
        stale = now() - 3 * self.settings.lease_ttl_s
        for raw in self.r.smembers(f"{self.ns}:active"):
            job_id = raw.decode()
            if self.r.exists(self.job_key(job_id, "lease")):
                continue
            state, requeued = self.r.hmget(self.job_key(job_id), "state", "requeued")
            if state == b"queued" and requeued is not None and float(requeued) > stale:
                continue  # its message is most likely still in the queue
            orphaned.append(job_id)
        return orphaned

    def request_cancel(self, job_id: str) -> str | None:
        """Queued jobs are cancelled at once; running ones move to cancelling and the worker
        stops. Returns the state after the request (None when the job no longer exists)."""
        ok, _ = self.transition(job_id, ["queued"], "cancelled", finished=repr(now()))
        if ok:
            return "cancelled"
        self.transition(job_id, ["running"], "cancelling")
        job = self.get_job(job_id)
        return None if job is None else job["state"]

    # -- the lease: one trainer per job ---------------------------------------------------
    def acquire_lease(self, job_id: str, token: str) -> bool:
        """SET NX with a TTL: only one trainer holds a job; a second delivery finds it taken."""
        return bool(self.r.set(self.job_key(job_id, "lease"), token, nx=True,
                               px=int(self.settings.lease_ttl_s * 1000)))

    def renew_lease(self, job_id: str, token: str) -> bool:
        return bool(self._renew(keys=[self.job_key(job_id, "lease")],
                                args=[token, int(self.settings.lease_ttl_s * 1000)]))

    def release_lease(self, job_id: str, token: str) -> None:
        self._release(keys=[self.job_key(job_id, "lease")], args=[token])

    def expire_job(self, job_id: str) -> None:
        ttl = self.settings.retention_s
        pipe = self.r.pipeline(transaction=False)
        for part in (None, "steps", "data", "eval_data", "checkpoint", "result"):
            pipe.expire(self.job_key(job_id, part), ttl)
        pipe.execute()

    # -- progress (worker side) ---------------------------------------------------------
    def report_steps(self, job_id: str, records: list[StepRecord], progress: dict[str, Any]) -> tuple[list[int], str]:
        """Append step entries, update the job hash and read the job's state, in one round trip.

        Returns the steps Redis refused as already written (a replay after a redelivery)
        and the state (so the worker sees a cancel request without another round trip)."""
        pipe = self.r.pipeline(transaction=False)
        for rec in records:
            pipe.xadd(self.job_key(job_id, "steps"), rec.to_fields(), id=f"{rec.step}-0",
                      maxlen=self.settings.stream_maxlen, approximate=True)
        pipe.hset(self.job_key(job_id), mapping=progress)
        pipe.hget(self.job_key(job_id), "state")
        results = pipe.execute(raise_on_error=False)
        refused = [rec.step for rec, res in zip(records, results) if isinstance(res, redis.ResponseError)]
        state = results[-1].decode() if isinstance(results[-1], bytes) else ""
        return refused, state

    def read_steps(self, job_id: str, *, after: int = 0, limit: int = 100) -> list[StepRecord]:
        entries = self.r.xrange(self.job_key(job_id, "steps"), min=f"({after}-0" if after else "-", max="+",
                                count=limit)
        return [StepRecord.from_fields(fields) for _, fields in entries]

    def cancel_requested(self, job_id: str) -> bool:
        return self.r.hget(self.job_key(job_id), "state") in (b"cancelling", b"cancelled")

    def get_blob(self, job_id: str, part: str) -> bytes | None:
        return self.r.get(self.job_key(job_id, part))

    def put_blob(self, job_id: str, part: str, blob: bytes) -> None:
        self.r.set(self.job_key(job_id, part), blob)
