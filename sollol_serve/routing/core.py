"""The router's brain, without Ray: ranking, slot reservation, the wait queue, learning.

The Router deployment owns one `RoutingCore` and does the I/O around it. Everything here
is synchronous and runs on the router's event loop, so a decision and the reservation of
the chosen slot happen together and concurrent requests never herd onto one node.
"""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from sollol_serve.analysis.profile import RequestProfile
from sollol_serve.cluster.learning import Observation, PerfBook
from sollol_serve.cluster.state import NodeView
from sollol_serve.config import RoutingConfig
from sollol_serve.names import normalize_model
from sollol_serve.nodes.context import reloads
from sollol_serve.protocol import GatewayError, ModelNotFound, NoNodeAvailable
from sollol_serve.routing.admission import PriorityQueue, retry_after
from sollol_serve.routing.policy import (
    Chooser,
    Scored,
    candidates,
    model_known,
    score_least_busy,
    score_predicted,
)
from sollol_serve.routing.predict import Prediction, Priors, predict
from sollol_serve.routing.residency import ColdCost, Residency

# Remaining time assumed for a request another router replica has in flight on a node.
ELSEWHERE_REMAINING_S = 1.0
# A request past its predicted end still holds its slot for at least this long.
MIN_REMAINING_S = 0.05
# A model this router used on a node this recently is taken as still loaded there (Ollama
# keeps a model 5 minutes by default; /api/ps is only polled now and then).
RECENT_USE_S = 240.0
# A model requested this recently is in demand: its stale estimates are worth re-measuring.
DEMAND_S = 60.0
# Conversations remembered per router (where their last turn ran), oldest forgotten first.
MAX_CONVERSATIONS = 10_000
# The chance a probe finds a free slot, as far as the predictor assumes (a miss waits).
PROBE_ODDS = 0.5
# A re-measurement: a short generation, enough for the node's own decode timing.
REMEASURE_TOKENS = 16


def answered(flight: Flight, profile: RequestProfile | None) -> bool:
    """An earlier turn of the request's own conversation: the client holds its answer (it is
    asking the next turn, which carries it), though its outcome, batched off the path, may not
    have reached this router yet. It holds no slot any more. (Earlier: fewer tokens before its
    last message; two identical requests are not each other's earlier turn.)"""
    earlier = flight.profile
    return (profile is not None and profile.conversation is not None and earlier is not None
            and earlier.conversation == profile.conversation and earlier.prefix_tokens < profile.prefix_tokens)


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
    concurrent: int  # in flight on the node when it was sent, all routers, itself included
    probe: bool = False  # sent above the node's proven capacity, to explore it
    remeasure: bool = False  # the router's own short request to refresh a stale estimate
    siblings: frozenset[int] = frozenset()  # this router's flights on the node when it was sent
    alone: bool = True  # no other router had work on the node then
    began: bool = False  # the node's first byte has come
    proved: bool = False  # its first byte proved the slot it probed for
    profile: RequestProfile | None = None  # what it asked for (its outcome is learned by it)
    charged: float = 0.0  # tokens counted against its application (fair share), to correct at its end


@dataclass(slots=True)
class Grant:
    """A routing decision with its slot reserved."""

    ranked: list[Scored]
    choice: Scored
    flight_id: int
    probe: bool = False


@dataclass(slots=True)
class Turn:
    """Where a conversation's last turn ran, and how busy that node has been since."""

    node: str
    serial: int  # the node's count of cache-evicting requests when the turn finished
    at: float  # monotonic


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
        self.residency = Residency()  # what each node has loaded, and what loading more costs
        self.max_loaded: dict[str, int | None] = {}  # node -> models it holds, where configured
        self.requested: dict[str, float] = {}  # model -> monotonic time it was last asked for
        # node -> requests started there that take a slot's cache for themselves (not the
        # follow-ups of conversations the node holds: a node's slots keep their own prefixes)
        self.evicting: dict[str, int] = defaultdict(int)
        self.turns: dict[str, Turn] = {}  # conversation -> where its last turn ran (insertion = age)
        self.wall = time.time  # the clock of learned estimates (shared across processes)
        # Per node: predicted seconds of work that queued requests plan to put there, so that
        # one waiter's plan is part of the next one's prediction (filled during `plan`).
        self._planned: dict[str, list[float]] = {}
        self.probe_round: dict[str, float] = {}  # node -> when its latest round of probes went
        self._picture: object = None  # what nodes can serve what, as last adopted
        self._picture_changed = False

    # -- views -------------------------------------------------------------------------
    @property
    def strategy(self) -> str:
        return self.config.strategy

    def in_flight_counts(self) -> dict[str, int]:
        return {node: len(f) for node, f in self.flights.items() if f}

    def busy(self, view: NodeView, profile: RequestProfile | None = None) -> int:
        """Requests in flight on the node (as `profile` sees it: not its conversation's turn
        that has ended)."""
        own = sum(1 for f in self.flights.get(view.name, {}).values() if not answered(f, profile))
        return own + view.in_flight_elsewhere

    def slots(self, view: NodeView) -> int:
        """The slots the predictor believes in: configured, reported, or proven."""
        if view.breaker == "half_open":  # one trial request at a time decides the breaker
            return 1
        if view.slots_known:
            return view.slots
        return self.book.learned_slots(view.name)

    def probing(self, node: str) -> int:
        """Probes out whose answer (a proof at its first byte, or its end) is not in."""
        return sum(1 for f in self.flights.get(node, {}).values() if f.probe and not f.proved)

    def may_explore(self, view: NodeView, busy: int, slots: int, now: float, now_wall: float) -> bool:
        """The node is full by what it has proved, and one request more may find a slot: fewer
        requests are above what it proved than its capacity allows (cluster/capacity.py), and
        no earlier round of probes is still unproved. Probes go in rounds, sent together and
        proved together: a new round only when the last one has proved all its slots (or
        ended), so a round that finds the node's limit stacks its own overflow there and
        nothing more."""
        if view.slots_known or view.breaker != "closed" or busy < slots:
            return False
        out = self.probing(view.name)
        if out and self.probe_round.get(view.name) != now:
            return False
        allowed = self.book.capacity_of(view.name).probes_allowed(now_wall, fifo=view.kind == "ollama")
        return busy - slots < allowed and out < allowed

    def running(self, view: NodeView, now: float, profile: RequestProfile | None = None) -> list[float]:
        """Predicted seconds left of each request at the node now (ours and other routers')."""
        own = [max(f.predicted_end - now, MIN_REMAINING_S) for f in self.flights.get(view.name, {}).values()
               if not answered(f, profile)]
        return own + [ELSEWHERE_REMAINING_S] * view.in_flight_elsewhere

    def remaining(self, view: NodeView, now: float, profile: RequestProfile | None = None) -> list[float]:
        """The running requests, and the work queued requests plan to put there."""
        return self.running(view, now, profile) + self._planned.get(view.name, [])

    def resident(self, view: NodeView, model: str, now: float, num_ctx: int | None = None) -> bool:
        """Loaded on the node (or being loaded there for one of our requests); not if the
        request asks an Ollama node for more context than it is loaded with (a reload; one that
        asks for less or none is sent with the loaded context, nodes/context.py; a llama-server
        keeps its context whatever is asked)."""
        wanted = normalize_model(model)
        if view.kind == "ollama" and reloads(view.contexts.get(wanted), num_ctx):
            return False
        return self.loaded(view, wanted) or any(
            normalize_model(f.model) == wanted for f in self.flights.get(view.name, {}).values())

    def loaded(self, view: NodeView, model: str) -> bool:
        """Loaded there as last known: the node's /api/ps or this router's traffic since,
        whichever is newer; until a keep-alive has passed without a sign of use. A request of
        ours for it that has begun answering there says so too."""
        if view.kind != "ollama":
            return True  # llama-server, vLLM: the model they serve is always loaded
        res = self.residency.of(view.name)
        if res.holds(model, self.wall()) if model in res.facts else model in view.loaded:
            return True
        return any(normalize_model(f.model) == model and f.began for f in self.flights.get(view.name, {}).values())

    def cold_cost(self, view: NodeView, profile: RequestProfile, now: float, priors: Priors) -> ColdCost | None:
        """What the request's model costs to load on the node (None: it is loaded there):
        what is left of its load if one of ours is under way, else the whole of it."""
        model = normalize_model(profile.model)
        if self.resident(view, model, now, profile.num_ctx) and self.loaded(view, model):
            return None
        running: dict[str, list[float]] = defaultdict(list)
        for f in self.flights.get(view.name, {}).values():
            running[normalize_model(f.model)].append(max(f.predicted_end - now, MIN_REMAINING_S))
        capacity = self.residency.of(view.name).capacity(self.max_loaded.get(view.name))

        def load_s(m: str) -> float:
            perf = self.book.perf(view.name, m)
            prior = priors.load_s if m == model else Priors.from_book(self.book, m).load_s
            return perf.load_s.mean if perf and perf.load_s.n else prior

        return self.residency.cold_cost(view.name, model, self.wall(), capacity, load_s, running,
                                        lambda m: view.digests.get(m) or m, lambda m: self.warm_elsewhere(view.name, m))

    def warm_elsewhere(self, node: str, model: str) -> bool:
        return any(name != node and view.routable and self.loaded(view, model) for name, view in self.snapshot.items())

    def fits(self, view: NodeView, model: str, now: float) -> bool:
        """Whether the model can go to the node: resident, or small enough for its free VRAM.
        A node without GPU readings (CPU-only, or not measured) is not judged."""
        if view.vram_free_mb is None or self.resident(view, model, now):
            return True
        size_mb = view.model_sizes.get(normalize_model(model), 0) / 2**20
        return size_mb * self.config.vram_headroom <= view.vram_free_mb

    @staticmethod
    def fits_context(view: NodeView, profile: RequestProfile) -> bool:
        """The prompt and the answer fit in the context the model is loaded with there (a
        request that asks for its own `num_ctx` gets at least that, with a reload if more)."""
        ctx = view.contexts.get(normalize_model(profile.model))
        if ctx is None or profile.num_ctx is not None:
            return True
        return profile.tokens_in + profile.tokens_out_est <= ctx

    def cached_tokens(self, view: NodeView, profile: RequestProfile, now: float) -> int:
        """Prompt tokens the node likely still holds in a slot's KV cache: the conversation's
        last turn ran there, recently, and fewer requests than it has slots came after it that
        were not follow-ups of conversations it holds (those reuse their own slot)."""
        if not self.config.affinity or profile.conversation is None:
            return 0
        turn = self.turns.get(profile.conversation)
        if turn is None or turn.node != view.name or now - turn.at > RECENT_USE_S:
            return 0
        if self.evicting[view.name] - turn.serial >= self.slots(view):
            return 0
        return profile.prefix_tokens

    # -- ranking -----------------------------------------------------------------------
    def predict(self, view: NodeView, profile: RequestProfile, priors: Priors, now: float,
                slots: int | None = None) -> Prediction:
        perf = self.book.perf(view.name, normalize_model(profile.model))
        slots = self.slots(view) if slots is None else slots
        remaining = self.remaining(view, now, profile)
        # A cached prefix only counts where a slot is free: affinity never queues a request.
        cached = self.cached_tokens(view, profile, now) if len(remaining) < slots else 0
        cold = self.cold_cost(view, profile, now, priors)
        return predict(view.name, slots, profile, perf, priors, remaining, cold is None, self.wall(), cached, cold)

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
        self.requested[normalize_model(model)] = now
        nodes = [v for v in nodes if self.fits_context(v, profile)] or nodes  # else the node truncates
        nodes = [v for v in nodes if self.fits(v, model, now)] or nodes  # else one may evict an idle model
        priors = Priors.from_book(self.book, normalize_model(model))
        scored = []
        for view in nodes:
            prediction = self.predict(view, profile, priors, now)
            if self.strategy == "intelligent":
                scored.append(score_predicted(view, self.busy(view, profile), self.slots(view), prediction))
            else:
                item = score_least_busy(view, self.busy(view, profile), self.slots(view),
                                        self.resident(view, model, now, profile.num_ctx))
                item.prediction = prediction
                scored.append(item)
        return self.chooser.rank(scored)

    def pick(self, ranked: list[Scored], profile: RequestProfile, priority: float, now: float) -> Grant | None:
        """The slot to take now, or None if the request should wait for one.
        `intelligent` waits for its best node rather than take a free but slower one (the
        wait is part of the prediction), except to measure a node it has no numbers for yet;
        the other strategies take their first free node. A node whose breaker is half-open
        gets the request as its trial (one at a time), else it would never be closed again.
        Background work (`priority`, aged, at most `background_priority`) waits while only
        the reserved slots are free. A node full only by what it has proved gets the request as
        a probe instead, if that is predicted sooner than the choice above (or than waiting)."""
        trial = next((s for s in ranked if s.free and s.node.breaker == "half_open"), None)
        if trial is not None:
            return Grant(ranked, trial, -1)
        if priority <= self.config.background_priority and not self.spare_for_background(ranked):
            return None
        if self.strategy != "intelligent":
            chosen = next((s for s in ranked if s.free), None)
            return Grant(ranked, chosen, -1) if chosen else self._probe(ranked, profile, now, None)
        if ranked[0].free:
            chosen = ranked[0]
        else:
            chosen = next((s for s in ranked if s.free and s.prediction and s.prediction.factors.get("unmeasured")),
                          None)
        probe = self._probe(ranked, profile, now, chosen.score if chosen else ranked[0].score)
        return probe or (Grant(ranked, chosen, -1) if chosen else None)

    def _probe(self, ranked: list[Scored], profile: RequestProfile, now: float, beat_s: float | None) -> Grant | None:
        """A probe on a node full by what it has proved, if one may go there and (intelligent)
        it is predicted sooner than `beat_s`, the best the request has otherwise."""
        wall = self.wall()
        options = [s for s in ranked if self.may_explore(s.node, s.busy, s.slots, now, wall)]
        if not options:
            return None
        if beat_s is None:
            return Grant(ranked, options[0], -1, probe=True)
        priors = Priors.from_book(self.book, normalize_model(profile.model))
        scored = [(self.probe_prediction(s, profile, priors, now), s) for s in options]
        prediction, s = min(scored, key=lambda item: item[0].total_s)
        if prediction.total_s >= beat_s:
            return None
        probe = Scored(s.node, prediction.total_s, s.busy, f"{s.reason}; probe: one above its proven "
                       f"{s.slots} slots, expected {prediction.total_s:.2f} s", s.slots, prediction)
        return Grant(ranked, probe, -1, probe=True)

    def probe_prediction(self, s: Scored, profile: RequestProfile, priors: Priors, now: float) -> Prediction:
        """What a probe is expected to take: even odds that the node has a slot for it beside
        everything in flight there, other probes too (no wait), or not, when it waits inside
        the node for the first request running there to end (behind those, not behind the
        gateway's own queue): a probe on a node busy with long answers must be worth its miss."""
        hit = self.predict(s.node, profile, priors, now, slots=max(s.slots, s.busy) + 1)
        miss_wait = min(self.running(s.node, now, profile), default=0.0)
        hit.total_s = hit.total_s + (1 - PROBE_ODDS) * miss_wait
        hit.factors["probe_odds"] = PROBE_ODDS
        return hit

    def spare_for_background(self, ranked: list[Scored]) -> bool:
        """More slots free than the reserve (of the nodes that could serve the request)."""
        total = sum(s.slots for s in ranked)
        free = sum(max(s.slots - s.busy, 0) for s in ranked)
        return free > min(self.config.reserved_slots, total - 1)

    def admit_now(self, profile: RequestProfile, exclude: set[str], priority: float, now: float) -> Grant | None:
        """Rank and take a slot if the request should go now (raises if no node can take it)."""
        ranked = self.rank(profile, exclude, now)
        return self.start(self.pick(ranked, profile, priority, now), profile, now)

    def grant_now(self, profile: RequestProfile, exclude: set[str], now: float) -> Grant | None:
        """A slot on the best node that has one free right now, or None (never waits)."""
        try:
            ranked = self.rank(profile, exclude, now)
        except GatewayError:
            return None
        choice = next((s for s in ranked if s.free), None)
        return self.start(Grant(ranked, choice, -1), profile, now) if choice else None

    def plan(self, requests: Iterable[tuple[RequestProfile, set[str], float]],
             now: float) -> list[Grant | GatewayError | None]:
        """Decide for queued requests (profile, nodes to avoid, priority with aging), given
        most urgent first: a Grant (slot reserved), an error, or None (keep waiting). A
        request that keeps waiting books its predicted work on the node it waits for, so the
        ones behind it see the longer wait there and may take another node instead. Stops,
        without drawing the next request, once no node has room (a free slot, or a probe it
        may take): nobody further back could be granted one, so the queue's length costs
        nothing. Decisions come for the requests drawn."""
        decisions: list[Grant | GatewayError | None] = []
        self._planned = {}
        wall = self.wall()
        if not self.has_room(now, wall):
            return decisions
        try:
            for profile, exclude, priority in requests:
                try:
                    ranked = self.rank(profile, exclude, now)
                except GatewayError as exc:
                    decisions.append(exc)
                    continue
                grant = self.pick(ranked, profile, priority, now)
                if grant is None:
                    best = ranked[0]
                    booked = best.prediction.total_s if best.prediction else 0.0
                    self._planned.setdefault(best.node.name, []).append(booked)
                decisions.append(self.start(grant, profile, now))
                if not self.has_room(now, wall):
                    break
        finally:
            self._planned = {}
        return decisions

    def has_room(self, now: float, now_wall: float) -> bool:
        """Some routable node has a free slot, or may take a probe."""
        for view in self.snapshot.values():
            if not view.routable:
                continue
            busy, slots = self.busy(view), self.slots(view)
            if busy < slots or self.may_explore(view, busy, slots, now, now_wall):
                return True
        return False

    def take_picture_change(self) -> bool:
        """Whether the nodes that can serve, or what they serve, changed since last asked."""
        changed, self._picture_changed = self._picture_changed, False
        return changed

    # -- flights -----------------------------------------------------------------------
    def start(self, grant: Grant | None, profile: RequestProfile, now: float, remeasure: bool = False) -> Grant | None:
        """Reserve the grant's slot (a flight); gives the grant back with its flight id."""
        if grant is None:
            return None
        choice = grant.choice
        node = choice.node.name
        grant.flight_id = flight_id = next(self._ids)
        if choice.prediction is not None:
            self.residency.sent(node, normalize_model(profile.model), choice.prediction.cold, self.wall())
        if not (choice.prediction and choice.prediction.factors.get("cached_tokens")):
            self.evicting[node] += 1
        predicted = choice.prediction.total_s if choice.prediction else 0.0
        if grant.probe and not self.probing(node):
            self.probe_round[node] = now
        own = self.flights[node]
        self.flights[node][flight_id] = Flight(
            node, profile.model, now, now + predicted, self.busy(choice.node, profile) + 1, probe=grant.probe,
            remeasure=remeasure, siblings=frozenset(own), alone=choice.node.in_flight_elsewhere == 0,
            profile=profile)
        if profile.conversation:
            # Now, not when the outcome comes back: a client asks its next turn the moment this
            # one's stream ends, before the batched outcome reaches this router.
            self.remember_turn(profile.conversation, node, now)
        return grant

    def began(self, flight_id: int, node: str, running: int) -> None:
        """The node's first byte for a flight, while its worker counted `running` requests
        running there at once (this one included). If every request sent there before it is
        still running, that many slots are proven, now rather than when the request ends (so
        a burst to a wide node is not held back one by one). The worker's count is the
        check that holds: a sibling's end reaches this router later, batched."""
        flight = self.flights.get(node, {}).get(flight_id)
        if flight is None or flight.began:
            return
        flight.began = True
        concurrent = min(flight.concurrent, running)
        if flight.alone and concurrent > 1 and flight.siblings <= self.flights[node].keys():
            flight.proved = True
            self.learn(Observation(node=node, model=normalize_model(flight.model), task_type="", ok=True,
                                   concurrent=concurrent, probe=flight.probe, phase="first_byte",
                                   at=self.wall()))

    def finish(self, flight_id: int, node: str, now: float, ok: bool | None = None) -> Flight | None:
        flight = self.flights.get(node, {}).pop(flight_id, None)
        if flight is not None:  # an answer: the model is loaded there, for its keep-alive from now on
            self.residency.finished(node, normalize_model(flight.model), ok is True, self.wall())
        return flight

    def forget_turn(self, conversation: str, node: str) -> None:
        """The turn failed there: the node holds no prefix of it (unless a later turn moved it)."""
        turn = self.turns.get(conversation)
        if turn is not None and turn.node == node:
            del self.turns[conversation]

    def remember_turn(self, conversation: str, node: str, now: float) -> None:
        self.turns.pop(conversation, None)
        self.turns[conversation] = Turn(node, self.evicting[node], now)
        while len(self.turns) > MAX_CONVERSATIONS:
            del self.turns[next(iter(self.turns))]

    # -- re-measuring stale estimates --------------------------------------------------
    def stale(self, now: float) -> list[tuple[NodeView, str]]:
        """(node, model) pairs to re-measure now: a generation model in demand, resident on a
        routable node with a free slot and nothing of ours in flight there, whose estimate
        has had no sample for `stale_after_s` (its last figure may be from a slow spell).
        Only where another routable node serves the model: an estimate with no rival decides
        nothing, and re-measuring it would keep an idle node (a shard group) from stopping."""
        wall = self.wall()
        out = []
        for (node, model), perf in self.book.models.items():
            view = self.snapshot.get(node)
            if (view is None or not view.routable or view.breaker != "closed" or not perf.decode_tps.n
                    or not self._has_rival(view, model)
                    or now - self.requested.get(model, float("-inf")) > DEMAND_S
                    or wall - perf.last_sample_at() < self.config.stale_after_s
                    or self.flights.get(node) or self.busy(view) >= self.slots(view)
                    or not view.has_model(model) or not self.resident(view, model, now)):
                continue
            out.append((view, model))
        return out

    def _has_rival(self, view: NodeView, model: str) -> bool:
        return any(other.name != view.name and other.routable and other.has_model(model)
                   for other in self.snapshot.values())

    def remeasure_profile(self, model: str) -> RequestProfile:
        return RequestProfile(task_type="generation", complexity="low", tokens_in=1,
                              tokens_out_est=REMEASURE_TOKENS, output_capped=True, requires_gpu=False,
                              model=model, priority=1)

    def start_remeasure(self, view: NodeView, model: str, now: float) -> int:
        profile = self.remeasure_profile(model)
        priors = Priors.from_book(self.book, normalize_model(model))
        prediction = self.predict(view, profile, priors, now)
        scored = Scored(view, prediction.total_s, self.busy(view), "re-measure a stale estimate",
                        self.slots(view), prediction)
        return self.start(Grant([scored], scored, -1), profile, now, remeasure=True).flight_id

    def learn(self, observation: Observation) -> None:
        self.book.observe(observation)
        self.pending.append(observation)

    def take_pending(self) -> list[Observation]:
        pending, self.pending = self.pending, []
        return pending

    def adopt(self, snapshot: dict[str, NodeView], book: PerfBook) -> bool:
        """Take the state actor's view; it already includes what this router sent. True if
        what nodes can serve what changed."""
        self.snapshot = snapshot
        self.book = book
        picture = {name: (view.routable, view.breaker, frozenset(view.models)) for name, view in snapshot.items()}
        changed = picture != self._picture
        if changed:
            self._picture, self._picture_changed = picture, True
        for view in snapshot.values():
            if view.kind == "ollama" and view.probed_at:
                self.residency.of(view.name).poll(view.loaded, view.probed_at)
        return changed

    def retry_after_s(self) -> int:
        nodes = [v for v in self.snapshot.values() if v.healthy]
        total_slots = sum(self.slots(v) for v in nodes)
        services = [p.decode_tps.mean and 128 / p.decode_tps.mean for p in self.book.models.values()
                    if p.decode_tps.n]
        mean_service = sum(services) / len(services) if services else 5.0
        return retry_after(len(self.queue), mean_service, total_slots)
