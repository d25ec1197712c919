"""The response cache in the running gateway: a hit never reaches a node, invalidation per model,
hit metrics, and completions cached only when pinned (temperature 0 and a seed)."""

from __future__ import annotations

import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import wait_until

pytestmark = pytest.mark.integration


def _received(gateway, node: str) -> int:
    return gateway.nodes[node].state()["received"]


def _hits(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=30).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "sollol_cache_hits_total" and s.labels.get("endpoint") == "/api/embed")


def test_an_embedding_hit_skips_the_node_and_is_counted(gateway):
    url = gateway.url
    body = {"model": "nomic-embed-text", "input": [f"cache me {uuid.uuid4().hex}"]}
    before_hits = _hits(url)
    first = httpx.post(url + "/api/embed", json=body, timeout=30)
    assert first.status_code == 200 and first.headers["x-sollol-cache"] == "miss"
    sent = _received(gateway, "fast")  # the only node with the model
    second = httpx.post(url + "/api/embed", json={**body, "priority": 9, "keep_alive": "10m"}, timeout=30)
    assert second.status_code == 200 and second.headers["x-sollol-cache"] == "hit"
    assert second.headers["x-sollol-node"] == "fast" and second.json()["_sollol_routing"]["cache"] == "hit"
    assert second.json()["embeddings"] == first.json()["embeddings"]
    assert _received(gateway, "fast") == sent  # the node never saw the second request
    wait_until(lambda: _hits(url) >= before_hits + 1, 10, "the hit in /metrics")

    removed = httpx.delete(url + "/api/cache/nomic-embed-text", timeout=30)
    assert removed.status_code == 200 and removed.json()["removed"] >= 1
    third = httpx.post(url + "/api/embed", json=body, timeout=30)
    assert third.headers["x-sollol-cache"] == "miss" and _received(gateway, "fast") == sent + 1
    stats = httpx.get(url + "/api/cache", timeout=30).json()["cache"]
    assert stats["entries"] >= 1 and stats["hits"] >= 1


def test_openai_embeddings_have_their_own_entries(gateway):
    body = {"model": "nomic-embed-text", "input": f"openai {uuid.uuid4().hex}"}
    first = httpx.post(gateway.url + "/v1/embeddings", json=body, timeout=30)
    second = httpx.post(gateway.url + "/v1/embeddings", json=body, timeout=30)
    assert (first.headers["x-sollol-cache"], second.headers["x-sollol-cache"]) == ("miss", "hit")
    assert second.json()["object"] == "list" and second.json()["data"] == first.json()["data"]


def test_only_pinned_completions_are_cached(gateway):
    prompt = [{"role": "user", "content": f"pinned {uuid.uuid4().hex}"}]
    pinned = {"model": "llama3.2", "stream": False, "messages": prompt,
              "options": {"temperature": 0, "seed": 42, "num_predict": 4}}
    first = httpx.post(gateway.url + "/api/chat", json=pinned, timeout=30)
    second = httpx.post(gateway.url + "/api/chat", json=pinned, timeout=30)
    assert (first.headers["x-sollol-cache"], second.headers["x-sollol-cache"]) == ("miss", "hit")
    assert second.json()["message"] == first.json()["message"]
    free = {**pinned, "options": {"temperature": 0.7, "seed": 42, "num_predict": 4}}
    for _ in range(2):
        answer = httpx.post(gateway.url + "/api/chat", json=free, timeout=30)
        assert "x-sollol-cache" not in answer.headers and answer.json()["_sollol_routing"].get("cache") is None
