"""The dashboard's last hour: 10 s intervals filled from requests, decisions and samples."""

from __future__ import annotations

from sollol_serve.observability.applications import Use
from sollol_serve.observability.timeline import INTERVAL_S, SPAN_S, Timeline, least_connections_choice
from sollol_serve.protocol import NodeStatus, QueueStatus


def _node(name: str, in_flight: int, slots: int, loaded: list[str] | None = None, kind: str = "ollama") -> NodeStatus:
    return NodeStatus(name=name, url=f"http://{name}", kind=kind, healthy=True, slots=slots, in_flight=in_flight,
                      loaded=loaded or [])


def _decision(at: float, latency_ms: float, node: str, priority: int, wait_ms: float, candidates: list[dict]) -> dict:
    return {"at": at, "latency_ms": latency_ms, "node": node, "status": 200, "priority": priority,
            "queue_wait_ms": wait_ms, "candidates": candidates}


def test_least_connections_picks_fewest_in_flight_first_on_ties():
    assert least_connections_choice([{"node": "a", "in_flight": 2}, {"node": "b", "in_flight": 1},
                                     {"node": "c", "in_flight": 1}])["node"] == "b"
    assert least_connections_choice([{"node": "a"}]) is None


def test_an_interval_holds_rate_percentiles_tokens_load_queue_and_accuracy():
    t = Timeline()
    for i, latency in enumerate((0.1, 0.2, 0.3, 0.4)):
        t.add_use(Use("app", "header", "m", "fast", 200, latency, 5, 30, at=100.0 + i))
    t.add_use(Use("app", "header", "m", "none", 503, 0.01, at=105.0))
    fast_busy = [{"node": "fast", "predicted_s": 0.5, "in_flight": 3}, {"node": "slow", "predicted_s": 2.0, "in_flight": 0}]
    t.add_decision(_decision(101.0, 600.0, "fast", 5, 10.0, fast_busy))
    t.add_decision(_decision(102.0, 400.0, "fast", 5, 30.0, fast_busy))
    t.add_decision(_decision(103.0, 0.0, "fast", 9, 0.0, []))  # no candidates: no accuracy point
    t.add_sample(101.0, "r1", [_node("fast", 2, 4), _node("slow", 0, 1)], QueueStatus(router="r1", waiting=3, max=10, aging_s=5.0))
    t.add_sample(104.0, "r1", [_node("fast", 4, 4), _node("slow", 1, 1)], QueueStatus(router="r1", waiting=1, max=10, aging_s=5.0))
    t.add_sample(104.5, "r2", [_node("fast", 4, 4), _node("slow", 1, 1)], QueueStatus(router="r2", waiting=2, max=10, aging_s=5.0))
    [point] = t.as_json()["points"]
    assert point["at"] == 100.0 and point["requests"] == 5 and point["errors"] == 1
    # latencies 0.01, 0.1, 0.2, 0.3, 0.4: p50 = 0.2; p95 at rank 3.8 = 0.3 + 0.8 * 0.1
    assert point["p50_ms"] == 200.0 and point["p95_ms"] == 380.0
    assert point["tokens_per_s"] == {"fast": 12.0}  # 4 x 30 tokens in 10 s
    assert point["load"] == {"fast": {"in_flight": 3.33, "slots": 4}, "slow": {"in_flight": 0.67, "slots": 1}}
    assert point["queue_waiting"] == 3  # each router's last sample: 1 + 2
    assert point["queue_wait_ms"] == {"5": 20.0, "9": 0.0}
    # Predicted 0.5 s for fast both times, took 0.6 and 0.4; least-connections would have sent
    # both to slow, predicted 2.0 s.
    assert (point["predicted_s"], point["actual_s"], point["least_conn_predicted_s"]) == (0.5, 0.5, 2.0)


def test_an_interval_holds_every_model_each_ollama_node_had_loaded():
    t = Timeline()
    queue = QueueStatus(router="r1", waiting=0, max=10, aging_s=5.0)
    t.add_sample(101.0, "r1", [_node("a", 0, 2, ["chat"]), _node("b", 0, 2), _node("cpp", 0, 1, ["tiny"], "openai")], queue)
    t.add_sample(111.0, "r1", [_node("a", 0, 2, ["chat", "coder"]), _node("b", 0, 2)], queue)
    t.add_sample(113.0, "r2", [_node("a", 0, 2, ["embed"]), _node("b", 0, 2)], queue)  # coder and chat evicted
    first, second = t.as_json()["points"]
    assert first["loaded"] == {"a": ["chat"], "b": []}  # b had nothing loaded; a llama-server is not tracked
    assert second["loaded"] == {"a": ["chat", "coder", "embed"], "b": []}  # each one loaded at some sample in it


def test_an_hour_of_intervals_late_arrivals_and_since():
    t = Timeline()
    for i in range(int(SPAN_S / INTERVAL_S) + 10):
        t.add_use(Use("a", "header", "m", "n", 200, 0.1, at=i * INTERVAL_S))
    points = t.as_json()["points"]
    assert len(points) == SPAN_S / INTERVAL_S and points[0]["at"] == 10 * INTERVAL_S  # the oldest fell off
    t.add_use(Use("a", "header", "m", "n", 200, 5.0, at=points[-2]["at"] + 1))  # a replica's late flush
    late = t.as_json()["points"][-2]
    assert late["requests"] == 2 and late["p99_ms"] == 100.0  # counted; its sealed percentiles stay
    assert all(not i.latencies for i in list(t.intervals)[:-1])  # only the open interval keeps samples
    t.add_use(Use("a", "header", "m", "n", 200, 0.1, at=0.0))  # older than kept: dropped
    assert t.as_json(since=points[-1]["at"])["points"] == [t.as_json()["points"][-1]]
