"""Dashboard sessions against the real gateway with keys: a cookie minted from what the config
shows (each key's SHA-256 digest, which Ray's dashboard serves with the app's config) is
refused, as is one with a far expiry, and logging out kills every copy of the cookie."""

from __future__ import annotations

import hashlib
import hmac
import time

import httpx
import pytest

from sollol_serve.api.auth import hash_key
from tests.conftest import ADMIN

pytestmark = pytest.mark.integration


def _login(secure: str) -> str:
    reply = httpx.post(f"{secure}/dashboard/login", content=f"key={ADMIN}", timeout=30,
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert reply.status_code == 303, reply.text
    return reply.cookies["sollol_session"]


def test_a_cookie_minted_from_the_configs_digest_is_refused(secure):
    digest = hash_key(ADMIN)  # what serve_config.yaml and the Serve app config hold
    for expiry in (int(time.time()) + 3600, 99999999999):
        old = hmac.new(bytes.fromhex(digest), f"root.{expiry}".encode(), hashlib.sha256).hexdigest()
        new = hmac.new(bytes.fromhex(digest), f"root.{expiry}.x.{digest}".encode(), hashlib.sha256).hexdigest()
        for minted in (f"root.{expiry}.{old}", f"root.{expiry}.x.{new}"):
            reply = httpx.get(f"{secure}/api/stats", cookies={"sollol_session": minted}, timeout=30)
            assert reply.status_code == 401, (minted, reply.text)
    # A real session, with its expiry pushed out, is not valid either.
    name, expiry, sid, mac = _login(secure).rsplit(".", 3)
    stretched = f"{name}.{int(expiry) + 10**6}.{sid}.{mac}"
    assert httpx.get(f"{secure}/api/stats", cookies={"sollol_session": stretched}, timeout=30).status_code == 401


def test_logout_ends_every_copy_of_the_session(secure):
    cookie = _login(secure)
    assert httpx.get(f"{secure}/api/stats", cookies={"sollol_session": cookie}, timeout=30).status_code == 200
    logout = httpx.post(f"{secure}/dashboard/logout", cookies={"sollol_session": cookie}, timeout=30)
    assert logout.status_code == 303
    after = httpx.get(f"{secure}/api/stats", cookies={"sollol_session": cookie}, timeout=30)
    assert after.status_code == 401 and "session ended" in after.json()["error"]
    assert httpx.get(f"{secure}/api/stats", cookies={"sollol_session": _login(secure)}, timeout=30).status_code == 200
