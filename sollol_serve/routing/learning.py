"""What the router learns from every response: speeds, reliability and sizes.

Per node x model: prefill and decode tokens/s, cold-load seconds, success rate, each an
exponentially decayed mean with variance. Per model x task: how many tokens answers run to
(the analyzer's estimate when the client sets no limit). Plain data, mergeable: each router
replica learns locally at once and the shared state actor merges everybody's observations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

DEFAULT_ALPHA = 0.2  # weight of the newest sample: ~5 samples of memory
Z_95 = 1.645  # a normal distribution's 95th percentile, in standard deviations


@dataclass(slots=True)
class Ewma:
    """Exponentially weighted mean and variance (West's incremental form)."""

    mean: float = 0.0
    var: float = 0.0
    n: int = 0
    alpha: float = DEFAULT_ALPHA

    def update(self, x: float) -> None:
        if self.n == 0:
            self.mean, self.var = x, 0.0
        else:
            # The first few samples count more, so the mean isn't stuck near the first one.
            a = max(self.alpha, 1.0 / (self.n + 1))
            diff = x - self.mean
            incr = a * diff
            self.mean += incr
            self.var = (1 - a) * (self.var + diff * incr)
        self.n += 1

    @property
    def std(self) -> float:
        return math.sqrt(max(self.var, 0.0))

    def relative_std(self) -> float:
        return self.std / self.mean if self.mean > 0 else 0.0


@dataclass(slots=True)
class Observation:
    """One finished (or failed) request, as the router saw it."""

    node: str
    model: str
    task_type: str
    ok: bool
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prefill_s: float | None = None
    decode_s: float | None = None
    load_s: float | None = None
    wall_s: float = 0.0
    concurrent: int = 1  # requests in flight on the node when this one started (incl. itself)
    embedding: bool = False
    ttfb_s: float | None = None

    def queued_s(self) -> float | None:
        """Time the request spent waiting inside the node: wall time minus the work the node
        reports. None when the node reports no timings."""
        if self.decode_s is None or self.prefill_s is None:
            return None
        return max(0.0, self.wall_s - (self.load_s or 0.0) - self.prefill_s - self.decode_s)


@dataclass(slots=True)
class ModelPerf:
    """How one model runs on one node."""

    prefill_tps: Ewma = field(default_factory=Ewma)
    decode_tps: Ewma = field(default_factory=Ewma)
    embed_tps: Ewma = field(default_factory=Ewma)  # prompt tokens/s of embedding requests
    load_s: Ewma = field(default_factory=Ewma)
    success: Ewma = field(default_factory=lambda: Ewma(alpha=0.1))
    ttfb_s: Ewma = field(default_factory=Ewma)  # request sent -> first chunk
    max_ok_concurrency: int = 0

    def ttfb_p95(self) -> float | None:
        """The time to first byte that 95% of answers beat (normal approximation)."""
        return self.ttfb_s.mean + Z_95 * self.ttfb_s.std if self.ttfb_s.n else None

    @property
    def samples(self) -> int:
        return max(self.decode_tps.n, self.embed_tps.n)


# A load shorter than this is a model already in memory, not a cold load.
COLD_LOAD_MIN_S = 0.05


def _rate(tokens: int, seconds: float | None) -> float | None:
    return tokens / seconds if tokens > 0 and seconds and seconds > 0 else None


@dataclass
class PerfBook:
    """Everything learned, keyed by (node, model) and (model, task)."""

    models: dict[tuple[str, str], ModelPerf] = field(default_factory=dict)
    output_tokens: dict[tuple[str, str], Ewma] = field(default_factory=dict)
    # Per node: the most concurrent requests seen served without queueing inside the node.
    slots_ok: dict[str, int] = field(default_factory=dict)

    def perf(self, node: str, model: str) -> ModelPerf | None:
        return self.models.get((node, model))

    def expected_output(self, model: str, task_type: str) -> int | None:
        e = self.output_tokens.get((model, task_type))
        return round(e.mean) if e and e.n else None

    def learned_slots(self, node: str) -> int:
        return self.slots_ok.get(node, 1)

    def _learn_slots(self, o: Observation) -> None:
        queued = o.queued_s()
        if queued is None:
            return
        work = o.wall_s - queued
        known = self.slots_ok.get(node := o.node, 1)
        if queued <= max(0.25 * work, 0.05):
            self.slots_ok[node] = max(known, o.concurrent)
        elif o.concurrent <= known:
            # It queued at a concurrency we believed fine: the node has fewer slots.
            self.slots_ok[node] = max(1, o.concurrent - 1)

    def observe(self, o: Observation) -> None:
        perf = self.models.setdefault((o.node, o.model), ModelPerf())
        perf.success.update(1.0 if o.ok else 0.0)
        if not o.ok:
            return
        self._learn_slots(o)
        perf.max_ok_concurrency = max(perf.max_ok_concurrency, o.concurrent)
        if o.ttfb_s is not None:
            perf.ttfb_s.update(o.ttfb_s)
        if o.load_s is not None and o.load_s >= COLD_LOAD_MIN_S:
            perf.load_s.update(o.load_s)
        if o.embedding:
            busy = (o.wall_s - (o.load_s or 0.0)) if o.prefill_s is None else o.prefill_s
            rate = _rate(o.prompt_tokens, busy)
            if rate:
                perf.embed_tps.update(rate)
            return
        prefill = _rate(o.prompt_tokens, o.prefill_s)
        if prefill:
            perf.prefill_tps.update(prefill)
        decode_s = o.decode_s
        if decode_s is None:  # no timings from the node: attribute the wall time to decoding
            decode_s = o.wall_s - (o.load_s or 0.0) - (o.prefill_s or 0.0)
        decode = _rate(o.completion_tokens, decode_s)
        if decode:
            perf.decode_tps.update(decode)
        self.output_tokens.setdefault((o.model, o.task_type), Ewma(alpha=0.1)).update(o.completion_tokens)

    def merge_from(self, observations: list[Observation]) -> None:
        for o in observations:
            self.observe(o)
