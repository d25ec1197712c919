"""The named actor that merges every Ingress replica's request metrics and routing decisions."""

from __future__ import annotations

import ray
from ray.actor import ActorHandle

from sollol_serve.names import named_actor
from sollol_serve.observability.activity import Activity
from sollol_serve.observability.metrics import RequestMetrics


@ray.remote(num_cpus=0, max_restarts=-1)
class MetricsActor:
    def __init__(self) -> None:
        self.book = RequestMetrics()
        self.activity = Activity()

    def add(self, delta: RequestMetrics, decisions: list[dict]) -> None:
        self.book.merge(delta)
        self.activity.add(decisions)

    def snapshot(self) -> RequestMetrics:
        return self.book

    def decisions(self, limit: int) -> list[dict]:
        return self.activity.recent(limit)

    def latency(self) -> list[dict]:
        return self.activity.latency.as_list()


def metrics_actor(state_actor_name: str) -> ActorHandle:
    return named_actor(MetricsActor, f"{state_actor_name}_metrics")
