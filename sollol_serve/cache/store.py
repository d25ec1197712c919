"""The response cache: LRU with a time to live, bounded in entries and in bytes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from cachetools import TTLCache

from sollol_serve.config import CacheConfig
from sollol_serve.names import normalize_model


@dataclass(frozen=True, slots=True)
class Cached:
    body: dict
    node: str  # the node that computed it
    model: str  # normalised, for per-model invalidation
    size: int  # bytes of its JSON


def _size(entry: Cached) -> int:
    return entry.size


class ResponseCache:
    def __init__(self, config: CacheConfig, clock: Callable[[], float] = time.monotonic):
        # Bounded by bytes (TTLCache's maxsize with getsizeof); `max_entries` on top.
        self.entries: TTLCache[str, Cached] = TTLCache(config.max_bytes, config.ttl_s, timer=clock,
                                                       getsizeof=_size)
        self.max_entries = config.max_entries
        self.hits = self.misses = 0

    def get(self, key: str) -> Cached | None:
        entry = self.entries.get(key)
        if entry is None:
            self.misses += 1
        else:
            self.hits += 1
        return entry

    def put(self, key: str, model: str, body: dict, node: str) -> bool:
        """Keep an answer; False if it is larger than the whole cache."""
        size = len(json.dumps(body, separators=(",", ":")))
        if size > self.entries.maxsize:
            return False
        while len(self.entries) >= self.max_entries and key not in self.entries:
            self.entries.popitem()  # least recently used
        self.entries[key] = Cached(body, node, normalize_model(model), size)
        return True

    def invalidate(self, model: str | None = None) -> int:
        """Drop every entry of `model` (all entries if None); returns how many."""
        wanted = None if model is None else normalize_model(model)
        gone = [k for k, e in self.entries.items() if wanted is None or e.model == wanted]
        for key in gone:
            self.entries.pop(key, None)
        return len(gone)

    def stats(self) -> dict:
        self.entries.expire()
        return {"entries": len(self.entries), "bytes": int(self.entries.currsize), "hits": self.hits,
                "misses": self.misses}
