"""A hostile web page against the real, keyless gateway (the shipped default: every caller is
admin on loopback). The browser attaches the page's `Origin` to a `no-cors` POST and, after
DNS rebinding, the attacker's host name: both are refused, while curl and the official
clients (no Origin, an address for a host) are not."""

from __future__ import annotations

import httpx
import ollama
import pytest

pytestmark = pytest.mark.integration


def test_a_foreign_page_cannot_add_a_node_but_curl_can(gateway):
    evil = {"name": "evil-sink", "url": "http://127.0.0.1:9"}
    forged = httpx.post(f"{gateway.url}/api/admin/nodes", timeout=30, content=httpx.Request(
        "POST", "http://x", json=evil).content, headers={"Origin": "http://evil.example",
                                                          "Content-Type": "text/plain;charset=UTF-8"})
    assert forged.status_code == 403 and "cross-origin" in forged.json()["error"]
    names = {n["name"] for n in httpx.get(f"{gateway.url}/api/nodes", timeout=30).json()["nodes"]}
    assert "evil-sink" not in names
    # The same kind of POST as curl sends it (form content type, no Origin) goes through; an
    # admin action that changes nothing here, since the other tests share this gateway.
    node = sorted(gateway.nodes)[0]
    undrained = httpx.post(f"{gateway.url}/api/admin/nodes/{node}/undrain", timeout=30, content=b"{}",
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert undrained.status_code == 200 and undrained.json()["node"] == {"node": node, "draining": False}, undrained.text


def test_dns_rebinding_is_refused_and_real_clients_are_not(gateway):
    port = httpx.URL(gateway.url).port
    rebound = httpx.get(f"{gateway.url}/api/tags", timeout=30, headers={"Host": f"evil.example:{port}"})
    assert rebound.status_code == 403 and "evil.example" in rebound.json()["error"]
    assert httpx.get(f"{gateway.url}/api/tags", timeout=30, headers={"Host": f"localhost:{port}"}).status_code == 200
    assert ollama.Client(host=gateway.url).list().models  # the official client, as users run it
