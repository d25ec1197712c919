"""Prometheus metrics of the whole app, kept as plain mergeable data.

Every Ingress replica counts what it serves in a `RequestMetrics` and sends the increments to
one named actor every second, which merges them; `/metrics` renders that merged book plus the
cluster's current gauges (nodes, queue, shard groups), so every scrape of any replica sees the
same numbers. Rendering uses prometheus-client's metric families and text exposition.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    SummaryMetricFamily,
)

from sollol_serve.observability.applications import ApplicationCounters
from sollol_serve.protocol import NodeStatus, QueueStatus

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

RequestKey = tuple[str, str, str, str]  # endpoint, model, node, status


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)  # per bucket, plus +Inf last
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = self.counts or [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value

    def merge(self, other: "Histogram") -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts)]
        self.total += other.total

    def cumulative(self) -> list[tuple[str, int]]:
        running, out = 0, []
        for bound, count in zip([*map(str, self.buckets), "+Inf"], self.counts):
            running += count
            out.append((bound, running))
        return out


@dataclass
class RequestMetrics:
    """Counters and histograms of served requests (an increment, or the merged whole)."""

    requests: dict[RequestKey, int] = field(default_factory=lambda: defaultdict(int))
    latency: dict[tuple[str, str], Histogram] = field(default_factory=dict)  # endpoint, model
    ttft: dict[tuple[str, str], Histogram] = field(default_factory=dict)
    retries: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # node that failed
    hedges: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # node hedged to
    cache_hits: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))  # endpoint, model
    cache_misses: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    node_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # latency summed per node

    def record(self, endpoint: str, model: str, node: str, status: int, latency_s: float,
               ttft_s: float | None = None, attempts: Iterable[dict] = ()) -> None:
        self.requests[(endpoint, model, node or "none", str(status))] += 1
        self.latency.setdefault((endpoint, model), Histogram(LATENCY_BUCKETS)).observe(latency_s)
        if node and node != "none":
            self.node_seconds[node] += latency_s
        if ttft_s is not None:
            self.ttft.setdefault((endpoint, model), Histogram(TTFT_BUCKETS)).observe(ttft_s)
        for attempt in attempts:
            if attempt.get("hedge"):
                self.hedges[attempt["node"]] += 1
            elif attempt.get("ok") is False:
                self.retries[attempt["node"]] += 1

    def cache_lookup(self, endpoint: str, model: str, hit: bool) -> None:
        (self.cache_hits if hit else self.cache_misses)[(endpoint, model)] += 1

    def merge(self, other: "RequestMetrics") -> None:
        for key, n in other.requests.items():
            self.requests[key] += n
        for mine, theirs in ((self.latency, other.latency), (self.ttft, other.ttft)):
            for key, hist in theirs.items():
                if key in mine:
                    mine[key].merge(hist)
                else:
                    mine[key] = Histogram(hist.buckets, list(hist.counts), hist.total)
        for mine, theirs in ((self.retries, other.retries), (self.hedges, other.hedges),
                             (self.cache_hits, other.cache_hits), (self.cache_misses, other.cache_misses),
                             (self.node_seconds, other.node_seconds)):
            for key, n in theirs.items():
                mine[key] += n

    def empty(self) -> bool:
        return not (self.requests or self.retries or self.hedges or self.cache_hits or self.cache_misses)


def _counter(name: str, doc: str, labels: list[str], values: dict) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(list(key) if isinstance(key, tuple) else [key], value)
    return family


def _histogram(name: str, doc: str, hists: dict[tuple[str, str], Histogram]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=["endpoint", "model"])
    for key, hist in sorted(hists.items()):
        family.add_metric(list(key), hist.cumulative(), hist.total)
    return family


def _gauge(name: str, doc: str, labels: list[str], values: Iterable[tuple[list[str], float]]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for label_values, value in values:
        family.add_metric(label_values, value)
    return family


BREAKER_STATES = ("closed", "half_open", "open")


SHARD_STATES = ("starting", "running", "restarting", "failed", "stopped")


def _waits(name: str, doc: str, label: str, waits: Iterable[tuple[str, dict]]) -> SummaryMetricFamily:
    """Served requests' waits in the queue, as a summary (count and sum, no quantiles), so that
    PromQL can take a rate of them: `rate(_sum) / rate(_count)`."""
    family = SummaryMetricFamily(name, doc, labels=[label])
    for value, waited in waits:
        count = int(waited.get("count", 0))
        family.add_metric([value], count, count * float(waited.get("mean_ms", 0.0)) / 1000)
    return family


def _queue_waits(queue: QueueStatus) -> list:
    apps = sorted(queue.by_application.items())
    return [
        _waits("sollol_queue_wait_seconds", "Wait in the queue of served requests, per priority", "priority",
               sorted(queue.waited_by_priority.items(), key=lambda item: int(item[0]))),
        _waits("sollol_application_queue_wait_seconds", "Wait in the queue of served requests, per application",
               "application", apps),
        _gauge("sollol_application_waiting", "Requests of the application waiting in the queue", ["application"],
               ([[app], float(a["waiting"])] for app, a in apps)),
        _gauge("sollol_application_share", "The application's weight in fair share at equal priority",
               ["application"], ([[app], float(a["share"])] for app, a in apps)),
        _counter("sollol_application_queue_refused", "Requests refused (429) over the application's part of the queue",
                 ["application"], {(app,): a["refused"] for app, a in apps}),
    ]


def families(book: RequestMetrics, nodes: list[NodeStatus], queue: QueueStatus, shards: list[dict], cache: dict,
             batch: dict, apps: ApplicationCounters | None = None,
             alerts: Iterable[tuple[str, str, str, float]] = ()) -> list:
    """Every metric family: the request book, the applications' counters, and gauges from
    `Router.nodes()`, `Router.queue_stats()`, the shard groups' status, the response cache's
    size, the batch jobs' totals and the gateway's alerts (`AlertTracker.gauges()`)."""
    apps = apps or ApplicationCounters()
    out = [
        _counter("sollol_requests", "Requests answered, by endpoint, model, node and HTTP status",
                 ["endpoint", "model", "node", "status"], book.requests),
        _counter("sollol_application_requests", "Requests answered, by application, node, model and HTTP status",
                 ["application", "node", "model", "status"], apps.requests),
        _counter("sollol_application_tokens", "Tokens of answered requests, by application and direction (in/out)",
                 ["application", "direction"], apps.tokens),
        _histogram("sollol_request_latency_seconds", "Time to the full answer (non-streamed) or the stream's end",
                   book.latency),
        _histogram("sollol_time_to_first_token_seconds", "Time to the first chunk of a stream", book.ttft),
        _counter("sollol_retries", "Attempts that failed on a node and moved the request on", ["node"], book.retries),
        _counter("sollol_hedges", "Hedged copies sent to a second node", ["node"], book.hedges),
        _counter("sollol_cache_hits", "Requests answered from the response cache (no node called)",
                 ["endpoint", "model"], book.cache_hits),
        _counter("sollol_cache_misses", "Cacheable requests that went to a node", ["endpoint", "model"],
                 book.cache_misses),
        _gauge("sollol_cache_entries", "Answers held by the response cache", [],
               [([], float(cache.get("entries", 0)))]),
        _gauge("sollol_cache_bytes", "Bytes of JSON held by the response cache", [], [([], float(cache.get("bytes", 0)))]),
        _gauge("sollol_batch_jobs", "Batch jobs kept, by state", ["state"],
               ([[state], float(n)] for state, n in sorted(batch.get("jobs", {}).items()))),
        _gauge("sollol_batch_items_pending", "Items still to do in unfinished batch jobs", [],
               [([], float(batch.get("pending_items", 0)))]),
        _gauge("sollol_node_healthy", "1 if the node answers its health probe", ["node"],
               ([[n.name], float(n.healthy)] for n in nodes)),
        _gauge("sollol_node_in_flight", "Requests in flight on the node (all routers)", ["node"],
               ([[n.name], float(n.in_flight)] for n in nodes)),
        _gauge("sollol_node_slots", "Parallel requests the node serves", ["node"],
               ([[n.name], float(n.slots)] for n in nodes)),
        _gauge("sollol_node_breaker", "Circuit breaker state (1 for the current one)", ["node", "state"],
               ([[n.name, s], float(n.breaker == s)] for n in nodes for s in BREAKER_STATES)),
        _gauge("sollol_node_vram_free_bytes", "Free VRAM on the node's host (nodes with GPU readings)", ["node"],
               ([[n.name], float(n.telemetry["vram_free_mb"]) * 2**20] for n in nodes
                if (n.telemetry or {}).get("vram_free_mb") is not None)),
        _gauge("sollol_node_decode_tokens_per_second", "Learned decode speed per node and model", ["node", "model"],
               ([[n.name, model], tps] for n in nodes for model, tps in sorted(n.decode_tps.items()))),
        _counter("sollol_model_loads", "Models loaded on a node (seen in its /api/ps or its answers)",
                 ["node", "model"], {(n.name, m): k for n in nodes for m, k in n.model_loads.items()}),
        _counter("sollol_model_evictions", "Models gone from a node's memory (evicted for another, or expired)",
                 ["node", "model"], {(n.name, m): k for n in nodes for m, k in n.model_evictions.items()}),
        _gauge("sollol_node_max_loaded", "Models the node holds at once (configured, learned or Ollama's default)",
               ["node"], ([[n.name], float(n.max_loaded)] for n in nodes if n.max_loaded is not None)),
        _gauge("sollol_queue_waiting", "Requests waiting in the router's priority queue", [],
               [([], float(queue.waiting))]),
        _gauge("sollol_queue_wait_seconds_mean", "Mean wait in the queue of served requests, per priority",
               ["priority"], ([[p], float(w.get("mean_ms", 0.0)) / 1000]
                              for p, w in sorted(queue.waited_by_priority.items()))),
        _gauge("sollol_queue_wait_seconds_max", "Longest wait in the queue of a served request, per priority",
               ["priority"], ([[p], float(w.get("max_ms", 0.0)) / 1000]
                              for p, w in sorted(queue.waited_by_priority.items()))),
        *_queue_waits(queue),
        _gauge("sollol_shard_group_state", "Shard group state (1 for the current one)", ["model", "state"],
               ([[g["model"], s], float(g["state"] == s)] for g in shards for s in SHARD_STATES)),
        _gauge("sollol_shard_groups", "Shard groups in each state (0 too, so an alert rule always has a series)",
               ["state"], ([[s], float(sum(g["state"] == s for g in shards))] for s in SHARD_STATES)),
        _gauge("sollol_alerts_active", "1 while the gateway's alert of that kind on that subject is active "
               "(GET /api/alerts has its message)", ["kind", "subject", "severity"],
               ([[kind, subject, severity], value] for kind, subject, severity, value in alerts)),
    ]
    return out


class _Families:
    def __init__(self, items: list):
        self.items = items

    def collect(self):
        return iter(self.items)


def render(book: RequestMetrics, nodes: list[NodeStatus], queue: QueueStatus, shards: list[dict], cache: dict,
           batch: dict, apps: ApplicationCounters | None = None,
           alerts: Iterable[tuple[str, str, str, float]] = ()) -> bytes:
    """The Prometheus text exposition of everything."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families(book, nodes, queue, shards, cache, batch, apps, alerts)))
    return generate_latest(registry)
