"""API keys, roles and the loopback rule, without Ray."""

from __future__ import annotations

import hashlib
import hmac
import time

import pytest
from pydantic import ValidationError

from sollol_serve.api.auth import (
    ANONYMOUS,
    SESSION_TTL_S,
    Authenticator,
    Forbidden,
    Unauthorized,
    check_bind,
    generate_key,
    hash_key,
    is_loopback,
    presented_key,
)
from sollol_serve.api.sessions import Revocations
from sollol_serve.cli import keys_command
from sollol_serve.config import SecurityConfig

ADMIN, USER, READER = "admin-secret", "user-secret", "reader-secret"
SECRET = b"s" * 32


def security(**extra) -> SecurityConfig:
    return SecurityConfig(keys=[{"name": "root", "sha256": hash_key(ADMIN), "role": "admin"},
                                {"name": "app", "sha256": hash_key(USER), "role": "user"},
                                {"name": "grafana", "sha256": hash_key(READER), "role": "reader"}], **extra)


def test_hash_is_sha256_hex():
    assert hash_key("abc") == hashlib.sha256(b"abc").hexdigest()
    key = generate_key()
    assert key.startswith("sk-sollol-") and len(key) > 40 and generate_key() != key


@pytest.mark.parametrize("headers,expected", [
    ({"authorization": "Bearer k1"}, "k1"),
    ({"authorization": "bearer   k2 "}, "k2"),
    ({"x-api-key": "k3"}, "k3"),
    ({"authorization": "Basic abc", "x-api-key": "k4"}, "k4"),
    ({"authorization": "Bearer "}, None),
    ({}, None),
])
def test_presented_key(headers, expected):
    assert presented_key(headers) == expected


def test_no_keys_means_anonymous_with_every_permission():
    auth = Authenticator(SecurityConfig(), SECRET)
    assert not auth.enabled
    assert auth.authorize({}, "admin") is ANONYMOUS


def test_missing_and_wrong_keys_are_401():
    auth = Authenticator(security(), SECRET)
    with pytest.raises(Unauthorized, match="missing API key") as missing:
        auth.authorize({}, "chat")
    assert missing.value.status == 401
    with pytest.raises(Unauthorized, match="invalid API key"):
        auth.authorize({"authorization": "Bearer nope"}, "chat")


def test_roles_grant_permissions():
    auth = Authenticator(security(), SECRET)
    assert auth.authorize({"x-api-key": USER}, "chat").name == "app"
    assert auth.authorize({"authorization": f"Bearer {ADMIN}"}, "admin").role == "admin"
    assert auth.authorize({"x-api-key": READER}, "stats").name == "grafana"
    with pytest.raises(Forbidden, match="lacks the 'chat' permission") as denied:
        auth.authorize({"x-api-key": READER}, "chat")
    assert denied.value.status == 403
    with pytest.raises(Forbidden):
        auth.authorize({"x-api-key": USER}, "admin")
    assert auth.authorize({"x-api-key": USER}, None).name == "app"  # open endpoint, valid key


def test_undefined_role_and_bad_hash_are_rejected():
    with pytest.raises(ValidationError, match="undefined roles: ops"):
        SecurityConfig(keys=[{"name": "x", "sha256": hash_key("k"), "role": "ops"}])
    with pytest.raises(ValidationError):
        SecurityConfig(keys=[{"name": "x", "sha256": "plaintext-key", "role": "user"}])


@pytest.mark.parametrize("host,loopback", [("127.0.0.1", True), ("::1", True), ("localhost", True),
                                           ("127.0.0.2", True), ("0.0.0.0", False), ("10.0.0.5", False),
                                           ("::", False), ("example.org", False)])
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_non_loopback_bind_needs_keys_or_explicit_consent():
    check_bind("127.0.0.1", SecurityConfig())
    with pytest.raises(ValueError, match="refusing to serve 0.0.0.0 without API keys"):
        check_bind("0.0.0.0", SecurityConfig())
    check_bind("0.0.0.0", security())
    check_bind("0.0.0.0", SecurityConfig(allow_remote_without_keys=True))


def test_keys_new_prints_the_key_once_and_its_hash(capsys):
    keys_command(["new", "--name", "alice", "--role", "reader"])
    out = capsys.readouterr().out
    key = out.split("store it now): ")[1].split()[0]
    assert f"sha256: {hash_key(key)}" in out and "role: reader" in out and "name: alice" in out
    assert out.count(key) == 1


def test_dashboard_sessions_are_signed_expire_and_end_with_the_key():
    auth = Authenticator(security(), SECRET)
    principal, token = auth.login(ADMIN, now=1000.0)
    assert principal.name == "root" and ADMIN not in token
    session = auth.session(token, now=1000.0 + 60)
    assert (session.name, session.role, session.permissions) == (principal.name, principal.role, principal.permissions)
    assert session.session and session.session != auth.login(ADMIN, now=1000.0)[1].split(".")[2]  # an id each
    assert auth.authorize({}, "admin", session=auth.login(ADMIN)[1]).name == "root"
    with pytest.raises(Unauthorized, match="expired"):
        auth.session(token, now=1000.0 + 9 * 3600)
    name, expiry, sid, signature = token.rsplit(".", 3)
    for forged in (f"app.{expiry}.{sid}.{signature}", f"root.{int(expiry) + 10**6}.{sid}.{signature}",
                   f"root.{expiry}.other.{signature}", "root.x.y.z", "garbage", ""):
        with pytest.raises(Unauthorized):
            auth.session(forged, now=1000.0)
    rotated = Authenticator(SecurityConfig(keys=[{"name": "root", "sha256": hash_key("new-secret"), "role": "admin"}]), SECRET)
    with pytest.raises(Unauthorized):
        rotated.session(token, now=1000.0)
    _, user_token = auth.login(USER)
    with pytest.raises(Forbidden):
        auth.authorize({}, "admin", session=user_token)
    with pytest.raises(Unauthorized):
        auth.login("wrong")
    # a key in the headers wins over the cookie
    assert auth.authorize({"x-api-key": READER}, "stats", session=auth.login(ADMIN)[1]).name == "grafana"


def test_a_session_minted_from_what_the_config_shows_is_refused():
    """The config (and Ray's dashboard, which serves it) holds each key's digest: a cookie
    signed with it, or with no secret, or with a far expiry, is not a session."""
    auth = Authenticator(security(), SECRET)
    digest = hash_key(ADMIN)
    for key in (bytes.fromhex(digest), digest.encode(), b"", b"\0" * 32):
        for expiry in (int(time.time()) + 3600, 99999999999):
            mac = hmac.new(key, f"root.{expiry}.x.{digest}".encode(), hashlib.sha256).hexdigest()
            with pytest.raises(Unauthorized):
                auth.session(f"root.{expiry}.x.{mac}")
            legacy = hmac.new(key, f"root.{expiry}".encode(), hashlib.sha256).hexdigest()  # the old format
            with pytest.raises(Unauthorized):
                auth.session(f"root.{expiry}.{legacy}")
    # Signed with the real secret but expiring beyond the TTL: refused too.
    far = 99999999999
    mac = hmac.new(SECRET, f"root.{far}.x.{digest}".encode(), hashlib.sha256).hexdigest()
    with pytest.raises(Unauthorized, match="expired"):
        auth.session(f"root.{far}.x.{mac}")
    assert Authenticator(security(), b"another gateway").login(ADMIN)[1] != auth.login(ADMIN)[1]


def test_revocations_last_as_long_as_a_token_could():
    revoked = Revocations()
    revoked.revoke("a", now=0.0)
    assert revoked.revoked("a") and not revoked.revoked("b")
    revoked.revoke("b", now=SESSION_TTL_S)  # "a" could not be valid any more: forgotten
    assert not revoked.revoked("a") and revoked.revoked("b") and len(revoked) == 1
