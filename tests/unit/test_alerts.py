"""Alerts open when a condition holds, stay through a brief recovery, and end once the
condition has been clear for `clear_after_s` (numbers worked out by hand in the comments)."""

from __future__ import annotations

from sollol_serve.config import AlertsConfig, GatewayConfig
from sollol_serve.observability.alerts import AlertTracker, NodeOutcome, outcomes_of
from sollol_serve.protocol import NOT_PROBED, NodeStatus, QueueStatus

CONFIG = AlertsConfig(window_s=60, success_rate_below=0.9, min_requests=10, latency_ratio_above=3.0,
                      min_latency_samples=5, min_latency_excess_s=1.0, queue_wait_above_s=10.0, hysteresis=0.2,
                      clear_after_s=30, recent=2)
QUIET = QueueStatus(router="r1", waiting=0, max=100, aging_s=10.0)


def _node(name: str, healthy: bool = True, breaker: str = "closed") -> NodeStatus:
    return NodeStatus(name=name, healthy=healthy, slots=2, in_flight=0, breaker=breaker)


def _queue(router: str, waited: dict[str, tuple[int, float]]) -> QueueStatus:
    return QueueStatus(router=router, waiting=0, max=100, aging_s=10.0,
                       waited_by_priority={p: {"count": n, "mean_ms": mean_ms, "max_ms": mean_ms}
                                           for p, (n, mean_ms) in waited.items()})


def _active(tracker: AlertTracker) -> dict[tuple[str, str], dict]:
    return {(a["kind"], a["subject"]): a for a in tracker.as_json()["active"]}


def test_the_gateway_config_has_alert_defaults():
    alerts = GatewayConfig().alerts
    assert (alerts.window_s, alerts.success_rate_below, alerts.min_requests) == (60.0, 0.9, 10)
    assert (alerts.latency_ratio_above, alerts.queue_wait_above_s, alerts.clear_after_s) == (3.0, 10.0, 30.0)


def test_a_breaker_alert_stays_through_half_open_and_ends_30_s_after_it_closes():
    t = AlertTracker(CONFIG)
    t.observe(0, [_node("a", breaker="open"), _node("b")], QUIET, [])
    [alert] = t.as_json()["active"]
    assert (alert["kind"], alert["subject"], alert["severity"]) == ("breaker_open", "a", "warning")
    assert alert["started_at"] == 0 and alert["ended_at"] is None and "breaker is open" in alert["message"]
    first_id = alert["id"]
    t.observe(10, [_node("a", breaker="half_open"), _node("b")], QUIET, [])  # a trial: not yet over
    t.observe(20, [_node("a"), _node("b")], QUIET, [])  # closed: clear since 20
    t.observe(45, [_node("a", breaker="open"), _node("b")], QUIET, [])  # opened again at 45 < 20 + 30: same alert
    assert [a["id"] for a in t.as_json()["active"]] == [first_id]
    t.observe(50, [_node("a"), _node("b")], QUIET, [])  # clear since 50
    t.observe(79, [_node("a"), _node("b")], QUIET, [])  # 29 s clear: still active
    assert _active(t)
    t.observe(80, [_node("a"), _node("b")], QUIET, [])  # 30 s clear: ended
    assert t.as_json()["active"] == []
    [ended] = t.as_json()["recent"]
    assert (ended["id"], ended["started_at"], ended["ended_at"]) == (first_id, 0, 80)
    assert "breaker is open" in ended["message"]  # the words of the problem, not of the recovery


def test_a_breaker_first_seen_half_open_raises_the_alert_too():
    t = AlertTracker(CONFIG)
    t.observe(0, [_node("a", breaker="half_open")], QUIET, [])  # open for less than a sample's interval
    [alert] = t.as_json()["active"]
    assert (alert["kind"], alert["subject"]) == ("breaker_open", "a") and "half-open" in alert["message"]


def test_low_success_rate_needs_min_requests_in_the_window_and_clears_only_past_the_margin():
    t = AlertTracker(CONFIG)
    t.record(NodeOutcome(100 + i, "a", ok=False) for i in range(9))
    t.observe(110, [_node("a")], QUIET, [])
    assert not _active(t)  # 9 tries < min_requests 10, however bad
    t.record([NodeOutcome(109.5, "a", ok=True)])
    t.observe(110, [_node("a")], QUIET, [])
    alert = _active(t)[("low_success_rate", "a")]
    assert alert["value"] == 0.1 and alert["threshold"] == 0.9  # 1 ok of 10
    assert "answered 1 of its last 10 tries (10%)" in alert["message"]

    t = AlertTracker(CONFIG)
    t.record(NodeOutcome(100 + i, "a", ok=i >= 2) for i in range(10))  # 8 of 10 ok: 0.8 < 0.9
    t.observe(110, [_node("a")], QUIET, [])
    assert _active(t)[("low_success_rate", "a")]["value"] == 0.8
    t.record(NodeOutcome(111 + i, "a", ok=True) for i in range(10))  # 18 of 20: 0.9, not below, but
    t.observe(121, [_node("a")], QUIET, [])  # failures 0.1 > 0.1 * (1 - 0.2) = 0.08: not clear
    assert _active(t)[("low_success_rate", "a")]["value"] == 0.9
    t.observe(160, [_node("a")], QUIET, [])
    assert ("low_success_rate", "a") in _active(t)  # never clear, so never ends
    t.record(NodeOutcome(122 + i, "a", ok=True) for i in range(5))  # 23 of 25: failures 0.08, clear
    t.observe(161, [_node("a")], QUIET, [])
    t.observe(190, [_node("a")], QUIET, [])  # 29 s clear
    assert ("low_success_rate", "a") in _active(t)
    t.observe(191, [_node("a")], QUIET, [])  # 30 s: ended (the window, since 131, still holds 11 tries)
    assert not _active(t) and t.as_json()["recent"][0]["ended_at"] == 191


def test_tries_older_than_the_window_are_forgotten():
    t = AlertTracker(CONFIG)
    t.record(NodeOutcome(float(i), "a", ok=False) for i in range(10))
    t.observe(69.5, [_node("a")], QUIET, [])  # the window starts at 9.5: one try left
    assert not _active(t)


def test_high_latency_is_the_summed_ratio_to_the_prediction_with_a_floor_in_seconds():
    t = AlertTracker(CONFIG)
    # observed 4 s each against 1 s predicted: ratio 20 / 5 = 4 > 3, excess 3 s > 1 s
    t.record(NodeOutcome(10 + i, "a", ok=True, observed_s=4.0, predicted_s=1.0) for i in range(5))
    # 50 ms answers predicted at 10 ms: ratio 5, but only 40 ms more each: no alarm
    t.record(NodeOutcome(10 + i, "b", ok=True, observed_s=0.05, predicted_s=0.01) for i in range(5))
    t.observe(20, [_node("a"), _node("b")], QUIET, [])
    active = _active(t)
    assert set(active) == {("high_latency", "a")}
    assert active[("high_latency", "a")]["value"] == 4.0 and active[("high_latency", "a")]["threshold"] == 3.0
    assert "took 4.0x the 1.00 s the router predicted on average (4.00 s)" in active[("high_latency", "a")]["message"]
    # five more at 1.5 s: (20 + 7.5) / 10 = 2.75, under 3 but over 3 * 0.8 = 2.4: not clear yet
    t.record(NodeOutcome(21 + i, "a", ok=True, observed_s=1.5, predicted_s=1.0) for i in range(5))
    t.observe(30, [_node("a"), _node("b")], QUIET, [])
    assert active[("high_latency", "a")]["id"] in {a["id"] for a in t.as_json()["active"]}
    t.observe(59, [_node("a"), _node("b")], QUIET, [])
    assert ("high_latency", "a") in _active(t)  # 29 s later, never clear: still on
    # five at 1 s: (27.5 + 5) / 15 = 2.17 <= 2.4: clear from 60, ended at 90
    t.record(NodeOutcome(26 + i, "a", ok=True, observed_s=1.0, predicted_s=1.0) for i in range(5))
    t.observe(60, [_node("a"), _node("b")], QUIET, [])
    t.observe(89, [_node("a"), _node("b")], QUIET, [])
    assert ("high_latency", "a") in _active(t)
    t.observe(90, [_node("a"), _node("b")], QUIET, [])
    assert not _active(t)


def test_queue_wait_is_the_mean_of_the_waits_served_in_the_window_across_routers():
    t = AlertTracker(CONFIG)
    t.observe(0, [_node("a")], _queue("r1", {"5": (10, 1000.0)}), [])  # 10 s waited in all so far
    t.observe(1, [_node("a")], _queue("r2", {"5": (4, 500.0)}), [])
    assert not _active(t)  # one sample per router: nothing served in the window yet
    t.observe(30, [_node("a")], _queue("r1", {"5": (20, 8000.0)}), [])  # 10 more, 160 - 10 = 150 s
    t.observe(31, [_node("a")], _queue("r2", {"5": (6, 5000.0)}), [])  # 2 more, 30 - 2 = 28 s
    alert = _active(t)[("queue_wait", "5")]
    # (150 + 28) / (10 + 2) = 14.833 s > 10 s
    assert alert["value"] == 14.833 and alert["threshold"] == 10.0 and alert["severity"] == "warning"
    assert alert["message"].startswith("12 requests of priority 5 waited 14.8 s on average")
    t.observe(100, [_node("a")], _queue("r1", {"5": (20, 8000.0)}), [])  # r2 silent since 31 < 40: gone
    t.observe(129, [_node("a")], _queue("r1", {"5": (20, 8000.0)}), [])  # nothing served since 30: clear
    assert ("queue_wait", "5") in _active(t)
    t.observe(130, [_node("a")], _queue("r1", {"5": (20, 8000.0)}), [])
    assert not _active(t)


def test_a_router_restart_starts_its_queue_totals_over():
    t = AlertTracker(CONFIG)
    t.observe(0, [_node("a")], _queue("r1", {"5": (100, 1000.0)}), [])
    t.observe(5, [_node("a")], _queue("r1", {"5": (1, 20000.0)}), [])  # fewer than before: not -99 requests
    assert not _active(t)
    t.observe(10, [_node("a")], _queue("r1", {"5": (3, 15000.0)}), [])  # 2 more: 45 - 20 = 25 s, 12.5 s each
    assert _active(t)[("queue_wait", "5")]["value"] == 12.5


def test_down_nodes_no_healthy_node_and_a_failed_shard_group_are_critical_and_listed_first():
    t = AlertTracker(CONFIG)
    t.observe(0, [_node("a", breaker="open")], QUIET, [])
    groups = [{"model": "big:70b", "state": "failed", "error": "rpc-server exited"}, {"model": "ok", "state": "running"}]
    t.observe(5, [_node("a", healthy=False, breaker="open"), _node("b", healthy=False)], QUIET, groups)
    active = t.as_json()["active"]
    assert [(a["kind"], a["subject"]) for a in active] == [
        ("node_down", "a"), ("node_down", "b"), ("no_healthy_node", "cluster"), ("shard_group_failed", "big:70b"),
        ("breaker_open", "a")]  # critical first, then oldest first (0 before 5), then nodes, cluster, groups
    assert all(a["severity"] == "critical" for a in active[:4])
    assert active[2]["value"] == 0.0 and active[2]["threshold"] == 1.0
    assert "big:70b failed: rpc-server exited" in active[3]["message"]
    t.observe(10, [_node("a"), _node("b")], QUIET, [])  # all fine, and the group deleted
    t.observe(40, [_node("a"), _node("b")], QUIET, [])
    assert t.as_json()["active"] == []
    assert len(t.as_json()["recent"]) == 2  # CONFIG.recent: the newest two of five


def test_a_node_removed_while_alerting_ends_its_alerts():
    t = AlertTracker(CONFIG)
    t.observe(0, [_node("a", healthy=False), _node("b")], QUIET, [])
    t.observe(10, [_node("b")], QUIET, [])
    t.observe(40, [_node("b")], QUIET, [])
    assert not _active(t) and t.as_json()["recent"][0]["subject"] == "a"


def test_gauges_are_one_per_active_alert_and_zero_for_every_subject_watched():
    t = AlertTracker(CONFIG)
    t.observe(0, [_node("a", breaker="open")], _queue("r1", {"9": (1, 0.0)}), [{"model": "m", "state": "running"}])
    gauges = {(kind, subject): (severity, value) for kind, subject, severity, value in t.gauges()}
    assert gauges[("breaker_open", "a")] == ("warning", 1.0)
    assert gauges[("node_down", "a")] == ("critical", 0.0)
    assert {key for key, (_, value) in gauges.items() if value == 0} == {
        ("node_down", "a"), ("low_success_rate", "a"), ("high_latency", "a"), ("no_healthy_node", "cluster"),
        ("queue_wait", "9"), ("shard_group_failed", "m")}


def test_outcomes_of_a_decision_are_its_tries_and_a_first_try_is_timed_without_its_queue_wait():
    retried = {"at": 5.0, "status": 200, "node": "b", "latency_ms": 900.0, "queue_wait_ms": 0.0,
               "tries": [{"node": "a", "ok": False, "hedge": False}, {"node": "b", "ok": True, "hedge": False}],
               "candidates": [{"node": "b", "predicted_s": 0.5}]}
    assert outcomes_of(retried) == [NodeOutcome(5.0, "a", False), NodeOutcome(5.0, "b", True)]
    first = {"at": 6.0, "status": 200, "node": "b", "latency_ms": 1700.0, "queue_wait_ms": 200.0,
             "tries": [{"node": "b", "ok": True, "hedge": False}],
             "candidates": [{"node": "a", "predicted_s": 3.0}, {"node": "b", "predicted_s": 0.5}]}
    assert outcomes_of(first) == [NodeOutcome(6.0, "b", True, observed_s=1.5, predicted_s=0.5)]
    hedged = {**first, "tries": [{"node": "c", "hedge": True, "ok": None}, {"node": "b", "ok": True}]}
    assert outcomes_of(hedged) == [NodeOutcome(6.0, "b", True)]
    assert outcomes_of({"at": 1.0, "status": 200, "node": "a", "latency_ms": 1.0, "tries": []}) == []  # a cache hit


def test_a_gateway_process_that_keeps_dying_raises_an_alert_naming_it():
    # 3 deaths within 600 s open it; once the first is older than 600 s only 2 remain: clear,
    # and the alert ends 30 s (clear_after_s) later.
    t = AlertTracker(CONFIG.model_copy(update={"restarts_at_least": 3, "restarts_window_s": 600}))
    deaths = {"node state actor": [100.0, 400.0]}
    t.observe(500, [_node("a")], QUIET, [], deaths)
    assert ("process_restarting", "node state actor") not in _active(t)
    deaths["node state actor"].append(650.0)
    t.observe(660, [_node("a")], QUIET, [], deaths)
    alert = _active(t)[("process_restarting", "node state actor")]
    assert alert["value"] == 3 and "node state actor died 3 times" in alert["message"]
    t.observe(701, [_node("a")], QUIET, [], deaths)  # 100.0 left the window
    t.observe(731, [_node("a")], QUIET, [], deaths)
    assert ("process_restarting", "node state actor") not in _active(t)


def test_a_node_not_probed_yet_is_neither_up_nor_down_until_its_first_probe():
    """A gateway starting (or a node just added): no node_down, and no no_healthy_node while a
    node that may be up has not been probed; its first probe decides."""
    t = AlertTracker(CONFIG)
    unprobed = NodeStatus(name="a", healthy=False, slots=1, in_flight=0, error=NOT_PROBED)
    t.observe(0, [unprobed, _node("b", healthy=False)], QUIET, [])
    assert set(_active(t)) == {("node_down", "b")}  # b was probed and is down; a is not known yet
    t.observe(5, [_node("a", healthy=False), _node("b", healthy=False)], QUIET, [])
    assert set(_active(t)) == {("node_down", "a"), ("node_down", "b"), ("no_healthy_node", "cluster")}
    t.observe(10, [unprobed, _node("b", healthy=False)], QUIET, [])  # re-added: what is open stays open
    assert set(_active(t)) == {("node_down", "a"), ("node_down", "b"), ("no_healthy_node", "cluster")}
