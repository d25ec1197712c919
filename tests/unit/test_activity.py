"""The dashboard's data: decision summaries, the bounded decision log, and the tries per node."""

from __future__ import annotations

from sollol_serve.observability.activity import (
    MAX_DECISIONS,
    Activity,
    decision,
)

ROUTING = {"node": "gpu-1", "strategy": "intelligent", "priority": 9, "task_type": "generation",
           "reasoning": "gpu-1: predicted 0.40 s", "queue_wait_ms": 12.0,
           "attempts": [{"node": "cpu", "ok": False}, {"node": "gpu-1", "ok": True}],
           "candidates": [{"node": "gpu-1", "predicted_s": 0.4, "in_flight": 1, "slots": 4, "wait_s": 0.0},
                          {"node": "cpu", "predicted_s": 3.1, "in_flight": 0, "slots": 1}]}


def test_decision_summary_keeps_what_the_dashboard_shows():
    d = decision("llama3.2", "/api/chat", 200, 0.4567, ROUTING, at=100.0)
    assert d["node"] == "gpu-1" and d["latency_ms"] == 456.7 and d["attempts"] == 2 and d["priority"] == 9
    assert d["tries"] == [{"node": "cpu", "ok": False, "hedge": False}, {"node": "gpu-1", "ok": True, "hedge": False}]
    assert d["candidates"] == [{"node": "gpu-1", "predicted_s": 0.4, "in_flight": 1, "slots": 4},
                               {"node": "cpu", "predicted_s": 3.1, "in_flight": 0, "slots": 1}]


def test_decision_log_is_bounded_and_newest_first_across_replicas():
    activity = Activity()
    replica_a = [decision("m", "/api/chat", 200, 0.1, ROUTING, at=float(t)) for t in range(0, 300, 2)]
    replica_b = [decision("m", "/api/chat", 200, 0.1, ROUTING, at=float(t)) for t in range(1, 300, 2)]
    activity.add(replica_a)
    activity.add(replica_b)
    assert len(activity.decisions) == MAX_DECISIONS
    recent = activity.recent(5)
    assert [d["at"] for d in recent] == [299.0, 297.0, 295.0, 293.0, 291.0]  # b's flush came last

