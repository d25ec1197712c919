"""The circuit breaker: closed -> open -> half_open -> closed or open for longer."""

from __future__ import annotations

from sollol_serve.cluster.breaker import Breaker, BreakerPolicy

POLICY = BreakerPolicy(failures=3, open_s=5.0, max_open_s=12.0)


def opened(now: float = 0.0) -> Breaker:
    breaker = Breaker(POLICY)
    for _ in range(3):
        breaker.record(False, now)
    return breaker


def test_opens_only_after_consecutive_failures():
    breaker = Breaker(POLICY)
    breaker.record(False, 0.0)
    breaker.record(False, 0.0)
    breaker.record(True, 0.0)  # a success resets the count
    breaker.record(False, 0.0)
    breaker.record(False, 0.0)
    assert breaker.state(0.0) == "closed"
    breaker.record(False, 0.0)
    assert breaker.state(0.0) == "open"


def test_half_open_after_the_open_time_and_a_trial_success_closes():
    breaker = opened(now=10.0)
    assert breaker.state(14.9) == "open"
    assert breaker.state(15.0) == "half_open"
    breaker.record(True, 15.1)
    assert breaker.state(15.1) == "closed"
    breaker.record(False, 16.0)
    assert breaker.state(16.0) == "closed"  # needs three in a row again


def test_failed_trial_reopens_for_twice_as_long_up_to_the_max():
    breaker = opened(now=0.0)
    breaker.record(False, 5.0)  # the trial failed
    assert breaker.state(14.9) == "open" and breaker.state(15.0) == "half_open"
    breaker.record(False, 15.0)
    assert breaker.open_for_s == 12.0  # 20 capped at max_open_s
    assert breaker.state(26.9) == "open" and breaker.state(27.0) == "half_open"


def test_late_success_from_before_the_opening_does_not_close_it():
    breaker = opened(now=0.0)
    breaker.record(True, 1.0)
    assert breaker.state(1.0) == "open"


def test_recovery_probe_half_opens_an_open_breaker_early():
    breaker = opened(now=0.0)
    breaker.probe_succeeded(1.0)
    assert breaker.state(1.0) == "half_open"
    breaker.record(False, 1.5)
    assert breaker.state(1.5) == "open"
    closed = Breaker(POLICY)
    closed.probe_succeeded(0.0)
    assert closed.state(0.0) == "closed"
