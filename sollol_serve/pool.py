"""The original SOLLOL's Python API, as an honest client of the gateway.

Code written for SOLLOL keeps working with one import changed (`sollol` -> `sollol_serve`):

    pool = OllamaPool.auto_configure()          # or: pool = await OllamaPool.auto_configure()
    answers = await asyncio.gather(*[pool.chat(model="llama3.2", messages=m, priority=5) for m in prompts])
    router = HybridRouter(ollama_pool=pool, enable_distributed=True)
    answer = await router.route_request(model="llama3:70b", messages=m)

The original discovered Ollama nodes itself and routed in-process; here the gateway does
both, so `auto_configure()` finds the gateway (`SOLLOL_URL`, else the local default) and the
original's routing switches (cache, hedging, sharding, queue size) are the gateway's
settings: accepted for compatibility, and set in its config instead. Answers are the
gateway's, with `_sollol_routing` (`host`, `task_type`, ...) as the original printed them.
`sollol_serve.sync_wrapper` has the same classes without async.
"""

from __future__ import annotations

import socket

from sollol_serve.client import DEFAULT_TIMEOUT_S, AsyncSollolClient, SOLLOLConfig
from sollol_serve.priority_helpers import Priority

# The original's constructor switches that are the gateway's business now (its config).
GATEWAY_SETTINGS = frozenset({
    "enable_cache", "cache_max_size", "cache_ttl", "enable_intelligent_routing", "enable_hedging",
    "max_queue_size", "register_with_dashboard", "discover_all_nodes", "exclude_localhost", "enable_ray",
    "enable_dask", "enable_gpu_redis", "routing_strategy",
    # HybridRouter's: the gateway shards a model that fits no node by itself (`shard:` config).
    "enable_distributed", "auto_discover_rpc", "auto_setup_rpc", "num_rpc_backends", "rpc_backends",
})


def check_settings(settings: dict) -> None:
    """Refuse what would silently mean something else here: nodes are the gateway's."""
    if "nodes" in settings:
        raise TypeError("nodes are the gateway's to know: give them in its config or SOLLOL_NODES, "
                        "or add them with POST /api/admin/nodes")
    unknown = set(settings) - GATEWAY_SETTINGS
    if unknown:
        raise TypeError(f"unknown setting(s): {', '.join(sorted(unknown))}")


def chat_body(model: str, messages: list[dict], priority: int, fields: dict) -> dict:
    return {**fields, "model": model, "messages": messages, "priority": int(priority), "stream": False}


def generate_body(model: str, prompt: str, priority: int, fields: dict) -> dict:
    return {**fields, "model": model, "prompt": prompt, "priority": int(priority), "stream": False}


def embed_body(model: str, inputs: str | list[str], priority: int, fields: dict) -> dict:
    return {**fields, "model": model, "input": inputs, "priority": int(priority)}


def pool_config(url: str | None, api_key: str | None, app_name: str | None, timeout: float) -> SOLLOLConfig:
    """A pool names its application as the original's did: `app_name`, else "OllamaPool (host)"."""
    return SOLLOLConfig(url, api_key, timeout, app_name=app_name or f"OllamaPool ({socket.gethostname()})")


class OllamaPool:
    """Every call is one request to the gateway, which picks the node."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *, app_name: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S, **settings: object):
        check_settings(settings)
        self.client = AsyncSollolClient(pool_config(url, api_key, app_name, timeout))

    @classmethod
    def auto_configure(cls, **kwargs: object) -> "OllamaPool":
        """The gateway at `SOLLOL_URL` (else the local default), with `SOLLOL_API_KEY`."""
        return cls(**kwargs)

    def __await__(self):
        # The original's docs write both `OllamaPool.auto_configure()` and `await ...` of it.
        return self._ready().__await__()

    async def _ready(self) -> "OllamaPool":
        return self

    async def chat(self, model: str, messages: list[dict], *, priority: int = Priority.NORMAL,
                   timeout: float | None = None, **fields: object) -> dict:
        return await self.client.post("/api/chat", chat_body(model, messages, priority, fields), timeout=timeout)

    async def generate(self, model: str, prompt: str, *, priority: int = Priority.NORMAL,
                       timeout: float | None = None, **fields: object) -> dict:
        return await self.client.post("/api/generate", generate_body(model, prompt, priority, fields), timeout=timeout)

    async def embed(self, model: str, input: str | list[str], *, priority: int = Priority.NORMAL,
                    timeout: float | None = None, **fields: object) -> dict:
        return await self.client.post("/api/embed", embed_body(model, input, priority, fields), timeout=timeout)

    chat_async = chat
    generate_async = generate
    embed_async = embed

    async def get_stats(self) -> dict:
        """The gateway's /api/stats: nodes, queue, shard groups, latency, totals."""
        return await self.client.stats()

    async def close(self) -> None:
        await self.client.aclose()


class HybridRouter:
    """The original's router over Ollama nodes and llama.cpp shard groups. The gateway makes
    that choice for every request (a model too large for any node goes to a shard group), so
    this routes through the pool."""

    def __init__(self, ollama_pool: OllamaPool | None = None, **settings: object):
        check_settings(settings)
        self.pool = ollama_pool or OllamaPool.auto_configure()

    async def route_request(self, model: str, messages: list[dict], *, priority: int = Priority.NORMAL,
                            **fields: object) -> dict:
        return await self.pool.chat(model, messages, priority=priority, **fields)
