"""Alerts for the people who run the cluster: a node down, its breaker open, its success rate
low or its answers far slower than the router predicted, requests waiting long in the queue,
no healthy node, a shard group failed.

Pure logic, fed by the metrics actor: the tries of every routed request (`record`), and the
Routers' periodic samples of the nodes, their queues and the shard groups (`observe`), which
is when alerts open and end. An alert opens the first time its condition holds (the window
and minimum counts already keep one bad request from raising it) and ends once it has been
clear for `clear_after_s`; a measured condition counts as clear only `hysteresis` inside its
threshold. Each alert is one occurrence: kind + subject + start, with its id.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from sollol_serve.config import AlertsConfig
from sollol_serve.protocol import NOT_PROBED, NodeStatus, QueueStatus

Kind = Literal["node_down", "no_healthy_node", "breaker_open", "low_success_rate", "high_latency", "queue_wait",
               "shard_group_failed", "process_restarting"]
Severity = Literal["critical", "warning"]
SEVERITY: dict[str, Severity] = {
    "node_down": "critical", "no_healthy_node": "critical", "shard_group_failed": "critical",
    "breaker_open": "warning", "low_success_rate": "warning", "high_latency": "warning", "queue_wait": "warning",
    "process_restarting": "warning",
}
CLUSTER = "cluster"  # the subject of cluster-wide alerts
MAX_OUTCOMES_PER_NODE = 10_000  # a bound on a window's memory at high request rates


@dataclass(frozen=True, slots=True)
class NodeOutcome:
    """One try of a request on a node: whether the node answered, and for an answer, the
    seconds it took against the seconds the router predicted when it chose the node."""

    at: float
    node: str
    ok: bool
    observed_s: float | None = None
    predicted_s: float | None = None


def outcomes_of(decision: dict) -> list[NodeOutcome]:
    """The tries of one routing decision (`activity.decision`). Hedged copies are not
    outcomes; only a request answered at its first try is timed (retries and backoff would
    count against the node that answered), without its wait in the router's queue, which the
    prediction leaves out."""
    at, tries = decision["at"], [t for t in decision.get("tries") or () if t.get("node")]
    out = [NodeOutcome(at, t["node"], bool(t["ok"])) for t in tries if not t.get("hedge") and t.get("ok") is not None]
    if len(tries) == 1 and len(out) == 1 and out[0].ok and decision.get("status") == 200:
        chosen = next((c for c in decision.get("candidates") or () if c.get("node") == out[0].node), None)
        predicted = chosen.get("predicted_s") if chosen else None
        if predicted:
            observed = max(0.0, (decision["latency_ms"] - (decision.get("queue_wait_ms") or 0.0)) / 1000)
            out[0] = NodeOutcome(at, out[0].node, True, observed, predicted)
    return out


@dataclass(slots=True)
class Alert:
    kind: Kind
    subject: str  # a node, a shard group's model, a priority, or `cluster`
    message: str
    value: float | None  # the measure that raised it, as it is now (None: a state, not a measure)
    threshold: float | None
    started_at: float
    ended_at: float | None = None
    clear_since: float | None = None  # when its condition was last seen clear, while active

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.subject}:{self.started_at:.3f}"

    @property
    def severity(self) -> Severity:
        return SEVERITY[self.kind]

    def as_json(self) -> dict:
        return {"id": self.id, "kind": self.kind, "severity": self.severity, "subject": self.subject,
                "message": self.message, "value": self.value, "threshold": self.threshold,
                "started_at": self.started_at, "ended_at": self.ended_at}


@dataclass(frozen=True, slots=True)
class Reading:
    """One condition on one subject, as observed now."""

    kind: Kind
    subject: str
    firing: bool  # the alert should open (or stay open)
    clear: bool  # the condition is over (with the hysteresis margin)
    value: float | None = None
    threshold: float | None = None
    message: str = ""


def _unprobed(node: NodeStatus) -> bool:
    """Not probed yet (a gateway starting, a node just added): neither up nor down, so no alert
    opens for it, nor for the cluster while one may be up; one that is open stays open."""
    return not node.healthy and node.error == NOT_PROBED


def _pct(x: float) -> str:
    return f"{x * 100:.0f}%"


@dataclass
class AlertTracker:
    config: AlertsConfig = field(default_factory=AlertsConfig)
    active: dict[tuple[str, str], Alert] = field(default_factory=dict)
    ended: deque = field(default_factory=deque)  # newest first
    outcomes: dict[str, deque] = field(default_factory=dict)  # node -> its NodeOutcomes, oldest first
    queues: dict[str, deque] = field(default_factory=dict)  # router -> (at, {priority: (count, total_s)})
    watched: set[tuple[str, str]] = field(default_factory=set)  # (kind, subject) checked at the last observe

    def record(self, outcomes: Iterable[NodeOutcome]) -> None:
        for outcome in outcomes:
            self.outcomes.setdefault(outcome.node, deque(maxlen=MAX_OUTCOMES_PER_NODE)).append(outcome)

    def observe(self, now: float, nodes: list[NodeStatus], queue: QueueStatus, shards: list[dict],
                deaths: dict[str, list[float]] | None = None) -> None:
        """A Router's sample: judge every condition, open and end alerts. `deaths`: when each
        of the gateway's processes it watches died (`RestartLog.times`)."""
        self._forget_before(now - self.config.window_s, {n.name for n in nodes})
        self._add_queue_sample(now, queue)
        readings = [*self._node_readings(nodes), self._cluster_reading(nodes), *self._queue_readings(),
                    *self._shard_readings(shards), *self._restart_readings(now, deaths or {})]
        self.watched = {(r.kind, r.subject) for r in readings}
        for reading in readings:
            self._apply(now, reading)
        for key, alert in list(self.active.items()):
            if key not in self.watched:  # its subject is gone (a node removed, a group deleted)
                self._apply(now, Reading(alert.kind, alert.subject, firing=False, clear=True))

    # -- the conditions ----------------------------------------------------------------
    def _node_readings(self, nodes: list[NodeStatus]) -> Iterable[Reading]:
        c = self.config
        for node in nodes:
            yield Reading("node_down", node.name, firing=not node.healthy and not _unprobed(node), clear=node.healthy,
                          message=f"Node {node.name} does not answer its health check"
                                  + (f": {node.error}" if node.error else ""))
            # Half-open opens it too: a breaker is open for seconds, and a sample may come only
            # once it waits for its trial request, still failed until that succeeds.
            yield Reading("breaker_open", node.name, firing=node.breaker != "closed", clear=node.breaker == "closed",
                          message=f"Node {node.name}'s circuit breaker is {node.breaker.replace('_', '-')}: it failed "
                                  "several requests in a row and gets no traffic until a trial request succeeds")
            tries = self.outcomes.get(node.name, ())
            ok = sum(1 for o in tries if o.ok)
            if len(tries) >= c.min_requests:
                rate = ok / len(tries)
                failing = 1 - c.success_rate_below
                yield Reading("low_success_rate", node.name, firing=rate < c.success_rate_below,
                              clear=1 - rate <= failing * (1 - c.hysteresis), value=round(rate, 4),
                              threshold=c.success_rate_below,
                              message=f"Node {node.name} answered {ok} of its last {len(tries)} tries "
                                      f"({_pct(rate)}) in {c.window_s:g} s, below {_pct(c.success_rate_below)}")
            else:
                yield Reading("low_success_rate", node.name, firing=False, clear=True)
            timed = [o for o in tries if o.observed_s is not None and o.predicted_s]
            if len(timed) >= c.min_latency_samples:
                observed, predicted = sum(o.observed_s for o in timed), sum(o.predicted_s for o in timed)
                ratio, excess = observed / predicted, (observed - predicted) / len(timed)
                slow = excess > c.min_latency_excess_s
                yield Reading("high_latency", node.name, firing=slow and ratio > c.latency_ratio_above,
                              clear=not slow or ratio <= c.latency_ratio_above * (1 - c.hysteresis),
                              value=round(ratio, 3), threshold=c.latency_ratio_above,
                              message=f"Node {node.name}'s last {len(timed)} answers took {ratio:.1f}x the "
                                      f"{predicted / len(timed):.2f} s the router predicted on average "
                                      f"({observed / len(timed):.2f} s), over {c.latency_ratio_above:g}x")
            else:
                yield Reading("high_latency", node.name, firing=False, clear=True)

    def _cluster_reading(self, nodes: list[NodeStatus]) -> Reading:
        healthy = sum(1 for n in nodes if n.healthy)
        undecided = any(_unprobed(n) for n in nodes)  # one of those may well be up
        return Reading("no_healthy_node", CLUSTER, firing=healthy == 0 and not undecided, clear=healthy > 0,
                       value=float(healthy),
                       threshold=1.0, message=f"No healthy node: none of the {len(nodes)} known answers its health "
                                              "check, so every request fails")

    def _queue_readings(self) -> Iterable[Reading]:
        """Mean wait, per priority, of the requests the queues served in the window: from the
        difference of each router's running count and total between its oldest and newest samples."""
        c = self.config
        served: dict[str, list[float]] = {}  # priority -> [count, total_s]
        for samples in self.queues.values():
            (_, first), (_, last) = samples[0], samples[-1]
            for priority, (count, total) in last.items():
                base_count, base_total = first.get(priority, (0, 0.0))
                sums = served.setdefault(priority, [0, 0.0])
                sums[0] += count - base_count
                sums[1] += total - base_total
        for priority, (count, total) in sorted(served.items(), key=lambda item: int(item[0])):
            if count <= 0:
                yield Reading("queue_wait", priority, firing=False, clear=True)
                continue
            mean = total / count
            yield Reading("queue_wait", priority, firing=mean > c.queue_wait_above_s,
                          clear=mean <= c.queue_wait_above_s * (1 - c.hysteresis), value=round(mean, 3),
                          threshold=c.queue_wait_above_s,
                          message=f"{count} requests of priority {priority} waited {mean:.1f} s on average in the "
                                  f"queue over the last {c.window_s:g} s, over {c.queue_wait_above_s:g} s: the "
                                  "cluster lacks capacity for them")

    def _shard_readings(self, shards: list[dict]) -> Iterable[Reading]:
        for group in shards:
            failed = group.get("state") == "failed"
            yield Reading("shard_group_failed", group["model"], firing=failed, clear=not failed,
                          message=f"The shard group of {group['model']} failed"
                                  + (f": {group['error']}" if group.get("error") else "")
                                  + "; it restarts on the next request for the model or on POST /api/shards")

    def _restart_readings(self, now: float, deaths: dict[str, list[float]]) -> Iterable[Reading]:
        c = self.config
        for process, times in deaths.items():
            recent = sum(1 for t in times if t >= now - c.restarts_window_s)
            yield Reading("process_restarting", process, firing=recent >= c.restarts_at_least,
                          clear=recent < c.restarts_at_least, value=float(recent), threshold=float(c.restarts_at_least),
                          message=f"The gateway's {process} died {recent} times in the last {c.restarts_window_s:g} s "
                                  "(Ray restarted it each time): look for an OOM kill or a crash in its log")

    # -- bookkeeping -------------------------------------------------------------------
    def _forget_before(self, since: float, nodes: set[str]) -> None:
        for name in list(self.outcomes):
            tries = self.outcomes[name]
            while tries and tries[0].at < since:
                tries.popleft()
            if not tries and name not in nodes:
                del self.outcomes[name]
        for router in list(self.queues):
            samples = self.queues[router]
            if samples[-1][0] < since:  # that router is gone (a replica stopped)
                del self.queues[router]
                continue
            while len(samples) > 1 and samples[1][0] <= since:  # keep one sample at the window's start
                samples.popleft()

    def _add_queue_sample(self, now: float, queue: QueueStatus) -> None:
        totals = {p: (int(w.get("count", 0)), w.get("count", 0) * w.get("mean_ms", 0.0) / 1000)
                  for p, w in queue.waited_by_priority.items()}
        samples = self.queues.setdefault(queue.router, deque())
        if samples and any(totals.get(p, (0, 0.0))[0] < count for p, (count, _) in samples[-1][1].items()):
            samples.clear()  # counts went down: the router restarted, its totals start over
        samples.append((now, totals))

    def _apply(self, now: float, reading: Reading) -> None:
        key = (reading.kind, reading.subject)
        alert = self.active.get(key)
        if alert is None:
            if reading.firing:
                self.active[key] = Alert(reading.kind, reading.subject, reading.message, reading.value,
                                         reading.threshold, started_at=now)
            return
        if reading.message and (reading.value is not None or not reading.clear):
            # a fresh measure, or the state still bad (no data, or a state now fine, keeps the last words)
            alert.message, alert.value = reading.message, reading.value
        if not reading.clear:
            alert.clear_since = None
            return
        alert.clear_since = alert.clear_since if alert.clear_since is not None else now
        if now - alert.clear_since >= self.config.clear_after_s:
            alert.ended_at = now
            del self.active[key]
            self.ended.appendleft(alert)
            while len(self.ended) > self.config.recent:
                self.ended.pop()

    # -- views -------------------------------------------------------------------------
    def as_json(self) -> dict:
        """Active alerts (critical first, then oldest first) and recently ended ones (newest first)."""
        active = sorted(self.active.values(), key=lambda a: (a.severity != "critical", a.started_at))
        return {"active": [a.as_json() for a in active], "recent": [a.as_json() for a in self.ended]}

    def gauges(self) -> list[tuple[str, str, str, float]]:
        """(kind, subject, severity, 1 if active else 0) for every subject watched, so a chart
        shows each alert's start and end, and an active one whose subject is gone."""
        keys = set(self.watched) | set(self.active)
        return [(kind, subject, SEVERITY[kind], float((kind, subject) in self.active))
                for kind, subject in sorted(keys)]
