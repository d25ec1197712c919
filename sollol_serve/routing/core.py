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
from sollol_serve.protocol import GatewayError, ModelNotFound, NoNodeAvailable
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
# A model this router used on a node this recently is taken as still loaded there (Ollama
# keeps a model 5 minutes by default; /api/ps is only polled now and then).
RECENT_USE_S = 240.0


def unavailable_reason(view: NodeView, exclude: set[str]) -> str:
    if view.name in exclude:
        return "already failed this request"
    if not view.healthy:
        return f"down ({view.error})" if view.error else "down"
    if view.draining:
        return "draining"
    return "circuit breaker open after repeated failures"


@dataclass(slots=True)
class Flight:
    """A request this router has in flight on a node."""

    node: str
    model: str
    started: float
    predicted_end: float
    concurrent: int


@dataclass(slots=True)
class Grant:
    """A routing decision with its slot reserved."""

    ranked: list[Scored]
    choice: Scored
    flight_id: int


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
        self.last_used: dict[tuple[str, str], float] = {}  # (node, model) -> monotonic time
        # Per node: predicted seconds of work that queued requests plan to put there, so that
        # one waiter's plan is part of the next one's prediction (filled during `plan`).
        self._planned: dict[str, list[float]] = {}

    # -- views -------------------------------------------------------------------------
    @property
    def strategy(self) -> str:
        return self.config.strategy

    def in_flight_counts(self) -> dict[str, int]:
        return {node: len(f) for node, f in self.flights.items() if f}

    def busy(self, view: NodeView) -> int:
        return len(self.flights.get(view.name, ())) + view.in_flight_elsewhere

    def slots(self, view: NodeView) -> int:
        if view.breaker == "half_open":  # one trial request at a time decides the breaker
            return 1
        if view.slots_known:
            return view.slots
        return min(self.book.learned_slots(view.name) + 1, MAX_PROBED_SLOTS)

    def remaining(self, view: NodeView, now: float) -> list[float]:
        own = [max(f.predicted_end - now, MIN_REMAINING_S) for f in self.flights.get(view.name, {}).values()]
        return own + [ELSEWHERE_REMAINING_S] * view.in_flight_elsewhere + self._planned.get(view.name, [])

    def resident(self, view: NodeView, model: str, now: float) -> bool:
        """Loaded on the node, in use there by one of our requests, or used there recently."""
        if model_loaded(view, model):
            return True
        wanted = normalize_model(model)
        if any(normalize_model(f.model) == wanted for f in self.flights.get(view.name, {}).values()):
            return True
        used = self.last_used.get((view.name, wanted))
        return used is not None and now - used < RECENT_USE_S

    def fits(self, view: NodeView, model: str, now: float) -> bool:
        """Whether the model can go to the node: resident, or small enough for its free VRAM.
        A node without GPU readings (CPU-only, or not measured) is not judged."""
        if view.vram_free_mb is None or self.resident(view, model, now):
            return True
        size_mb = view.model_sizes.get(normalize_model(model), 0) / 2**20
        return size_mb * self.config.vram_headroom <= view.vram_free_mb

    # -- ranking -----------------------------------------------------------------------
    def predict(self, view: NodeView, profile: RequestProfile, priors: Priors, now: float) -> Prediction:
        perf = self.book.perf(view.name, normalize_model(profile.model))
        return predict(view.name, self.slots(view), profile, perf, priors, self.remaining(view, now),
                       self.resident(view, profile.model, now))

    def rank(self, profile: RequestProfile, exclude: set[str], now: float) -> list[Scored]:
        """Every candidate, best first. Raises when no node can take the model."""
        model = profile.model
        nodes = candidates(self.snapshot, model, exclude)
        if not nodes:
            if not model_known(self.snapshot, model):
                raise ModelNotFound(f"model '{model}' not found on any node")
            having = sorted((v for v in self.snapshot.values() if v.has_model(model)), key=lambda v: v.name)
            why = "; ".join(f"{v.name}: {unavailable_reason(v, exclude)}" for v in having)
            raise NoNodeAvailable(f"no node can serve model '{model}' now ({why})")
        nodes = [v for v in nodes if self.fits(v, model, now)] or nodes  # else one may evict an idle model
        priors = Priors.from_book(self.book, normalize_model(model))
        scored = []
        for view in nodes:
            prediction = self.predict(view, profile, priors, now)
            if self.strategy == "intelligent":
                scored.append(score_predicted(view, self.busy(view), self.slots(view), prediction))
            else:
                item = score_least_busy(view, self.busy(view), self.slots(view), self.resident(view, model, now))
                item.prediction = prediction
                scored.append(item)
        return self.chooser.rank(scored)

    def pick(self, ranked: list[Scored], priority: float = 10.0) -> Scored | None:
        """The candidate to send to now, or None if the request should wait for a slot.
        `intelligent` waits for its best node rather than take a free but slower one (the
        wait is part of the prediction), except to measure a node it has no numbers for yet;
        the other strategies take their first free node. A node whose breaker is half-open
        gets the request as its trial (one at a time), else it would never be closed again.
        Background work (`priority`, aged, at most `background_priority`) waits while only
        the reserved slots are free."""
        trial = next((s for s in ranked if s.free and s.node.breaker == "half_open"), None)
        if trial is not None:
            return trial
        if priority <= self.config.background_priority and not self.spare_for_background(ranked):
            return None
        if self.strategy != "intelligent":
            return next((s for s in ranked if s.free), None)
        if ranked[0].free:
            return ranked[0]
        return next((s for s in ranked if s.free and s.prediction and s.prediction.factors.get("unmeasured")), None)

    def spare_for_background(self, ranked: list[Scored]) -> bool:
        """More slots free than the reserve (of the nodes that could serve the request)."""
        total = sum(s.slots for s in ranked)
        free = sum(max(s.slots - s.busy, 0) for s in ranked)
        return free > min(self.config.reserved_slots, total - 1)

    def grant_now(self, profile: RequestProfile, exclude: set[str], now: float) -> Grant | None:
        """A slot on the best node that has one free right now, or None (never waits)."""
        try:
            ranked = self.rank(profile, exclude, now)
        except GatewayError:
            return None
        choice = next((s for s in ranked if s.free), None)
        return Grant(ranked, choice, self.start(choice, profile, now)) if choice else None

    def plan(self, requests: list[tuple[RequestProfile, set[str], float]],
             now: float) -> list[Grant | GatewayError | None]:
        """Decide for queued requests (profile, nodes to avoid, priority with aging), given
        most urgent first: a Grant (slot reserved), an error, or None (keep waiting). A
        request that keeps waiting books its predicted work on the node it waits for, so the
        ones behind it see the longer wait there and may take another node instead."""
        decisions: list[Grant | GatewayError | None] = []
        self._planned = {}
        try:
            for profile, exclude, priority in requests:
                try:
                    ranked = self.rank(profile, exclude, now)
                except GatewayError as exc:
                    decisions.append(exc)
                    continue
                choice = self.pick(ranked, priority)
                if choice is None:
                    best = ranked[0]
                    booked = best.prediction.total_s if best.prediction else 0.0
                    self._planned.setdefault(best.node.name, []).append(booked)
                    decisions.append(None)
                else:
                    decisions.append(Grant(ranked, choice, self.start(choice, profile, now)))
        finally:
            self._planned = {}
        return decisions

    # -- flights -----------------------------------------------------------------------
    def start(self, choice: Scored, profile: RequestProfile, now: float) -> int:
        flight_id = next(self._ids)
        self.last_used[(choice.node.name, normalize_model(profile.model))] = now
        predicted = choice.prediction.total_s if choice.prediction else 0.0
        self.flights[choice.node.name][flight_id] = Flight(
            choice.node.name, profile.model, now, now + predicted, self.busy(choice.node) + 1)
        return flight_id

    def finish(self, flight_id: int, node: str, now: float) -> Flight | None:
        flight = self.flights.get(node, {}).pop(flight_id, None)
        if flight is not None:  # the model stays loaded for its keep-alive from now on
            self.last_used[(node, normalize_model(flight.model))] = now
        return flight

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
