"""What a caller may see of the cluster's insides. Node URLs, worker addresses, pids, log
paths and rpc-server addresses are for admins (without keys, every caller is one): anyone
else sees nodes by name. Pure functions over the JSON the routes answer."""

from __future__ import annotations

from sollol_serve.api.auth import Principal

NODE_INTERNALS = ("url", "worker_ip", "worker_node_id")
SHARD_INTERNALS = ("url", "pid", "log")
BACKEND_INTERNALS = ("address", "pid", "node_id")


def is_admin(principal: Principal | None) -> bool:
    return principal is not None and "admin" in principal.permissions


def shown_routing(routing: dict, principal: Principal | None) -> dict:
    """`_sollol_routing` for this caller: `host` is the node's address for admins, its name for others."""
    if is_admin(principal) or "host" not in routing:
        return routing
    return {**routing, "host": routing.get("node")}


def shown_nodes(nodes: list[dict], principal: Principal | None) -> list[dict]:
    if is_admin(principal):
        return nodes
    return [{k: v for k, v in n.items() if k not in NODE_INTERNALS} for n in nodes]


def shown_shards(shards: list[dict], principal: Principal | None) -> list[dict]:
    if is_admin(principal):
        return shards
    return [{**{k: v for k, v in g.items() if k not in SHARD_INTERNALS},
             "backends": [{k: v for k, v in b.items() if k not in BACKEND_INTERNALS} for b in g.get("backends", ())]}
            for g in shards]
