"""The router's brain, without Ray: ranking, slot reservation, the wait queue, learning.

The Router deployment owns one `RoutingCore` and does the I/O around it. Everything here
is synchronous and runs on the router's event loop, so a decision and the reservation of
the chosen slot happen together and concurrent requests never herd onto one node.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass

from sollol_serve.analysis.profile import RequestProfile
from sollol_serve.config import RoutingConfig
from sollol_serve.protocol import ModelNotFound, NoNodeAvailable
from sollol_serve.routing.admission import PriorityQueue, retry_after
from sollol_serve.routing.learning import Observation, PerfBook
from sollol_serve.routing.policy import Chooser, Scored, candidates, model_known, model_loaded, score_least_busy, \
    score_predicted
from sollol_serve.routing.predict import Priors, Prediction, predict
from sollol_serve.routing.state import NodeView, normalize_model

# Without configured or reported slots, allow one request more than the node has been seen
# to serve without queueing, so the router finds out how far it goes (up to this many).
MAX_PROBED_SLOTS = 16
# Remaining time assumed for a request another router replica has in flight on a node.
ELSEWHERE_REMAINING_S = 1.0
# A request past its predicted end still holds its slot for at least this long.
MIN_REMAINING_S = 0.05


@dataclass(slots=True)
class Flight:
    """A request this router has in flight on a node."""

    node: str
    model: str
    started: float
    predicted_end: float
    concurrent: int


class RoutingCore:
    def __init__(self, config: RoutingConfig, seed: int | None = None):
        self.config = config
        self.chooser = Chooser(config.strategy, seed)
        self.snapshot: dict[str, NodeView] = {}
        self.book = PerfBook()
        self.pending: list[Observation] = []  # learned here, not yet sent to the state actor
        self.flights: dict[str, dict[int, Flight]] = defaultdict(dict)
        self.queue: PriorityQueue = PriorityQueue(config.queue_max, config.aging_s)
        self._ids = itertools.count()

    # -- views -------------------------------------------------------------------------
    @property
    def strategy(self) -> str:
        return self.config.strategy

    def in_flight_counts(self) -> dict[str, int]:
        return {node: len(f) for node, f in self.flights.items() if f}

    def busy(self, view: NodeView) -> int:
        return len(self.flights.get(view.name, ())) + view.in_flight_elsewhere

    def slots(self, view: NodeView) -> int:
        if view.slots_known:
            return view.slots
        return min(self.book.learned_slots(view.name) + 1, MAX_PROBED_SLOTS)

    def remaining(self, view: NodeView, now: float) -> list[float]:
        own = [max(f.predicted_end - now, MIN_REMAINING_S) for f in self.flights.get(view.name, {}).values()]
        return own + [ELSEWHERE_REMAINING_S] * view.in_flight_elsewhere

    def resident(self, view: NodeView, model: str) -> bool:
        """Loaded on the node, or a request of ours is already loading it there."""
        if model_loaded(view, model):
            return True
        wanted = normalize_model(model)
        return any(normalize_model(f.model) == wanted for f in self.flights.get(view.name, {}).values())

    # -- ranking -----------------------------------------------------------------------
    def predict(self, view: NodeView, profile: RequestProfile, priors: Priors, now: float) -> Prediction:
        perf = self.book.perf(view.name, normalize_model(profile.model))
        return predict(view.name, self.slots(view), profile, perf, priors, self.remaining(view, now),
                       self.resident(view, profile.model))

    def rank(self, profile: RequestProfile, exclude: set[str], now: float) -> list[Scored]:
        """Every candidate, best first. Raises when no node can take the model."""
        model = profile.model
        nodes = candidates(self.snapshot, model, exclude)
        if not nodes:
            if not model_known(self.snapshot, model):
                raise ModelNotFound(f"model '{model}' not found on any node")
            having = sorted(v.name for v in self.snapshot.values() if v.has_model(model))
            raise NoNodeAvailable(f"no healthy node can serve model '{model}' (nodes with it: {', '.join(having)})")
        priors = Priors.from_book(self.book, normalize_model(model))
        scored = []
        for view in nodes:
            prediction = self.predict(view, profile, priors, now)
            if self.strategy == "intelligent":
                scored.append(score_predicted(view, self.busy(view), self.slots(view), prediction))
            else:
                item = score_least_busy(view, self.busy(view), self.slots(view), self.resident(view, model))
                item.prediction = prediction
                scored.append(item)
        return self.chooser.rank(scored)

    def pick(self, ranked: list[Scored]) -> Scored | None:
        """The candidate to send to now, or None if the request should wait for a slot.
        `intelligent` waits for its best node rather than take a free but slower one (the
        wait is part of the prediction); the other strategies take their first free node."""
        if self.strategy == "intelligent":
            return ranked[0] if ranked[0].free else None
        return next((s for s in ranked if s.free), None)

    # -- flights -----------------------------------------------------------------------
    def start(self, choice: Scored, profile: RequestProfile, now: float) -> int:
        flight_id = next(self._ids)
        predicted = choice.prediction.total_s if choice.prediction else 0.0
        self.flights[choice.node.name][flight_id] = Flight(
            choice.node.name, profile.model, now, now + predicted, self.busy(choice.node) + 1)
        return flight_id

    def finish(self, flight_id: int, node: str) -> Flight | None:
        return self.flights.get(node, {}).pop(flight_id, None)

    def learn(self, observation: Observation) -> None:
        self.book.observe(observation)
        self.pending.append(observation)

    def take_pending(self) -> list[Observation]:
        pending, self.pending = self.pending, []
        return pending

    def adopt(self, snapshot: dict[str, NodeView], book: PerfBook) -> None:
        """Take the state actor's view; it already includes what this router sent."""
        self.snapshot = snapshot
        self.book = book

    def retry_after_s(self) -> int:
        nodes = [v for v in self.snapshot.values() if v.healthy]
        total_slots = sum(self.slots(v) for v in nodes)
        services = [p.decode_tps.mean and 128 / p.decode_tps.mean for p in self.book.models.values()
                    if p.decode_tps.n]
        mean_service = sum(services) / len(services) if services else 5.0
        return retry_after(len(self.queue), mean_service, total_slots)
