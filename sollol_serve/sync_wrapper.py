"""The original SOLLOL's synchronous API (`from sollol.sync_wrapper import OllamaPool`): the
classes of `sollol_serve.pool` without async, for code that has no event loop.

    pool = OllamaPool.auto_configure()
    answer = pool.chat(model="llama3.2", messages=m, priority=Priority.HIGH, timeout=60)

The original ran its async code on a background thread; this one speaks HTTP synchronously,
so it is safe to call from any thread, including inside a running event loop's callbacks.
"""

from __future__ import annotations

from sollol_serve.client import DEFAULT_TIMEOUT_S, SollolClient
from sollol_serve.pool import chat_body, check_settings, embed_body, generate_body, pool_config
from sollol_serve.priority_helpers import Priority, get_priority_for_role

__all__ = ["HybridRouter", "OllamaPool", "Priority", "get_priority_for_role"]


class OllamaPool:
    """Every call is one request to the gateway, which picks the node."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *, app_name: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S, **settings: object):
        check_settings(settings)
        self.client = SollolClient(pool_config(url, api_key, app_name, timeout))

    @classmethod
    def auto_configure(cls, **kwargs: object) -> "OllamaPool":
        """The gateway at `SOLLOL_URL` (else the local default), with `SOLLOL_API_KEY`."""
        return cls(**kwargs)

    def chat(self, model: str, messages: list[dict], *, priority: int = Priority.NORMAL,
             timeout: float | None = None, **fields: object) -> dict:
        return self.client.post("/api/chat", chat_body(model, messages, priority, fields), timeout=timeout)

    def generate(self, model: str, prompt: str, *, priority: int = Priority.NORMAL,
                 timeout: float | None = None, **fields: object) -> dict:
        return self.client.post("/api/generate", generate_body(model, prompt, priority, fields), timeout=timeout)

    def embed(self, model: str, input: str | list[str], *, priority: int = Priority.NORMAL,
              timeout: float | None = None, **fields: object) -> dict:
        return self.client.post("/api/embed", embed_body(model, input, priority, fields), timeout=timeout)

    def get_stats(self) -> dict:
        return self.client.stats()

    def close(self) -> None:
        self.client.close()


class HybridRouter:
    """Routes through the pool: the gateway decides between a node and a shard group."""

    def __init__(self, ollama_pool: OllamaPool | None = None, **settings: object):
        check_settings(settings)
        self.pool = ollama_pool or OllamaPool.auto_configure()

    def route_request(self, model: str, messages: list[dict], *, priority: int = Priority.NORMAL,
                      **fields: object) -> dict:
        return self.pool.chat(model, messages, priority=priority, **fields)
