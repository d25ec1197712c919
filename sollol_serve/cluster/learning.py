"""What the router learns from every response: speeds, reliability, sizes and capacity.

Per node x model: prefill and decode tokens/s, cold-load seconds, success rate, each an
exponentially decayed mean with variance whose memory also fades with time (an estimate not
sampled for a while gives way to the next sample, and to the cluster prior when predicting).
Per model x task: how many tokens answers run to (the request profile's estimate when the client sets
no limit). Per node: its parallel capacity (`capacity.Capacity`). Plain data, mergeable: each
router replica learns locally at once and the shared state actor merges everybody's
observations, replaying them with their own timestamps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from sollol_serve.cluster.capacity import Capacity, has_queued, ran_beside

DEFAULT_ALPHA = 0.2  # weight of the newest sample: ~5 samples of memory
OUTPUT_ALPHA = 0.1  # answer lengths vary a lot from one answer to the next: a longer memory
Z_95 = 1.645  # a normal distribution's 95th percentile, in standard deviations
# An estimate not sampled for MEMORY_S seconds keeps e^-1 of its weight.
MEMORY_S = 60.0
# A sample this many times above or below the mean is a change (a node slowed or healed),
# not noise: it gets at least SURPRISE_WEIGHT.
SURPRISE_RATIO = 2.0
SURPRISE_WEIGHT = 0.5


def freshness(age_s: float) -> float:
    """How much of its weight an estimate keeps after `age_s` without a sample."""
    return math.exp(-max(age_s, 0.0) / MEMORY_S)


@dataclass(slots=True)
class Ewma:
    """Exponentially weighted mean and variance (West's incremental form)."""

    mean: float = 0.0
    var: float = 0.0
    n: int = 0
    alpha: float = DEFAULT_ALPHA
    at: float = 0.0  # wall-clock time of the last sample (0: untimed)
    # Take a sample far from a settled mean as a change, not noise (node speeds: a node
    # slowed down or healed); off for quantities that are noisy by nature.
    follows_changes: bool = False

    def weight(self, x: float, at: float | None) -> float:
        """The newest sample's weight: more for the first few samples, after a silence, and
        for a sample far from the mean."""
        a = max(self.alpha, 1.0 / (self.n + 1))
        if at and self.at:
            a = 1.0 - (1.0 - a) * freshness(at - self.at)
        if (self.follows_changes and self.n >= 3 and self.mean > 0 and x > 0
                and max(x / self.mean, self.mean / x) >= SURPRISE_RATIO):
            a = max(a, SURPRISE_WEIGHT)
        return a

    def update(self, x: float, at: float | None = None) -> None:
        if self.n == 0:
            self.mean, self.var = x, 0.0
        else:
            a = self.weight(x, at)
            diff = x - self.mean
            incr = a * diff
            self.mean += incr
            self.var = (1 - a) * (self.var + diff * incr)
        self.n += 1
        if at:
            self.at = at

    def toward(self, prior: float, now: float) -> float:
        """The mean as a prediction at `now`: an old estimate leans back toward `prior`."""
        if not self.at:
            return self.mean
        keep = freshness(now - self.at)
        return keep * self.mean + (1 - keep) * prior

    def age(self, now: float) -> float | None:
        return now - self.at if self.n and self.at else None

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
    # Waited inside the node by its own clock (total - load - prompt-eval - eval), if it says.
    node_queued_s: float | None = None
    # Requests the node ran at once at this one's first byte, by its worker's count (None: unknown).
    running: int | None = None
    # For each request unfinished there as it was sent: seconds after the send it ended (None: later).
    ends_after_send: tuple[float | None, ...] | None = None
    probe: bool = False  # sent above the node's proven capacity, to explore it
    remeasure: bool = False  # the router's own short request: its length says nothing of answers
    # "first_byte": only that the request began while `concurrent` ran at once (capacity).
    phase: str = "done"
    at: float = 0.0  # wall-clock time it finished (0: untimed, its estimates never age)

    def ran_at_once(self) -> int:
        """The concurrency this request proves if it did not queue: what the router had in
        flight when it sent it, unless its worker saw fewer running beside it, at its first
        byte or (since it started as it arrived) after it was sent. The router hears of ends
        late; a long prefill can outlast the answer it ran beside."""
        seen = [] if self.running is None else [self.running]
        if self.ends_after_send is not None:
            queued = self.queued_s() or 0.0
            seen.append(ran_beside(self.ends_after_send, self.wall_s - queued, self.node_queued_s is not None))
        return min(self.concurrent, max(seen)) if seen else self.concurrent

    def queued_s(self) -> float | None:
        """Time the request spent waiting inside the node: by the node's own clock when it
        reports one, else wall time minus the work it reports. None without timings."""
        if self.node_queued_s is not None:
            return self.node_queued_s
        if self.decode_s is None or self.prefill_s is None:
            return None
        return max(0.0, self.wall_s - (self.load_s or 0.0) - self.prefill_s - self.decode_s)


@dataclass(slots=True)
class ModelPerf:
    """How one model runs on one node."""

    prefill_tps: Ewma = field(default_factory=Ewma)
    decode_tps: Ewma = field(default_factory=lambda: Ewma(follows_changes=True))
    embed_tps: Ewma = field(default_factory=lambda: Ewma(follows_changes=True))  # prompt tokens/s of embeddings
    load_s: Ewma = field(default_factory=Ewma)
    success: Ewma = field(default_factory=lambda: Ewma(alpha=0.1))
    ttfb_s: Ewma = field(default_factory=Ewma)  # request sent -> first chunk
    max_ok_concurrency: int = 0

    def last_sample_at(self) -> float:
        return max(self.decode_tps.at, self.embed_tps.at, self.prefill_tps.at)

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
    capacity: dict[str, Capacity] = field(default_factory=dict)

    def perf(self, node: str, model: str) -> ModelPerf | None:
        return self.models.get((node, model))

    def expected_output(self, model: str, task_type: str) -> int | None:
        e = self.output_tokens.get((model, task_type))
        return round(e.mean) if e and e.n else None

    def capacity_of(self, node: str) -> Capacity:
        return self.capacity.setdefault(node, Capacity())

    def learned_slots(self, node: str) -> int:
        capacity = self.capacity.get(node)
        return capacity.proven if capacity else 1

    def _learn_capacity(self, o: Observation) -> None:
        capacity = self.capacity_of(o.node)
        if o.phase == "first_byte":
            if capacity.ran(o.ran_at_once()) and o.probe:
                capacity.probes_proved += 1
            return
        if o.probe:
            capacity.probes += 1
        queued = o.queued_s()
        if queued is None:
            return
        if not has_queued(queued, o.wall_s - queued, node_clock=o.node_queued_s is not None):
            if capacity.ran(o.ran_at_once()) and o.probe:
                capacity.probes_proved += 1
            return
        if o.probe:
            capacity.probes_queued += 1
        capacity.queued(o.concurrent, o.at)

    def observe(self, o: Observation) -> None:
        if o.phase == "first_byte":
            self._learn_capacity(o)
            return
        perf = self.models.setdefault((o.node, o.model), ModelPerf())
        perf.success.update(1.0 if o.ok else 0.0, o.at)
        if not o.ok:
            return
        self._learn_capacity(o)
        perf.max_ok_concurrency = max(perf.max_ok_concurrency, o.concurrent)
        if o.ttfb_s is not None:
            perf.ttfb_s.update(o.ttfb_s, o.at)
        if o.load_s is not None and o.load_s >= COLD_LOAD_MIN_S:
            perf.load_s.update(o.load_s, o.at)
        if o.embedding:
            busy = (o.wall_s - (o.load_s or 0.0)) if o.prefill_s is None else o.prefill_s
            rate = _rate(o.prompt_tokens, busy)
            if rate:
                perf.embed_tps.update(rate, o.at)
            return
        prefill = _rate(o.prompt_tokens, o.prefill_s)
        if prefill:
            perf.prefill_tps.update(prefill, o.at)
        decode_s = o.decode_s
        if decode_s is None:  # no timings from the node: attribute the wall time to decoding
            decode_s = o.wall_s - (o.load_s or 0.0) - (o.prefill_s or 0.0)
        decode = _rate(o.completion_tokens, decode_s)
        if decode:
            perf.decode_tps.update(decode, o.at)
        if not o.remeasure:
            self.output_tokens.setdefault((o.model, o.task_type), Ewma(alpha=OUTPUT_ALPHA)).update(o.completion_tokens)

    def merge_from(self, observations: list[Observation]) -> None:
        for o in observations:
            self.observe(o)
