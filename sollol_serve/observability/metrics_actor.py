"""The named actor that merges every Ingress replica's request metrics, routing decisions and
applications' usage, and keeps the Router's periodic samples of the cluster and the alerts
judged from both: one book for the whole app, so any replica's `/metrics`, dashboard and API
show the same."""

from __future__ import annotations

import time

import ray
from ray.actor import ActorHandle

from sollol_serve.config import AlertsConfig
from sollol_serve.names import named_actor
from sollol_serve.observability.activity import Activity
from sollol_serve.observability.alerts import AlertTracker, outcomes_of
from sollol_serve.observability.applications import ApplicationCounters, Applications, Registration, Use
from sollol_serve.observability.metrics import RequestMetrics
from sollol_serve.observability.timeline import Timeline
from sollol_serve.protocol import NodeStatus, QueueStatus


@ray.remote(num_cpus=0, max_restarts=-1)
class MetricsActor:
    def __init__(self) -> None:
        self.book = RequestMetrics()
        self.activity = Activity()
        self.applications = Applications()
        self.timeline = Timeline()
        self.alerts = AlertTracker()

    def configure(self, alerts: dict) -> None:
        """The gateway's alert thresholds (again, on a redeploy: the actor outlives it); alerts
        open now and what was recorded stay."""
        self.alerts.config = AlertsConfig.model_validate(alerts)

    def add(self, delta: RequestMetrics, decisions: list[dict], uses: list[Use]) -> None:
        self.book.merge(delta)
        self.activity.add(decisions)
        self.applications.add(uses)
        for use in uses:
            self.timeline.add_use(use)
        for item in decisions:
            self.timeline.add_decision(item)
            self.alerts.record(outcomes_of(item))

    def observe(self, router: str, nodes: list[NodeStatus], queue: QueueStatus, shards: list[dict],
                deaths: dict[str, list[float]] | None = None) -> None:
        """A Router's periodic sample of the nodes, its queue, the shard groups, and the
        deaths it saw of the gateway's own processes."""
        now = time.time()
        self.timeline.add_sample(now, router, nodes, queue)
        self.alerts.observe(now, nodes, queue, shards, deaths)

    def snapshot(self) -> RequestMetrics:
        return self.book

    def decisions(self, limit: int) -> list[dict]:
        return self.activity.recent(limit)

    def applications_json(self) -> dict:
        return self.applications.as_json()

    def application_counters(self) -> ApplicationCounters:
        return self.applications.counters()

    def register(self, app_id: str, registration: Registration) -> bool:
        return self.applications.register(app_id, registration)

    def heartbeat(self, app_id: str, metadata: dict | None) -> bool:
        return self.applications.heartbeat(app_id, time.time(), metadata)

    def deregister(self, app_id: str) -> bool:
        return self.applications.deregister(app_id)

    def alerts_json(self) -> dict:
        return self.alerts.as_json()

    def alert_gauges(self) -> list[tuple[str, str, str, float]]:
        return self.alerts.gauges()

    def timeline_since(self, since: float) -> dict:
        return self.timeline.as_json(since)


def metrics_actor(state_actor_name: str) -> ActorHandle:
    return named_actor(MetricsActor, f"{state_actor_name}_metrics")
