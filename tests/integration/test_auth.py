"""Access control through a real gateway: a second app with keys, beside the open one."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import ADMIN, LIMIT_RPM, LIMITED, READER, USER

pytestmark = pytest.mark.integration

CHAT = {"model": "llama3.2", "stream": False, "messages": [{"role": "user", "content": "hi"}],
        "options": {"num_predict": 2}}


def test_missing_or_wrong_key_is_401_in_each_api_format(secure):
    r = httpx.post(secure + "/api/chat", json=CHAT)
    assert r.status_code == 401 and "missing API key" in r.json()["error"]
    r = httpx.get(secure + "/v1/models", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert ADMIN not in r.text and "wrong" not in r.text  # keys are never echoed


def test_permissions_by_role(secure):
    chat = httpx.post(secure + "/api/chat", json=CHAT, headers={"X-API-Key": USER}, timeout=30)
    assert chat.status_code == 200 and chat.json()["eval_count"] == 2
    denied = httpx.post(secure + "/api/chat", json=CHAT, headers={"X-API-Key": READER})
    assert denied.status_code == 403 and "chat" in denied.json()["error"]
    assert httpx.get(secure + "/api/nodes", headers={"X-API-Key": READER}).status_code == 200
    assert httpx.get(secure + "/api/nodes", headers={"X-API-Key": USER}).status_code == 403
    assert httpx.get(secure + "/dashboard", headers={"Authorization": f"Bearer {USER}"}).status_code == 403
    assert httpx.get(secure + "/dashboard", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200
    assert httpx.get(secure + "/api/admin/nodes", headers={"X-API-Key": USER}).status_code == 403
    added = httpx.post(secure + "/api/admin/nodes", json={"name": "x", "url": "http://127.0.0.1:9"},
                       headers={"X-API-Key": USER})
    assert added.status_code == 403 and "admin" in added.json()["error"]
    nodes = httpx.get(secure + "/api/admin/nodes", headers={"X-API-Key": ADMIN}, timeout=10)
    assert nodes.status_code == 200 and [n["name"] for n in nodes.json()["nodes"]] == ["fast"]


def test_openai_client_with_api_key(secure):
    client = openai.OpenAI(base_url=secure + "/v1", api_key=USER, max_retries=0)
    reply = client.chat.completions.create(model="llama3.2", messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=3)
    assert reply.usage.completion_tokens == 3
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=secure + "/v1", api_key="nope", max_retries=0).models.list()


def test_open_gateway_stays_open(gateway):
    assert httpx.get(gateway.url + "/api/nodes").status_code == 200


def test_requests_per_minute_enforced(secure):
    statuses = [httpx.get(secure + "/v1/models", headers={"X-API-Key": LIMITED}).status_code for _ in range(14)]
    assert statuses.count(200) == LIMIT_RPM and statuses.count(429) == 4, statuses
    limited = httpx.get(secure + "/v1/models", headers={"X-API-Key": LIMITED})
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert limited.json()["error"]["type"] == "rate_limit_error"
    assert httpx.get(secure + "/v1/models", headers={"X-API-Key": USER}).status_code == 200  # per key
