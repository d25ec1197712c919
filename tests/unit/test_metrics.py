"""Request metrics: recording, merging across replicas, and the Prometheus text parsed back."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from sollol_serve.observability.metrics import RequestMetrics, render
from sollol_serve.protocol import NodeStatus, QueueStatus

NODES = [NodeStatus(name="gpu-1", healthy=True, in_flight=2, slots=4, breaker="half_open",
                    telemetry={"vram_free_mb": 1024}, decode_tps={"llama3.2:latest": 88.5}),
         NodeStatus(name="cpu", healthy=False, in_flight=0, slots=1, breaker="open", telemetry=None)]
QUEUE = QueueStatus(router="r1", waiting=3, max=1000, aging_s=30.0,
                    waited_by_priority={"9": {"count": 4, "mean_ms": 120.0, "max_ms": 400.0}})
SHARDS = [{"model": "big:latest", "state": "running"}]


def _samples(text: bytes) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_two_replicas_books_merge_into_one_consistent_scrape():
    a, b = RequestMetrics(), RequestMetrics()
    a.record("/api/chat", "llama3.2", "gpu-1", 200, 0.3, attempts=[{"node": "cpu", "ok": False},
                                                                    {"node": "gpu-1", "ok": True}])
    a.record("/api/chat", "llama3.2", "gpu-1", 200, 1.5, ttft_s=0.02)
    b.record("/api/chat", "llama3.2", "gpu-1", 200, 0.7, attempts=[{"node": "gpu-2", "hedge": True}])
    b.record("/v1/embeddings", "nomic", "none", 404, 0.01)
    a.cache_lookup("/api/embed", "nomic", hit=False)
    b.cache_lookup("/api/embed", "nomic", hit=True)
    b.cache_lookup("/api/embed", "nomic", hit=True)
    merged = RequestMetrics()
    merged.merge(a)
    merged.merge(b)
    samples = _samples(render(merged, NODES, QUEUE, SHARDS, {}, {}))
    chat = (("endpoint", "/api/chat"), ("model", "llama3.2"), ("node", "gpu-1"), ("status", "200"))
    assert samples[("sollol_requests_total", chat)] == 3
    assert samples[("sollol_requests_total", (("endpoint", "/v1/embeddings"), ("model", "nomic"), ("node", "none"),
                                              ("status", "404")))] == 1
    hist = (("endpoint", "/api/chat"), ("model", "llama3.2"))
    assert samples[("sollol_request_latency_seconds_count", hist)] == 3
    assert samples[("sollol_request_latency_seconds_sum", hist)] == 2.5
    assert samples[("sollol_request_latency_seconds_bucket", tuple(sorted((*hist, ("le", "0.5")))))] == 1
    assert samples[("sollol_request_latency_seconds_bucket", tuple(sorted((*hist, ("le", "+Inf")))))] == 3
    assert samples[("sollol_time_to_first_token_seconds_count", hist)] == 1
    assert samples[("sollol_retries_total", (("node", "cpu"),))] == 1
    assert samples[("sollol_hedges_total", (("node", "gpu-2"),))] == 1
    embed = (("endpoint", "/api/embed"), ("model", "nomic"))
    assert samples[("sollol_cache_hits_total", embed)] == 2 and samples[("sollol_cache_misses_total", embed)] == 1


def test_gauges_from_nodes_queue_and_shards():
    samples = _samples(render(RequestMetrics(), NODES, QUEUE, SHARDS, {"entries": 7, "bytes": 4096},
                               {"jobs": {"running": 1, "completed": 3}, "pending_items": 40}))
    assert samples[("sollol_node_healthy", (("node", "cpu"),))] == 0
    assert samples[("sollol_node_in_flight", (("node", "gpu-1"),))] == 2
    assert samples[("sollol_node_breaker", (("node", "gpu-1"), ("state", "half_open")))] == 1
    assert samples[("sollol_node_breaker", (("node", "gpu-1"), ("state", "open")))] == 0
    assert samples[("sollol_node_vram_free_bytes", (("node", "gpu-1"),))] == 1024 * 2**20
    assert ("sollol_node_vram_free_bytes", (("node", "cpu"),)) not in samples
    assert samples[("sollol_node_decode_tokens_per_second", (("model", "llama3.2:latest"), ("node", "gpu-1")))] == 88.5
    assert samples[("sollol_queue_waiting", ())] == 3
    assert samples[("sollol_queue_wait_seconds_mean", (("priority", "9"),))] == 0.12
    assert samples[("sollol_shard_group_state", (("model", "big:latest"), ("state", "running")))] == 1
    assert samples[("sollol_cache_entries", ())] == 7 and samples[("sollol_cache_bytes", ())] == 4096
    assert samples[("sollol_batch_jobs", (("state", "completed"),))] == 3
    assert samples[("sollol_batch_items_pending", ())] == 40


def test_queue_waits_as_a_summary_shard_group_counts_and_alert_gauges():
    queue = QueueStatus(router="r1", waiting=0, max=1000, aging_s=30.0,
                        waited_by_priority={"10": {"count": 2, "mean_ms": 50.0, "max_ms": 60.0},
                                            "5": {"count": 4, "mean_ms": 250.0, "max_ms": 900.0}})
    shards = [{"model": "a", "state": "failed"}, {"model": "b", "state": "failed"}, {"model": "c", "state": "running"}]
    alerts = [("breaker_open", "cpu", "warning", 1.0), ("node_down", "gpu-1", "critical", 0.0)]
    samples = _samples(render(RequestMetrics(), NODES, queue, shards, {}, {}, alerts=alerts))
    # count and sum (4 x 0.25 s), so PromQL can take rate(_sum) / rate(_count)
    assert samples[("sollol_queue_wait_seconds_count", (("priority", "5"),))] == 4
    assert samples[("sollol_queue_wait_seconds_sum", (("priority", "5"),))] == 1.0
    assert samples[("sollol_queue_wait_seconds_sum", (("priority", "10"),))] == 0.1
    assert samples[("sollol_shard_groups", (("state", "failed"),))] == 2
    assert samples[("sollol_shard_groups", (("state", "running"),))] == 1
    assert samples[("sollol_shard_groups", (("state", "starting"),))] == 0  # every state, so a rule has a series
    assert samples[("sollol_alerts_active", (("kind", "breaker_open"), ("severity", "warning"), ("subject", "cpu")))] == 1
    assert samples[("sollol_alerts_active", (("kind", "node_down"), ("severity", "critical"), ("subject", "gpu-1")))] == 0


def test_no_shard_group_still_gives_every_state_a_zero():
    samples = _samples(render(RequestMetrics(), NODES, QUEUE, [], {}, {}))
    assert {k[1] for k in samples if k[0] == "sollol_shard_groups"} == {
        (("state", s),) for s in ("starting", "running", "restarting", "failed", "stopped")}
    assert not [k for k in samples if k[0] == "sollol_alerts_active"]


def test_each_applications_fair_share_of_the_queue():
    queue = QueueStatus(router="r1", waiting=3, max=1000, aging_s=10.0, by_application={
        "flood": {"share": 1.0, "waiting": 3, "refused": 2, "count": 10, "mean_ms": 2000.0, "max_ms": 9000.0},
        "webui": {"share": 2.0, "waiting": 0, "refused": 0, "count": 4, "mean_ms": 50.0, "max_ms": 90.0}})
    samples = _samples(render(RequestMetrics(), NODES, queue, [], {}, {}))
    assert samples[("sollol_application_queue_wait_seconds_count", (("application", "flood"),))] == 10
    assert samples[("sollol_application_queue_wait_seconds_sum", (("application", "flood"),))] == 20.0
    assert samples[("sollol_application_queue_wait_seconds_sum", (("application", "webui"),))] == 0.2
    assert samples[("sollol_application_waiting", (("application", "flood"),))] == 3
    assert samples[("sollol_application_share", (("application", "webui"),))] == 2.0
    assert samples[("sollol_application_queue_refused_total", (("application", "flood"),))] == 2
