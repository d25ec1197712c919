"""Backoff with full jitter, and when and how late to hedge."""

from __future__ import annotations

import random

from sollol_serve.cluster.learning import ModelPerf
from sollol_serve.config import FailoverConfig
from sollol_serve.routing.failover import backoff_s, hedge_delay_s, should_hedge

CONFIG = FailoverConfig(backoff_s=0.1, backoff_max_s=0.5, hedge_priority=9, hedge_min_delay_s=0.05,
                        hedge_default_delay_s=2.0)


def test_backoff_is_jittered_under_an_exponential_cap():
    rng = random.Random(1)
    assert backoff_s(0, CONFIG, rng) == 0.0
    for failures, cap in ((1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (10, 0.5)):
        waits = [backoff_s(failures, CONFIG, rng) for _ in range(200)]
        assert all(0.0 <= w <= cap for w in waits)
        assert max(waits) > 0.8 * cap and min(waits) < 0.2 * cap  # spread over the whole range


def test_only_urgent_requests_are_hedged_and_none_when_off():
    assert should_hedge(9, CONFIG) and should_hedge(10, CONFIG)
    assert not should_hedge(8, CONFIG)
    assert not should_hedge(10, CONFIG.model_copy(update={"hedge_priority": None}))


def test_hedge_delay_is_the_learned_p95_time_to_first_byte():
    assert hedge_delay_s(None, CONFIG) == 2.0  # nothing measured yet
    perf = ModelPerf()
    for ttfb in (0.2, 0.3, 0.25, 0.35, 0.2, 0.3):
        perf.ttfb_s.update(ttfb)
    delay = hedge_delay_s(perf, CONFIG)
    assert perf.ttfb_s.mean < delay < 0.6
    fast = ModelPerf()
    fast.ttfb_s.update(0.001)
    assert hedge_delay_s(fast, CONFIG) == 0.05  # never sooner than the minimum
