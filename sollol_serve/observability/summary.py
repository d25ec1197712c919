"""The cluster in the original SOLLOL's words: `/api/dashboard` and `/api/health` as its
docs show them (`status`, `total_hosts`, `available_hosts`, `hosts: [{host, latency_ms,
success_rate, current_load, ...}]`), computed from what the gateway already keeps.

A request counts as a success unless it ended in a 5xx: a client's own mistake (404 for a
model no node has, 429 for its key's limit) says nothing about the cluster.
"""

from __future__ import annotations

from collections.abc import Callable

from sollol_serve.observability.metrics import RequestMetrics
from sollol_serve.protocol import NodeStatus, QueueStatus


def available(node: NodeStatus) -> bool:
    """Takes new requests now: healthy, its breaker not open, not draining."""
    return node.healthy and node.breaker != "open" and not node.draining


def cluster_status(nodes: list[NodeStatus]) -> str:
    up = sum(available(n) for n in nodes)
    return "healthy" if nodes and up == len(nodes) else "degraded" if up else "unhealthy"


def _per_node(book: RequestMetrics) -> dict[str, tuple[int, int]]:
    """node -> (requests, successes)."""
    counts: dict[str, tuple[int, int]] = {}
    for (_endpoint, _model, node, status), n in book.requests.items():
        total, ok = counts.get(node, (0, 0))
        counts[node] = (total + n, ok + (n if int(status) < 500 else 0))
    return counts


def _rate(ok: int, total: int) -> float | None:
    return round(ok / total, 4) if total else None


def host_summary(node: NodeStatus, counts: tuple[int, int], seconds: float, host: str) -> dict:
    total, ok = counts
    vram_free = (node.telemetry or {}).get("vram_free_mb")
    return {"host": host, "name": node.name, "available": available(node),
            "latency_ms": round(1000 * seconds / total, 1) if total else None,
            "success_rate": _rate(ok, total), "gpu_free_mem": vram_free,
            "current_load": round(node.in_flight / node.slots, 3) if node.slots else None,
            "requests_handled": total}


def dashboard_summary(nodes: list[NodeStatus], book: RequestMetrics, queue: QueueStatus,
                      host_of: Callable[[NodeStatus], str]) -> dict:
    """`/api/dashboard`. `host_of` says how a caller may see a node (its address, or its name)."""
    per_node = _per_node(book)
    total = sum(n for n, _ in per_node.values())
    ok = sum(k for _, k in per_node.values())
    served = sum(per_node.get(node, (0, 0))[0] for node in book.node_seconds)
    return {
        "status": cluster_status(nodes),
        "total_hosts": len(nodes),
        "available_hosts": sum(available(n) for n in nodes),
        "total_requests": total,
        "avg_latency_ms": round(1000 * sum(book.node_seconds.values()) / served, 1) if served else None,
        "success_rate": _rate(ok, total),
        "queue_depth": queue.waiting,
        "hosts": [host_summary(n, per_node.get(n.name, (0, 0)), book.node_seconds.get(n.name, 0.0), host_of(n))
                  for n in nodes],
    }


def health_summary(nodes: list[NodeStatus], version: str) -> dict:
    """`/api/health`: what the original's clients read to tell SOLLOL from a plain Ollama."""
    return {"service": "SOLLOL", "version": version, "status": cluster_status(nodes),
            "nodes": len(nodes), "healthy": sum(available(n) for n in nodes),
            "hosts": [{"name": n.name, "available": available(n)} for n in nodes]}
