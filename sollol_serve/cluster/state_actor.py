"""The named actor that holds the one `ClusterState` of the app.

Detached and fetched by name, so it outlives any Router, Ingress or worker replica that
restarts; every replica gets it with `state_actor(config)`. What was learned outlives the
actor too (and Ray): it lives on the head node, restores its book from the history file
there when it starts (`history.History`) and saves it as it changes.
"""

from __future__ import annotations

import ray
from ray.actor import ActorHandle

from sollol_serve.cluster.breaker import BreakerPolicy
from sollol_serve.cluster.history import History, HistoryStore, history_file
from sollol_serve.cluster.learning import Observation, PerfBook
from sollol_serve.cluster.state import ClusterState, NodeView
from sollol_serve.config import BatchConfig, GatewayConfig, HealthConfig
from sollol_serve.names import named_actor
from sollol_serve.protocol import NodeReport


@ray.remote(num_cpus=0, max_restarts=-1)
class NodeStateActor:
    def __init__(self, name: str, batch: BatchConfig) -> None:
        # The path is resolved here, on the head node, as the batch jobs' file is.
        self.history = History(HistoryStore(history_file(name, batch)))
        self.state = ClusterState(book=self.history.restore())

    def __ray_shutdown__(self) -> None:
        """A graceful exit (not `ray.kill`, nor a crash: the periodic saves cover those)."""
        self.history.flush(self.state.book)

    def register(self, name: str, url: str, slots: int | None, health: HealthConfig) -> None:
        policy = BreakerPolicy(health.breaker_failures, health.breaker_open_s, health.breaker_max_open_s)
        self.state.register(name, url, slots, policy)

    def drain(self, name: str) -> None:
        self.state.drain(name)

    def undrain(self, name: str) -> None:
        self.state.undrain(name)

    def remove(self, name: str) -> None:
        self.state.remove(name)

    def in_flight_total(self, name: str) -> int:
        return self.state.in_flight_total(name)

    def report(self, report: NodeReport) -> None:
        self.state.report(report)

    def sync(self, router_id: str, in_flight: dict[str, int], observations: list[Observation],
             every_s: float) -> tuple[dict[str, NodeView], PerfBook]:
        synced = self.state.sync(router_id, in_flight, observations, every_s)
        self.history.note(self.state.book, changed=bool(observations))
        return synced

    def output_lengths(self) -> dict[tuple[str, str], int]:
        return {key: round(e.mean) for key, e in self.state.book.output_tokens.items() if e.n}

    def snapshot(self) -> dict[str, NodeView]:
        return self.state.snapshot()

    def reports(self) -> dict[str, NodeReport]:
        return dict(self.state.reports)

    def tags(self) -> list[dict]:
        return self.state.tags()

    def forget_router(self, router_id: str) -> None:
        self.state.forget_router(router_id)


def state_actor(config: GatewayConfig) -> ActorHandle:
    """Every caller passes the same arguments: whichever replica comes first creates it.
    On the head node, whose disk holds the history (the other hosts may come and go)."""
    name = config.state_actor_name
    return named_actor(NodeStateActor, name, name, config.batch, resources={"node:__internal_head__": 0.001})
