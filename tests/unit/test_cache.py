"""The response cache without Ray: what may be cached, its keys, LRU + TTL + byte bounds, invalidation."""

from __future__ import annotations

from sollol_serve.cache.policy import cache_key, cacheable, is_deterministic
from sollol_serve.cache.store import ResponseCache
from sollol_serve.config import CacheConfig

ON = CacheConfig(deterministic_completions=True)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_embeddings_are_cacheable_unless_turned_off():
    body = {"model": "nomic", "input": ["a"]}
    assert cacheable("ollama", "embed", body, False, CacheConfig())
    assert not cacheable("ollama", "embed", body, False, CacheConfig(embeddings=False))


def test_completions_only_when_deterministic_unstreamed_and_allowed():
    pinned = {"model": "m", "messages": [], "options": {"temperature": 0, "seed": 7}}
    assert is_deterministic("ollama", pinned)
    assert cacheable("ollama", "chat", pinned, False, ON)
    assert not cacheable("ollama", "chat", pinned, False, CacheConfig())  # not allowed by default
    assert not cacheable("ollama", "chat", pinned, True, ON)  # streamed
    assert not cacheable("ollama", "chat", {**pinned, "options": {"temperature": 0}}, False, ON)  # no seed
    assert not cacheable("ollama", "chat", {**pinned, "options": {"temperature": 0.2, "seed": 7}}, False, ON)
    assert not cacheable("ollama", "chat", {**pinned, "options": {"temperature": 0, "seed": True}}, False, ON)
    assert cacheable("openai", "chat", {"model": "m", "temperature": 0, "seed": 1}, False, ON)
    assert not cacheable("openai", "chat", {"model": "m", "temperature": 0}, False, ON)


def test_keys_ignore_scheduling_fields_and_normalise_the_tag():
    a = cache_key("ollama", "embed", {"model": "nomic", "input": ["x"], "priority": 9, "keep_alive": "5m"})
    b = cache_key("ollama", "embed", {"input": ["x"], "model": "nomic:latest"})
    assert a == b
    assert a != cache_key("ollama", "embed", {"model": "nomic", "input": ["y"]})
    assert a != cache_key("ollama", "embed", {"model": "nomic", "input": ["x"], "dimensions": 64})
    assert a != cache_key("openai", "embed", {"model": "nomic", "input": ["x"]})  # another response format
    assert a != cache_key("ollama", "embed", {"model": "other", "input": ["x"]})


def test_hits_misses_and_ttl():
    clock = Clock()
    cache = ResponseCache(CacheConfig(ttl_s=10), clock)
    assert cache.get("k") is None
    cache.put("k", "nomic", {"embeddings": [[1.0]]}, "n1")
    hit = cache.get("k")
    assert hit.body == {"embeddings": [[1.0]]} and hit.node == "n1"
    clock.now = 11.0
    assert cache.get("k") is None
    assert cache.stats() == {"entries": 0, "bytes": 0, "hits": 1, "misses": 2}


def test_lru_by_entries_and_by_bytes():
    cache = ResponseCache(CacheConfig(max_entries=2))
    for key in ("a", "b"):
        cache.put(key, "m", {"v": key}, "n")
    cache.get("a")  # a is now the most recently used
    cache.put("c", "m", {"v": "c"}, "n")
    assert cache.get("b") is None and cache.get("a") and cache.get("c")

    small = ResponseCache(CacheConfig(max_bytes=1024))
    big = {"v": "x" * 400}
    for key in ("a", "b", "c"):
        small.put(key, "m", big, "n")
    assert small.stats()["bytes"] <= 1024 and small.get("a") is None and small.get("c")
    assert not small.put("huge", "m", {"v": "x" * 2000}, "n")


def test_invalidate_one_model_or_all():
    cache = ResponseCache(CacheConfig())
    cache.put("a", "nomic", {}, "n")
    cache.put("b", "nomic:latest", {}, "n")
    cache.put("c", "other", {}, "n")
    assert cache.invalidate("nomic") == 2
    assert cache.get("a") is None and cache.get("c") is not None
    assert cache.invalidate() == 1 and cache.stats()["entries"] == 0
