"""API keys, roles and permissions (pure; the ingress calls `Authenticator`).

Keys are compared as SHA-256 digests in constant time and never stored, logged or echoed.
A browser logs in to the dashboard once with a key and gets a session cookie: the key's
name, an expiry, a random id and an HMAC over them and the key's digest, keyed by a random
secret that only the gateway's session actor holds (the digest is in the config, which Ray's
dashboard serves, so it must not be the key). Rotating the key ends its sessions, an expiry
beyond the session TTL is refused, and logout revokes the id (`api/sessions.py`). Sessions
only authorize GET requests, so a forged cross-site POST gets nothing.
Without configured keys every request is allowed, but only on a loopback bind
(`check_bind`), unless the config says `allow_remote_without_keys`.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace

from sollol_serve.config import ALL_PERMISSIONS, Permission, SecurityConfig
from sollol_serve.protocol import GatewayError

KEY_PREFIX = "sk-sollol-"
SESSION_COOKIE = "sollol_session"
SESSION_TTL_S = 8 * 3600


class Unauthorized(GatewayError):
    status = 401
    code = "invalid_api_key"


class Forbidden(GatewayError):
    status = 403
    code = "permission_denied"


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    role: str
    permissions: frozenset[str]
    session: str | None = None  # the session's id, when the caller came by cookie
    max_priority: int = 10  # higher asks are lowered to this
    share: float = 1.0  # its weight in fair share between applications


ANONYMOUS = Principal("anonymous", "admin", frozenset(ALL_PERMISSIONS))


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key from `Authorization: Bearer <key>` or `X-API-Key: <key>`."""
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return headers.get("x-api-key") or None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, security: SecurityConfig) -> None:
    """Refuse to serve a non-loopback address without keys unless explicitly allowed."""
    if not security.keys and not security.allow_remote_without_keys and not is_loopback(host):
        raise ValueError(
            f"refusing to serve {host} without API keys: add security.keys (see `sollol keys new`) "
            "or set security.allow_remote_without_keys: true"
        )


class Authenticator:
    def __init__(self, security: SecurityConfig, session_secret: bytes):
        self.security = security
        self.rekey(session_secret)
        self._keys = [(k.sha256, Principal(k.name, k.role, frozenset(security.roles[k.role]),
                                           max_priority=security.priority_cap(k), share=security.share_of(k.name)))
                      for k in security.keys]
        self._by_name = {principal.name: (digest, principal) for digest, principal in self._keys}

    def rekey(self, session_secret: bytes) -> None:
        """Sign and check sessions with this secret (the session actor restarted with a new
        one: every session signed with the old one ends, the safe way to fail)."""
        self._secret = session_secret
        self.secret_id = hashlib.sha256(session_secret).hexdigest()[:16]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def authenticate(self, headers: Mapping[str, str]) -> Principal:
        if not self._keys:
            return ANONYMOUS
        key = presented_key(headers)
        if key is None:
            raise Unauthorized("missing API key: send Authorization: Bearer <key> or X-API-Key: <key>")
        digest = hash_key(key)
        found = None
        for stored, principal in self._keys:  # no early exit: the time doesn't tell which key
            if hmac.compare_digest(digest, stored):
                found = principal
        if found is None:
            raise Unauthorized("invalid API key")
        return found

    def authorize(self, headers: Mapping[str, str], permission: Permission | None,
                  session: str | None = None) -> Principal:
        """The caller by its key, else by its session cookie (pass one only for GET requests)."""
        if self._keys and session and presented_key(headers) is None:
            principal = self.session(session)
        else:
            principal = self.authenticate(headers)
        if permission is not None and permission not in principal.permissions:
            raise Forbidden(f"key '{principal.name}' (role {principal.role}) lacks the '{permission}' permission")
        return principal

    # -- browser sessions (the dashboard) ---------------------------------------------------
    def login(self, key: str, now: float | None = None) -> tuple[Principal, str]:
        """The key's principal and a session token for it."""
        principal = self.authenticate({"x-api-key": key})
        expiry = int((now or time.time()) + SESSION_TTL_S)
        session = secrets.token_urlsafe(12)
        return principal, f"{principal.name}.{expiry}.{session}.{self._sign(principal.name, expiry, session)}"

    def session(self, token: str, now: float | None = None) -> Principal:
        """The principal of a valid, unexpired token, carrying the session's id (which the
        caller checks against the revoked ones)."""
        try:
            name, expiry, session, signature = token.rsplit(".", 3)
            expiry_at = int(expiry)
        except ValueError:
            raise Unauthorized("invalid session: log in again") from None
        known = self._by_name.get(name)
        if known is None or not hmac.compare_digest(signature, self._sign(name, expiry_at, session)):
            raise Unauthorized("invalid session: log in again")
        now = now or time.time()
        if not now < expiry_at <= now + SESSION_TTL_S:
            raise Unauthorized("session expired: log in again")
        return replace(known[1], session=session)

    def _sign(self, name: str, expiry: int, session: str) -> str:
        digest = self._by_name[name][0] if name in self._by_name else ""
        return hmac.new(self._secret, f"{name}.{expiry}.{session}.{digest}".encode(), hashlib.sha256).hexdigest()
