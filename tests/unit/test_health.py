"""Probe intervals adapt to a node's stability; per-model-class timeouts."""

from __future__ import annotations

import pytest

from sollol_serve.config import HealthConfig, ModelTimeouts, TimeoutConfig, timeouts_for
from sollol_serve.nodes.health import ProbeSchedule

HEALTH = HealthConfig(probe_interval_s=4.0, probe_min_s=1.0, probe_max_s=20.0)


def test_stable_node_is_probed_less_and_less_often_up_to_the_max():
    schedule = ProbeSchedule(HEALTH)
    schedule.observe(True, "same")  # the first answer is a change
    assert schedule.interval_s == 1.0
    seen = []
    for _ in range(8):
        schedule.observe(True, "same")
        seen.append(schedule.interval_s)
    assert seen[0] == 4.0
    assert seen == sorted(seen) and seen[-1] == 20.0


def test_down_or_changed_node_is_probed_at_the_min_interval():
    schedule = ProbeSchedule(HEALTH)
    for _ in range(5):
        schedule.observe(True, "same")
    schedule.observe(False, "down")
    assert schedule.interval_s == 1.0
    schedule.observe(False, "down")  # still down: keep looking often
    assert schedule.interval_s == 1.0
    for _ in range(5):
        schedule.observe(True, "a")
    schedule.observe(True, "b")  # the model list changed
    assert schedule.interval_s == 1.0


def test_request_failure_disturbs_the_schedule():
    schedule = ProbeSchedule(HEALTH)
    for _ in range(6):
        schedule.observe(True, "same")
    schedule.disturbed()
    assert schedule.interval_s == 1.0


def test_health_config_rejects_unordered_intervals():
    with pytest.raises(ValueError):
        HealthConfig(probe_interval_s=0.5, probe_min_s=1.0)


def test_model_timeouts_first_matching_pattern_overrides_the_base():
    base = TimeoutConfig(connect_s=2, first_byte_s=30, idle_s=10, total_s=300)
    rules = [ModelTimeouts(match="*70b*", first_byte_s=600, total_s=1800),
             ModelTimeouts(match="llama*", idle_s=5)]
    big = timeouts_for(base, rules, "llama3.1:70b")
    assert (big.connect_s, big.first_byte_s, big.idle_s, big.total_s) == (2, 600, 10, 1800)
    small = timeouts_for(base, rules, "llama3.2")  # matched as llama3.2:latest
    assert (small.first_byte_s, small.idle_s) == (30, 5)
    assert timeouts_for(base, rules, "qwen2.5:7b") is base
