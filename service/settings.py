"""The API's settings: everything the worker also reads (``worker.settings.Settings``) plus
what only the API reads, its API keys and its request limits.

Same environment variables as the shared settings (``CHAINRULE_`` + the field name in upper
case); docs/security.md lists the limits and their defaults.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, model_validator

from worker.settings import Settings


class ApiSettings(Settings):
    # API keys, comma-separated: "sha256:<hex of the key's SHA-256>:tenant" (keys at rest: what a
    # deployment should store; `chainrule hash-key` prints it) or "key:tenant" (the plain key: local
    # use, warned about). Empty + auth_disabled=False refuses all.
    api_keys: str = ""
    auth_disabled: bool = False

    # Limits: each refused with a clear 413/422.
    max_body_bytes: int = 32 * 1024 * 1024
    max_nodes: int = 2_000
    max_tensor_elements: int = 4 * 1024 * 1024
    max_job_data_bytes: int = 32 * 1024 * 1024
    max_steps: int = 1_000_000
    max_explain_elements: int = 10_000
    # A job's step history (entries x bytes per entry, bounded at submit from the parameters'
    # shapes): one request must not be able to fill Redis.
    max_job_history_bytes: int = 64 * 1024 * 1024

    # Per-tenant limits (service/quotas.py): these are every tenant's defaults; tenant_limits
    # overrides them for named tenants, as JSON: {"team-a": {"max_queued_jobs": 50}}. 0 turns a
    # limit off. Over a limit is a 429 with Retry-After naming it (docs/security.md "Quotas").
    requests_per_second: float = 100.0    # sustained /v1 requests (a token bucket shared by every API process)
    request_burst: int = 500              # requests allowed at once above the sustained rate
    max_queued_jobs: int = 1_000          # jobs waiting for a worker
    max_running_jobs: int = 0             # jobs training at once; over it a job waits queued (not refused)
    max_graph_bytes: int = 256 * 2**20    # stored graph documents
    max_job_bytes: int = 2 * 2**30        # stored jobs: data + eval data + the step history's bound
    tenant_limits: dict[str, dict[str, float]] = {}
    # Stored graphs expire this long after they were last stored or used by a job (a job's graph
    # is kept at least as long as the job); finished jobs expire after retention_s.
    graph_retention_s: int = 30 * 24 * 3600

    # Prometheus metrics (service/metrics.py), without auth: at GET /metrics on the API's own port,
    # or with metrics_port set only there, on metrics_host (keep it off the public network).
    metrics: bool = True
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"

    @model_validator(mode="after")
    def _tenants_are_valid(self) -> "ApiSettings":
        # Tenant names go into Redis keys ({ns}:tenant:{t}:...): a ':' could alias another's keys.
        for tenant in self.tenants_by_key().values():
            if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", tenant):
                raise ValueError(f"CHAINRULE_API_KEYS: tenant name {tenant!r} must be 1 to 64 letters, digits, "
                                 "'.', '-' or '_'")
        for tenant, overrides in self.tenant_limits.items():
            unknown = sorted(set(overrides) - set(TenantLimits.model_fields))
            if unknown:
                raise ValueError(f"CHAINRULE_TENANT_LIMITS: {tenant!r} sets {', '.join(unknown)}; the limits are "
                                 f"{', '.join(TenantLimits.model_fields)}")
            bad = [name for name, value in overrides.items() if not value >= 0]
            if bad:
                raise ValueError(f"CHAINRULE_TENANT_LIMITS: {tenant!r}: {', '.join(bad)} must be 0 (off) or more")
        return self

    def limits_for(self, tenant: str) -> "TenantLimits":
        """The limits that apply to ``tenant``: the defaults above, overridden by ``tenant_limits``."""
        values = {name: getattr(self, name) for name in TenantLimits.model_fields}
        values.update(self.tenant_limits.get(tenant, {}))
        return TenantLimits(**values)

    def tenants_by_key(self) -> dict[str, str]:
        """Each configured key's SHA-256 (hex) -> its tenant: a plain key is hashed here, so only
        digests are compared (service/deps.py: get_tenant)."""
        pairs = {}
        for item in filter(None, (p.strip() for p in self.api_keys.split(","))):
            if HASHED.match(item):
                digest, _, tenant = item.removeprefix("sha256:").partition(":")
                pairs[digest.lower()] = tenant or "default"
            else:
                key, _, tenant = item.partition(":")
                pairs[key_digest(key)] = tenant or "default"
        return pairs

    def plain_keys(self) -> int:
        """How many keys are configured in plain text (each a warning at startup)."""
        return sum(1 for p in (p.strip() for p in self.api_keys.split(",")) if p and not HASHED.match(p))


class TenantLimits(BaseModel):
    """One tenant's limits (ApiSettings has each one's default; 0 = off)."""
    model_config = ConfigDict(frozen=True)

    requests_per_second: float
    request_burst: int
    max_queued_jobs: int
    max_running_jobs: int
    max_graph_bytes: int
    max_job_bytes: int


HASHED = re.compile(r"sha256:[0-9a-fA-F]{64}(:|$)")


def key_digest(key: str) -> str:
    """What CHAINRULE_API_KEYS stores for ``key``: the hex SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(key.encode()).hexdigest()


@lru_cache
def get_api_settings() -> ApiSettings:
    return ApiSettings()
