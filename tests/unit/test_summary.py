"""The original SOLLOL's /api/dashboard and /api/health, from hand-computed counts."""

from __future__ import annotations

from sollol_serve.observability.metrics import RequestMetrics
from sollol_serve.observability.summary import cluster_status, dashboard_summary, health_summary
from sollol_serve.protocol import NodeStatus, QueueStatus


def _nodes() -> list[NodeStatus]:
    return [NodeStatus("gpu-1", True, slots=4, in_flight=1, url="http://10.0.0.2:11434",
                       telemetry={"vram_free_mb": 16384}),
            NodeStatus("cpu-1", True, slots=2, in_flight=2, breaker="open", url="http://10.0.0.3:11434")]


def test_dashboard_numbers():
    book = RequestMetrics()
    for latency in (0.1, 0.3):  # gpu-1: two successes, mean 200 ms
        book.record("/api/chat", "llama3.2", "gpu-1", 200, latency)
    book.record("/api/chat", "llama3.2", "cpu-1", 502, 0.6)  # cpu-1: one node failure
    book.record("/api/chat", "nope", "none", 404, 0.01)  # a client's mistake: no node, a success
    queue = QueueStatus("r", waiting=3, max=20, aging_s=10)
    summary = dashboard_summary(_nodes(), book, queue, lambda n: n.name)
    assert {k: summary[k] for k in ("status", "total_hosts", "available_hosts", "total_requests", "queue_depth")} \
        == {"status": "degraded", "total_hosts": 2, "available_hosts": 1, "total_requests": 4, "queue_depth": 3}
    assert summary["success_rate"] == 0.75  # 3 of 4 ended below 500
    assert summary["avg_latency_ms"] == 333.3  # (100 + 300 + 600) / 3 requests that reached a node
    gpu, cpu = summary["hosts"]
    assert gpu == {"host": "gpu-1", "name": "gpu-1", "available": True, "latency_ms": 200.0, "success_rate": 1.0,
                   "gpu_free_mem": 16384, "current_load": 0.25, "requests_handled": 2}
    assert (cpu["available"], cpu["success_rate"], cpu["current_load"], cpu["gpu_free_mem"]) == (False, 0.0, 1.0, None)


def test_an_idle_cluster_has_no_rates_rather_than_made_up_ones():
    summary = dashboard_summary(_nodes()[:1], RequestMetrics(), QueueStatus("r", 0, 20, 10), lambda n: "x:1")
    assert summary["status"] == "healthy" and summary["success_rate"] is None and summary["avg_latency_ms"] is None
    assert summary["hosts"][0]["host"] == "x:1" and summary["hosts"][0]["latency_ms"] is None


def test_health_says_sollol_and_how_many_nodes_take_requests():
    health = health_summary(_nodes(), "0.1.0")
    assert (health["service"], health["status"], health["nodes"], health["healthy"]) == ("SOLLOL", "degraded", 2, 1)
    assert cluster_status([]) == "unhealthy"
    assert cluster_status([NodeStatus("a", False, 1, 0)]) == "unhealthy"
