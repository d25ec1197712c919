"""The named actor that holds the one `ClusterState` of the app.

Detached and fetched by name, so it outlives any Router, Ingress or worker replica that
restarts; every replica gets it with `state_actor(config)`. What was learned outlives the
actor too (and Ray): it lives on the head node, restores its book from the history file
there when it starts (`history.History`) and saves it as it changes.

The actor itself may die (an OOM kill) and Ray restarts it empty but for that file. Each
start is a new `incarnation`, returned by the calls workers and routers make regularly: a
worker that sees a new one registers its node again, and a router hands back what it held
(the newest learned book, the drains) and asks every worker it knows to re-register
(`Router._rebuild_state`), so the nodes are back within one router sync.
"""

from __future__ import annotations

import uuid

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
        self.incarnation = uuid.uuid4().hex
        self.restored = False  # a router has handed back what the previous incarnation held

    def __ray_shutdown__(self) -> None:
        """A graceful exit (not `ray.kill`, nor a crash: the periodic saves cover those)."""
        self.history.flush(self.state.book)

    def register(self, name: str, url: str, slots: int | None, health: HealthConfig) -> str:
        """Returns this incarnation: the worker re-registers when a report shows another."""
        policy = BreakerPolicy(health.breaker_failures, health.breaker_open_s, health.breaker_max_open_s)
        self.state.register(name, url, slots, policy)
        return self.incarnation

    def restore(self, incarnation: str, book: PerfBook, draining: list[str]) -> bool:
        """What a router held from the incarnation before this one: its book (newer than the
        history file, saved at most every few seconds) and the nodes being drained. The first
        router's is taken; the others' are the same picture, a sync apart."""
        if incarnation != self.incarnation or self.restored:
            return False
        self.restored = True
        self.state.book = book
        self.state.draining.update(draining)
        return True

    def drain(self, name: str) -> None:
        self.state.drain(name)

    def undrain(self, name: str) -> None:
        self.state.undrain(name)

    def remove(self, name: str) -> None:
        self.state.remove(name)

    def in_flight_total(self, name: str) -> int:
        return self.state.in_flight_total(name)

    def report(self, report: NodeReport) -> str:
        self.state.report(report)
        return self.incarnation

    def sync(self, router_id: str, in_flight: dict[str, int], observations: list[Observation],
             every_s: float) -> tuple[dict[str, NodeView], PerfBook, str]:
        views, book = self.state.sync(router_id, in_flight, observations, every_s)
        self.history.note(self.state.book, changed=bool(observations))
        return views, book, self.incarnation

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
