"""Names every layer shares: Ollama's model aliases, and the gateway's named Ray actors (their
namespace, and finding or creating one by name)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from ray.actor import ActorClass, ActorHandle

NAMESPACE = "sollol"


def normalize_model(name: str) -> str:
    """Ollama's aliasing: `llama3.2` is `llama3.2:latest`."""
    name = name.strip()
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def host_port(url: str) -> str:
    """`10.0.0.3:11434` of a node's URL: what the seeds' `_sollol_routing.host` shows, and never
    the credentials a URL may carry."""
    parsed = urlparse(url)
    return f"{parsed.hostname}:{parsed.port}" if parsed.port else str(parsed.hostname)


def named_actor(actor_class: ActorClass, name: str, *args: Any, **options: Any) -> ActorHandle:
    """The detached actor of that name in the gateway's namespace, created if there is none
    (every replica that asks gets the same one; it outlives them)."""
    return actor_class.options(name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
                               **options).remote(*args)


def runtime_worker_name(state_actor_name: str, node_name: str) -> str:
    """The worker actor of a node added at run time."""
    return f"{state_actor_name}_worker_{node_name}"


# The shared actors a gateway names after its state actor (`<state actor>_<role>`); node
# workers added at run time are `<state actor>_worker_<node>`.
SHARED_ACTOR_ROLES = ("metrics", "cache", "ratelimits", "sessions", "discovery", "shards")


def is_gateway_actor(name: str, state_actor_name: str) -> bool:
    """Whether a named actor is one of the detached actors of the gateway whose state actor is
    `state_actor_name` (and not of another gateway whose name merely starts the same)."""
    if name == state_actor_name:
        return True
    role = name.removeprefix(state_actor_name + "_")
    return role != name and (role in SHARED_ACTOR_ROLES or role.startswith("worker_"))
