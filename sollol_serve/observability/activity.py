"""The dashboard's log of recent routing decisions (the charts' history is `timeline`).

Plain data, filled by the Ingress replicas (through the metrics actor) from the
`_sollol_routing` of every answer, so that every replica's dashboard shows the same.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

MAX_DECISIONS = 200


def decision(model: str, endpoint: str, status: int, latency_s: float, routing: dict, at: float | None = None) -> dict:
    """The dashboard's summary of one routed request."""
    return {
        "at": at if at is not None else time.time(), "request_id": routing.get("request_id"), "model": model,
        "endpoint": endpoint, "status": status,
        "latency_ms": round(latency_s * 1000, 1), "node": routing.get("node"), "strategy": routing.get("strategy"),
        "priority": routing.get("priority"), "task_type": routing.get("task_type"),
        "reasoning": routing.get("reasoning"), "queue_wait_ms": routing.get("queue_wait_ms"),
        "attempts": len(routing.get("attempts") or ()),
        "tries": [{"node": a.get("node"), "ok": a.get("ok"), "hedge": bool(a.get("hedge"))}
                  for a in routing.get("attempts") or ()],
        "candidates": [{"node": c.get("node"), "predicted_s": c.get("predicted_s"), "in_flight": c.get("in_flight"),
                        "slots": c.get("slots")} for c in routing.get("candidates") or ()],
    }


@dataclass
class Activity:
    decisions: deque = field(default_factory=lambda: deque(maxlen=MAX_DECISIONS))

    def add(self, decisions: list[dict]) -> None:
        self.decisions.extend(sorted(decisions, key=lambda d: d["at"]))

    def recent(self, limit: int = 50) -> list[dict]:
        return list(self.decisions)[-limit:][::-1]
