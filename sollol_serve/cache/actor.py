"""The cache shared by every ingress replica (one named actor per gateway), so a hit does not
depend on which replica a request lands on and an invalidation reaches them all at once."""

from __future__ import annotations

import ray
from ray.actor import ActorHandle

from sollol_serve.cache.store import Cached, ResponseCache
from sollol_serve.config import CacheConfig
from sollol_serve.names import named_actor


@ray.remote(num_cpus=0, max_restarts=-1)
class CacheActor:
    def __init__(self, config: dict) -> None:
        self.config = config
        self.cache = ResponseCache(CacheConfig.model_validate(config))

    def configure(self, config: dict) -> None:
        """A redeploy with other limits: the actor outlives it, so start a cache with them."""
        if config != self.config:
            self.config, self.cache = config, ResponseCache(CacheConfig.model_validate(config))

    def get(self, key: str) -> Cached | None:
        return self.cache.get(key)

    def put(self, key: str, model: str, body: dict, node: str) -> bool:
        return self.cache.put(key, model, body, node)

    def invalidate(self, model: str | None = None) -> int:
        return self.cache.invalidate(model)

    def stats(self) -> dict:
        return self.cache.stats()


def cache_actor(state_actor_name: str, config: CacheConfig) -> ActorHandle:
    return named_actor(CacheActor, f"{state_actor_name}_cache", config.model_dump())
