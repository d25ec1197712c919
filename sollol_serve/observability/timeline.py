"""The last hour of the cluster, in 10-second intervals, for the dashboard's charts.

Kept server-side (in the metrics actor) so a page opened now shows the past hour, not only
its own lifetime. Three feeds fill it: every answered request (`Use`: rate, errors, latency
percentiles, tokens/s per node), every routing decision (queue wait by priority, and the
router's accuracy: the seconds it predicted for the node it chose, the seconds it took, and
what it predicted for the node least-connections would have chosen), and the Router's
periodic sample of the nodes and its queue (load per node, models loaded per Ollama node,
queue depth).
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass, field

from sollol_serve.observability.applications import Use, percentile
from sollol_serve.protocol import NodeStatus, QueueStatus

INTERVAL_S = 10.0
SPAN_S = 3600.0
MAX_LATENCIES = 5000  # in the open interval: a bound on memory at high request rates


def least_connections_choice(candidates: list[dict]) -> dict | None:
    """The candidate nginx `least_conn` would pick: fewest in flight, the first on a tie."""
    ranked = [c for c in candidates if c.get("in_flight") is not None]
    return min(ranked, key=lambda c: c["in_flight"]) if ranked else None


@dataclass
class Mean:
    total: float = 0.0
    n: int = 0

    def add(self, value: float) -> None:
        self.total += value
        self.n += 1

    def value(self, digits: int = 3) -> float | None:
        return round(self.total / self.n, digits) if self.n else None


@dataclass
class Interval:
    start: float
    requests: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)  # until sealed: then only its percentiles
    percentiles: dict[str, float | None] | None = None
    tokens_out: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # node -> tokens
    in_flight: dict[str, Mean] = field(default_factory=lambda: defaultdict(Mean))  # node -> mean of samples
    slots: dict[str, float] = field(default_factory=dict)  # node -> its capacity at the last sample
    # Ollama node -> every model loaded at one of its samples: one loaded for a few seconds shows.
    loaded: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    waiting: dict[str, int] = field(default_factory=dict)  # router -> its queue at its last sample
    queue_wait: dict[str, Mean] = field(default_factory=lambda: defaultdict(Mean))  # priority -> ms
    predicted: Mean = field(default_factory=Mean)
    actual: Mean = field(default_factory=Mean)
    least_conn: Mean = field(default_factory=Mean)

    def latency_ms(self) -> dict[str, float | None]:
        if self.percentiles is not None:
            return self.percentiles
        ordered = sorted(self.latencies)
        values = {name: percentile(ordered, q) for name, q in (("p50_ms", 0.5), ("p95_ms", 0.95), ("p99_ms", 0.99))}
        return {name: None if v is None else round(v * 1000, 1) for name, v in values.items()}

    def seal(self) -> None:
        """A newer interval began: keep the percentiles, free the samples (an hour of them at
        a high rate would be millions). A late request still counts, not in the percentiles."""
        self.percentiles = self.latency_ms()
        self.latencies = []

    def as_json(self) -> dict:
        return {
            "at": self.start, "requests": self.requests, "errors": self.errors, **self.latency_ms(),
            "tokens_per_s": {node: round(n / INTERVAL_S, 2) for node, n in sorted(self.tokens_out.items())},
            "load": {node: {"in_flight": mean.value(2), "slots": self.slots.get(node)}
                     for node, mean in sorted(self.in_flight.items())},
            "loaded": {node: sorted(models) for node, models in sorted(self.loaded.items())},
            "queue_waiting": sum(self.waiting.values()) if self.waiting else None,
            "queue_wait_ms": {p: mean.value(1) for p, mean in sorted(self.queue_wait.items(), key=lambda i: int(i[0]))},
            "predicted_s": self.predicted.value(), "actual_s": self.actual.value(),
            "least_conn_predicted_s": self.least_conn.value(),
        }


@dataclass
class Timeline:
    intervals: deque = field(default_factory=lambda: deque(maxlen=int(SPAN_S / INTERVAL_S)))

    def _at(self, at: float) -> Interval | None:
        """The interval holding time `at` (made if it is the newest), None if older than kept."""
        start = at - at % INTERVAL_S
        if self.intervals and self.intervals[-1].start >= start:
            for interval in reversed(self.intervals):
                if interval.start == start:
                    return interval
                if interval.start < start:
                    return None  # a gap in the past: nothing was recorded then, leave it so
            return None
        if self.intervals:
            self.intervals[-1].seal()
        self.intervals.append(Interval(start))
        return self.intervals[-1]

    def add_use(self, use: Use) -> None:
        interval = self._at(use.at)
        if interval is None:
            return
        interval.requests += 1
        interval.errors += use.status >= 400
        if interval.percentiles is None and len(interval.latencies) < MAX_LATENCIES:
            interval.latencies.append(use.latency_s)
        if use.node and use.node != "none" and use.tokens_out:
            interval.tokens_out[use.node] += use.tokens_out

    def add_decision(self, decision: dict) -> None:
        interval = self._at(decision["at"])
        if interval is None:
            return
        if decision.get("queue_wait_ms") is not None and decision.get("priority") is not None:
            interval.queue_wait[str(decision["priority"])].add(decision["queue_wait_ms"])
        candidates = decision.get("candidates") or []
        chosen = next((c for c in candidates if c.get("node") == decision.get("node")), None)
        if decision.get("status") == 200 and chosen and chosen.get("predicted_s") is not None:
            interval.predicted.add(chosen["predicted_s"])
            interval.actual.add(decision["latency_ms"] / 1000)
            other = least_connections_choice(candidates)
            if other is not None and other.get("predicted_s") is not None:
                interval.least_conn.add(other["predicted_s"])

    def add_sample(self, at: float, router: str, nodes: list[NodeStatus], queue: QueueStatus) -> None:
        interval = self._at(at)
        if interval is None:
            return
        for node in nodes:
            interval.in_flight[node.name].add(node.in_flight)
            interval.slots[node.name] = node.slots
            if node.kind == "ollama":  # the others serve what they serve: nothing comes and goes
                interval.loaded[node.name].update(node.loaded)
        interval.waiting[router] = queue.waiting

    def as_json(self, since: float = 0.0) -> dict:
        return {"interval_s": INTERVAL_S, "span_s": SPAN_S,
                "points": [i.as_json() for i in self.intervals if i.start + INTERVAL_S > since]}
