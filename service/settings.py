"""The API's settings: everything the worker also reads (``worker.settings.Settings``) plus
what only the API reads, its API keys and its request limits.

Same environment variables as the shared settings (``CHAINRULE_`` + the field name in upper
case); docs/security.md lists the limits and their defaults.
"""

from __future__ import annotations

import re
from functools import lru_cache

from pydantic import model_validator

from worker.settings import Settings


class ApiSettings(Settings):
    # API keys "key:tenant" pairs, comma-separated. Empty + auth_disabled=False refuses all.
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

    # Prometheus metrics (service/metrics.py), without auth: at GET /metrics on the API's own port,
    # or with metrics_port set only there, on metrics_host (keep it off the public network).
    metrics: bool = True
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"

    @model_validator(mode="after")
    def _tenant_names_are_safe_in_keys(self) -> "ApiSettings":
        # Tenant names go into Redis keys ({ns}:tenant:{t}:...): a ':' could alias another's keys.
        for tenant in self.tenants_by_key().values():
            if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", tenant):
                raise ValueError(f"CHAINRULE_API_KEYS: tenant name {tenant!r} must be 1 to 64 letters, digits, "
                                 "'.', '-' or '_'")
        return self

    def tenants_by_key(self) -> dict[str, str]:
        pairs = {}
        for item in filter(None, (p.strip() for p in self.api_keys.split(","))):
            key, _, tenant = item.partition(":")
            pairs[key] = tenant or "default"
        return pairs


@lru_cache
def get_api_settings() -> ApiSettings:
    return ApiSettings()
