"""What the dashboard shows over time: recent routing decisions and latency per interval.

Plain data, filled by the Ingress replicas (through the metrics actor) from the
`_sollol_routing` of every answer, so that every replica's dashboard shows the same.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

MAX_DECISIONS = 200
INTERVAL_S = 10.0
MAX_INTERVALS = 90  # 15 minutes of latency history


def decision(model: str, endpoint: str, status: int, latency_s: float, routing: dict, at: float | None = None) -> dict:
    """The dashboard's summary of one routed request."""
    return {
        "at": at if at is not None else time.time(), "model": model, "endpoint": endpoint, "status": status,
        "latency_ms": round(latency_s * 1000, 1), "node": routing.get("node"), "strategy": routing.get("strategy"),
        "priority": routing.get("priority"), "task_type": routing.get("task_type"),
        "reasoning": routing.get("reasoning"), "queue_wait_ms": routing.get("queue_wait_ms"),
        "attempts": len(routing.get("attempts") or ()),
        "candidates": [{"node": c.get("node"), "predicted_s": c.get("predicted_s"), "in_flight": c.get("in_flight"),
                        "slots": c.get("slots")} for c in routing.get("candidates") or ()],
    }


@dataclass
class LatencySeries:
    """Requests and their mean latency per `INTERVAL_S`, for the last `MAX_INTERVALS`."""

    points: deque = field(default_factory=lambda: deque(maxlen=MAX_INTERVALS))  # [start, count, total_s]

    def add(self, at: float, latency_s: float) -> None:
        start = at - at % INTERVAL_S
        if self.points and self.points[-1][0] == start:
            self.points[-1][1] += 1
            self.points[-1][2] += latency_s
        elif not self.points or self.points[-1][0] < start:
            self.points.append([start, 1, latency_s])

    def as_list(self) -> list[dict]:
        return [{"at": start, "requests": n, "mean_ms": round(total / n * 1000, 1)} for start, n, total in self.points]


@dataclass
class Activity:
    decisions: deque = field(default_factory=lambda: deque(maxlen=MAX_DECISIONS))
    latency: LatencySeries = field(default_factory=LatencySeries)

    def add(self, decisions: list[dict]) -> None:
        for item in sorted(decisions, key=lambda d: d["at"]):
            self.decisions.append(item)
            self.latency.add(item["at"], item["latency_ms"] / 1000)

    def recent(self, limit: int = 50) -> list[dict]:
        return list(self.decisions)[-limit:][::-1]
