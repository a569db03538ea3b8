"""Where ``chainrule serve`` listens and who may reach it: free ports, the URL to reach a host
from this machine, and the authentication policy (no unauthenticated API beyond loopback
unless asked for; the one line saying how requests are authenticated)."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from .children import say

if TYPE_CHECKING:
    from ..settings import ApiSettings


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound now (with SO_REUSEADDR, as uvicorn and redis bind)."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return True  # let the server report the bad host itself
    family, socktype, proto, _, address = infos[0]
    with socket.socket(family, socktype, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError:
            return False
    return True


def local_url_host(host: str) -> str:
    """The host to reach a server listening on ``host`` from this machine, URL-ready."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def auth_exposure_problem(host: str, settings: ApiSettings) -> str | None:
    """Why serving on ``host`` with these settings must be refused, or None.

    Without CHAINRULE_API_KEYS ``serve`` disables authentication, which is only acceptable on
    a loopback interface: anywhere else anyone who can reach the port could train on this
    machine and read every job. CHAINRULE_AUTH_DISABLED=true is the explicit opt-in."""
    if settings.api_keys.strip() or is_loopback(host) or settings.auth_disabled:
        return None
    return (f"refusing to serve without authentication on {host or 'every interface'}: CHAINRULE_API_KEYS is "
            "unset, so every request would be accepted from any machine that reaches the port. Set "
            "CHAINRULE_API_KEYS=key:tenant (comma-separated pairs), or listen on 127.0.0.1 (the default), or set "
            "CHAINRULE_AUTH_DISABLED=true to run without authentication on purpose")


def configure_auth(env: dict[str, str], settings: ApiSettings, host: str) -> str:
    """How the API started with ``env`` authenticates, as one line (said now when auth is off).
    Without API keys, sets CHAINRULE_AUTH_DISABLED=true in ``env``: every request is tenant 'local'."""
    keys = settings.api_keys.strip()
    if not keys:
        env["CHAINRULE_AUTH_DISABLED"] = "true"
        line = ("auth is DISABLED (CHAINRULE_API_KEYS is unset): every request is tenant 'local'. "
                "For local development only.")
    elif settings.auth_disabled:
        line = "auth is DISABLED (CHAINRULE_AUTH_DISABLED is set): every request is tenant 'local'."
    else:
        count = len([k for k in keys.split(",") if k.strip()])
        return (f"auth: {count} API key(s) from CHAINRULE_API_KEYS; "
                "send 'Authorization: Bearer <key>' with every /v1 request")
    if not is_loopback(host):
        line += f" WARNING: the API listens on {host}, reachable from other machines."
    say(f"serve: {line}")
    return line
