"""Input that once broke the gateway for good: a batch `ttl_s` past any calendar is a 400 in
Ollama's format, and /api/stats (the dashboard's feed) keeps answering after it."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("kind, body", [
    ("embed", {"model": "nomic-embed-text", "input": ["a"], "ttl_s": 1e300}),
    ("chat", {"model": "llama3.2", "requests": [{"messages": [{"role": "user", "content": "x"}]}], "ttl_s": 1e12}),
    ("embed", {"model": "nomic-embed-text", "input": ["a"], "dimensions": 10**12}),
])
def test_unbounded_numbers_are_a_400_and_nothing_breaks(gateway, kind, body):
    reply = httpx.post(f"{gateway.url}/api/batch/{kind}", json=body, timeout=30)
    assert reply.status_code == 400 and isinstance(reply.json()["error"], str), reply.text
    assert httpx.get(f"{gateway.url}/api/stats", timeout=30).status_code == 200
