"""When to try again and when to hedge: pure functions the router applies.

Backoff uses "full jitter" (a uniform wait up to an exponentially growing cap), so requests
that failed together on one dying node don't all arrive at the next one in the same instant.
A hedge goes out when the first node has not begun to answer by its learned p95 time to first
byte: past that point the answer is late more often than one time in twenty.
"""

from __future__ import annotations

import random

from sollol_serve.cluster.learning import ModelPerf
from sollol_serve.config import FailoverConfig


def full_jitter_s(failures: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(max_s, base_s * 2^(failures-1))]."""
    if failures <= 0:
        return 0.0
    return rng.uniform(0.0, min(max_s, base_s * 2 ** (failures - 1)))


def backoff_s(failures: int, config: FailoverConfig, rng: random.Random) -> float:
    """Seconds to wait before the attempt that follows `failures` failed ones."""
    return full_jitter_s(failures, config.backoff_s, config.backoff_max_s, rng)


def should_hedge(priority: int, config: FailoverConfig) -> bool:
    return config.hedge_priority is not None and priority >= config.hedge_priority


def hedge_delay_s(perf: ModelPerf | None, config: FailoverConfig) -> float:
    """How long to wait for the first byte before sending a copy to another node."""
    p95 = perf.ttfb_p95() if perf is not None else None
    return max(config.hedge_min_delay_s, p95 if p95 is not None else config.hedge_default_delay_s)
