"""Refusing what a hostile web page can make a browser send: requests from another origin
(a `no-cors` POST still carries `Origin`), and, on a loopback bind, requests under a host
name that is not ours (DNS rebinding: evil.example resolving to 127.0.0.1). Ollama refuses
both the same way (OLLAMA_ORIGINS). Clients that are not browsers send no `Origin`, and
name the gateway by address or localhost, so they are unaffected."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from sollol_serve.api.auth import Forbidden


def _hostname(host_header: str) -> str:
    """`Host` without its port ("[::1]:8000" -> "::1")."""
    return (urlsplit(f"//{host_header}").hostname or "").lower()


def origin_allowed(origin: str | None, host_header: str | None, allowed: list[str]) -> bool:
    """No Origin (not a browser, or a same-origin read), the gateway's own, or an allowed one."""
    if origin is None:
        return True
    if "*" in allowed or origin in allowed:
        return True
    parts = urlsplit(origin)
    return bool(host_header) and parts.scheme in ("http", "https") and parts.netloc.lower() == host_header.lower()


def is_own_host(hostname: str, allowed: list[str], machine_names: frozenset[str]) -> bool:
    if not hostname or hostname == "localhost" or hostname.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(hostname)
        return True  # an address is not a name an attacker's DNS can rebind
    except ValueError:
        pass
    return hostname in machine_names or hostname in {h.lower() for h in allowed}


def machine_names() -> frozenset[str]:
    return frozenset(n.lower() for n in (socket.gethostname(), socket.getfqdn()) if n)


def check_request_origin(origin: str | None, host_header: str | None, allowed_origins: list[str],
                         loopback_bind: bool, allowed_hosts: list[str], names: frozenset[str]) -> None:
    if not origin_allowed(origin, host_header, allowed_origins):
        raise Forbidden(f"cross-origin request from {origin} refused; allow the origin with "
                        "security.allowed_origins")
    if loopback_bind and not is_own_host(_hostname(host_header or ""), allowed_hosts, names):
        raise Forbidden(f"host name '{_hostname(host_header or '')}' refused (this gateway answers to its "
                        "addresses, localhost and its machine's name; add others to security.allowed_hosts)")
