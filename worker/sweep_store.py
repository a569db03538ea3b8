"""The Redis records of hyperparameter sweeps, as methods of worker.store.JobStore (a mixin: every
read and write of the job model still goes through that one class).

    {ns}:sweep:{id}           hash    id, tenant, state, created, graph_id, config (JSON), finished
    {ns}:sweep:{id}:trials    string  JSON list of each trial's {assignment, spec}, written once
    {ns}:sweep:{id}:jobs      hash    trial index -> job id, as trials are launched
    {ns}:sweep:{id}:data      string  the training data (msgpack tensors), copied to each trial job
    {ns}:sweep:{id}:eval_data string  the held-out data, likewise
    {ns}:sweep:{id}:lock      string  held while one process advances the sweep (PX, short)
    {ns}:tenant:{t}:sweeps    zset    the tenant's sweeps by creation time
    {ns}:sweeps:active        set     sweeps not finished (the recovery loop advances them)

States: ``running`` -> ``succeeded`` (every trial launched and finished) or ``cancelling`` ->
``cancelled``. A trial is an ordinary job whose stored spec names its sweep (``spec["sweep"]``).

Retention: when a sweep ends its data copies go at once (only launching trials reads them) and
its record, trials and trial index expire ``retention_s`` later, as a finished job does (its
trials ended before it, so they expire no later); the recovery loop then drops it from the
tenant's list (``JobStore.prune_tenants``).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

SWEEP_ID = re.compile(r"sweep_[0-9a-f]{32}")
SWEEP_TERMINAL = frozenset({"succeeded", "cancelled"})


@dataclass(frozen=True)
class SweepRecord:
    id: str
    tenant: str
    state: str
    graph_id: str
    config: dict[str, Any] = field(default_factory=dict)
    created: float | None = None
    finished: float | None = None


class SweepRecords:
    """Mixed into JobStore (which provides ``_r``, ``ns``, ``tenant_key`` and ``settings``)."""

    def sweep_key(self, sweep_id: str, part: str | None = None) -> str:
        return f"{self.ns}:sweep:{sweep_id}" + (f":{part}" if part else "")

    @property
    def active_sweeps_key(self) -> str:
        return f"{self.ns}:sweeps:active"

    def create_sweep(self, tenant: str, graph_id: str, config: dict[str, Any], trials: list[dict[str, Any]],
                     data: bytes, eval_data: bytes | None, created: float) -> str:
        sweep_id = "sweep_" + uuid.uuid4().hex
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(self.sweep_key(sweep_id), mapping={
            "id": sweep_id, "tenant": tenant, "state": "running", "graph_id": graph_id, "created": repr(created),
            "config": json.dumps(config)})
        pipe.set(self.sweep_key(sweep_id, "trials"), json.dumps(trials))
        pipe.set(self.sweep_key(sweep_id, "data"), data)
        if eval_data is not None:
            pipe.set(self.sweep_key(sweep_id, "eval_data"), eval_data)
        pipe.zadd(self.tenant_key(tenant, "sweeps"), {sweep_id: created})
        pipe.sadd(self.active_sweeps_key, sweep_id)
        pipe.execute()
        return sweep_id

    def get_sweep(self, sweep_id: str) -> SweepRecord | None:
        if not SWEEP_ID.fullmatch(sweep_id):
            return None
        raw = {k.decode(): v.decode() for k, v in self._r.hgetall(self.sweep_key(sweep_id)).items()}
        if not raw:
            return None
        return SweepRecord(id=raw["id"], tenant=raw["tenant"], state=raw["state"], graph_id=raw["graph_id"],
                           config=json.loads(raw.get("config") or "{}"), created=_float(raw.get("created")),
                           finished=_float(raw.get("finished")))

    def sweep_trials(self, sweep_id: str) -> list[dict[str, Any]]:
        return json.loads(self._r.get(self.sweep_key(sweep_id, "trials")) or b"[]")

    def sweep_jobs(self, sweep_id: str) -> dict[int, str]:
        """Trial index -> job id of every trial launched so far."""
        return {int(k): v.decode() for k, v in self._r.hgetall(self.sweep_key(sweep_id, "jobs")).items()}

    def sweep_data(self, sweep_id: str) -> tuple[bytes | None, bytes | None]:
        return self._r.get(self.sweep_key(sweep_id, "data")), self._r.get(self.sweep_key(sweep_id, "eval_data"))

    def record_trial(self, sweep_id: str, index: int, job_id: str) -> None:
        self._r.hset(self.sweep_key(sweep_id, "jobs"), str(index), job_id)

    def set_sweep_state(self, sweep_id: str, allowed: tuple[str, ...], state: str, **fields: Any) -> bool:
        """Move the sweep to ``state`` if it is in one of ``allowed`` (WATCH: one mover wins)."""
        key = self.sweep_key(sweep_id)
        with self._r.pipeline() as pipe:
            try:
                pipe.watch(key)
                current = pipe.hget(key, "state")
                if current is None or current.decode() not in allowed:
                    return False
                pipe.multi()
                pipe.hset(key, mapping={"state": state, **{k: str(v) for k, v in fields.items()}})
                if state in SWEEP_TERMINAL:
                    pipe.srem(self.active_sweeps_key, sweep_id)
                    pipe.delete(self.sweep_key(sweep_id, "data"), self.sweep_key(sweep_id, "eval_data"))
                    for part in (None, "trials", "jobs"):
                        pipe.expire(self.sweep_key(sweep_id, part), self.settings.retention_s)
                pipe.execute()
                return True
            except Exception as exc:  # noqa: BLE001 - a concurrent change: the other mover won
                if type(exc).__name__ == "WatchError":
                    return False
                raise

    def lock_sweep(self, sweep_id: str, token: str, ttl_ms: int = 30_000) -> bool:
        return bool(self._r.set(self.sweep_key(sweep_id, "lock"), token, nx=True, px=ttl_ms))

    def unlock_sweep(self, sweep_id: str, token: str) -> None:
        key = self.sweep_key(sweep_id, "lock")
        if self._r.get(key) == token.encode():
            self._r.delete(key)

    def active_sweeps(self) -> list[str]:
        return sorted(v.decode() for v in self._r.smembers(self.active_sweeps_key))

    def list_sweeps(self, tenant: str, limit: int = 100) -> list[str]:
        return [v.decode() for v in self._r.zrevrange(self.tenant_key(tenant, "sweeps"), 0, limit - 1)]


def _float(value: str | None) -> float | None:
    return None if value in (None, "") else float(value)
