"""Which models each node has loaded, how many it holds, and what loading one more costs.

An Ollama node keeps at most a few models loaded (`OLLAMA_MAX_LOADED_MODELS`, or what its VRAM
holds), loads one at a time, and makes room by evicting a loaded model, chosen by its
scheduler (`server/sched.go`, `findRunnerToUnload`): the runners sorted by the keep-alive of
their last request, then by model path; the first one with no request running, else the first,
which it waits for. So a request for a cold model on a full node pays: any load already under
way there, the victim's running requests, its own load; and the victim's next requests pay a
load of their own. `Residency` keeps what the router knows to price that:

- what is loaded: the latest fact wins, whether from the node's `/api/ps` (in its worker's
  report, as of `probed_at`) or the router's own traffic (an answer means its model is loaded
  there now; a cold request sent to a full node evicts the predicted victim);
- how many models a node holds: configured (`max_loaded`), else learned (a poll in which a
  model replaced another at the same count: the node was full at that count), else Ollama's
  default of 3, and never fewer than it has been seen to hold;
- how much each model is wanted (requests per second, decayed), for the price of evicting it.

The victim's path order is not visible to the gateway: the model's digest stands in for it
(the same order on the simulator; on real Ollama the order of the model blobs' digests).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

DEFAULT_MAX_LOADED = 3  # Ollama's default per GPU (and for a CPU-only node)
DEFAULT_KEEP_ALIVE_S = 300.0  # Ollama's default keep_alive
DEMAND_TAU_S = 60.0  # demand is requests/s averaged over about this long
# An evicted model's next request comes, on average, within 1/rate: the eviction is charged
# the load it will cost, weighted by the chance it is asked for within this horizon.
EVICTION_HORIZON_S = 30.0
WARM_ELSEWHERE_DISCOUNT = 0.25  # its requests can go to another node that has it loaded
# Evicting a pinned model from one of its last `min_nodes` is priced as an hour of waiting: a
# request goes there only when no other node can serve it.
PIN_EVICTION_S = 3600.0


@dataclass(slots=True)
class Fact:
    loaded: bool
    at: float  # wall time it was learned as of (for a loaded model: last seen in use or listed)

    def holds(self, now: float | None, keep_s: float = DEFAULT_KEEP_ALIVE_S) -> bool:
        """Loaded, and not yet past its keep-alive since it was last known to be."""
        return self.loaded and (now is None or now - self.at < keep_s)


@dataclass(slots=True)
class Loading:
    """A load this router caused (a cold request sent) that has not answered yet."""

    ready_at: float  # wall time it is expected to be loaded
    flights: int = 1


@dataclass(slots=True)
class ColdCost:
    """What a cold request for a model pays on a node, beyond its own service."""

    load_s: float  # its own load (or what is left of a load under way for it)
    queued_load_s: float = 0.0  # another model's load under way there (one load at a time)
    drain_s: float = 0.0  # the victim's running requests, which the eviction waits for
    eviction_s: float = 0.0  # what evicting the victim will cost its next requests
    victim: str | None = None

    def as_dict(self) -> dict:
        return {"load_s": round(self.load_s, 3), "queued_load_s": round(self.queued_load_s, 3),
                "drain_s": round(self.drain_s, 3), "eviction_s": round(self.eviction_s, 3), "victim": self.victim}


@dataclass
class NodeResidency:
    facts: dict[str, Fact] = field(default_factory=dict)
    loading: dict[str, Loading] = field(default_factory=dict)
    polled_at: float = 0.0
    last_poll: frozenset[str] | None = None
    learned_max: int | None = None
    most_seen: int = 0
    arrived_since_poll: set[str] = field(default_factory=set)  # loaded by our traffic since the last poll
    loads: Counter = field(default_factory=Counter)  # model -> loads seen
    evictions: Counter = field(default_factory=Counter)  # model -> unloads seen (evicted or expired)
    keep_s: dict[str, float] = field(default_factory=dict)  # model -> keep_alive of our last request

    def session_s(self, model: str) -> float:
        return self.keep_s.get(model, DEFAULT_KEEP_ALIVE_S)

    def holds(self, model: str, now: float | None) -> bool:
        fact = self.facts.get(model)
        return fact is not None and fact.holds(now, self.session_s(model))

    def loaded(self, now: float | None = None) -> set[str]:
        return {model for model in self.facts if self.holds(model, now)}

    def capacity(self, configured: int | None) -> int:
        if configured is not None:
            return configured
        learned = self.learned_max if self.learned_max is not None else DEFAULT_MAX_LOADED
        return max(learned, self.most_seen, 1)

    def capacity_source(self, configured: int | None) -> str:
        if configured is not None:
            return "configured"
        return "learned" if self.learned_max is not None or self.most_seen > DEFAULT_MAX_LOADED else "default"

    def poll(self, loaded: frozenset[str], at: float) -> None:
        """The node's own list of loaded models, as of wall time `at`."""
        if at <= self.polled_at:
            return
        # A model known loaded before this report is gone from it while another arrived (in
        # the report, or in an answer since the last one): it was evicted to make room, so the
        # node was full at this count. (Polls come seconds apart: the traffic in between
        # tells what arrived.)
        gone = {m for m, f in self.facts.items() if f.loaded and f.at < at and m not in loaded}
        arrived = (loaded - (self.last_poll or frozenset())) | self.arrived_since_poll
        if gone and arrived & loaded:
            self.learned_max = len(loaded)
        self.most_seen = max(self.most_seen, len(loaded))
        for model in loaded | set(self.facts):
            self.learn(model, model in loaded, at)
        self.polled_at, self.last_poll, self.arrived_since_poll = at, loaded, set()

    def learn(self, model: str, loaded: bool, at: float) -> None:
        fact = self.facts.get(model)
        if fact is not None and fact.at > at:
            return  # something newer is known
        if loaded and (fact is None or not fact.loaded):
            self.loads[model] += 1
            if at > self.polled_at:
                self.arrived_since_poll.add(model)
        elif not loaded and fact is not None and fact.loaded:
            self.evictions[model] += 1
        self.facts[model] = Fact(loaded, at)

    def victim(self, order: Callable[[str], str], running: dict[str, int], now: float | None = None) -> str | None:
        """The model Ollama would unload to make room: by the keep-alive of its last request
        (the node's default where the gateway sent none), then path; idle first."""
        ranked = sorted(self.loaded(now), key=lambda m: (self.session_s(m), order(m)))
        return next((m for m in ranked if not running.get(m)), ranked[0] if ranked else None)


class Demand:
    """Requests per second for each model, decayed with a time constant of `tau_s`."""

    def __init__(self, tau_s: float = DEMAND_TAU_S):
        self.tau_s = tau_s
        self._level: dict[str, tuple[float, float]] = {}  # model -> (rate, as of)

    def note(self, model: str, now: float) -> None:
        self._level[model] = (self.rate(model, now) + 1 / self.tau_s, now)

    def rate(self, model: str, now: float) -> float:
        rate, at = self._level.get(model, (0.0, now))
        return rate * math.exp(-max(now - at, 0.0) / self.tau_s)


class Residency:
    def __init__(self) -> None:
        self.nodes: dict[str, NodeResidency] = {}
        self.demand = Demand()
        self.pins: dict[str, int] = {}  # model -> nodes the operator keeps it loaded on

    def of(self, node: str) -> NodeResidency:
        return self.nodes.setdefault(node, NodeResidency())

    def is_loaded(self, node: str, model: str, now: float | None = None) -> bool:
        return self.of(node).holds(model, now)

    def loading_left(self, node: str, model: str, now: float) -> float | None:
        """Seconds until a load this router caused for `model` there is done; None if none."""
        loading = self.of(node).loading.get(model)
        return None if loading is None else max(loading.ready_at - now, 0.0)

    def cold_cost(self, node: str, model: str, now: float, capacity: int, load_s: Callable[[str], float],
                  running: dict[str, list[float]], order: Callable[[str], str],
                  warm_elsewhere: Callable[[str], bool]) -> ColdCost:
        """What a request for `model`, not loaded on `node`, pays there. `running`: model ->
        predicted seconds left of each request running on the node."""
        res = self.of(node)
        left = self.loading_left(node, model, now)
        if left is not None:  # already being loaded for an earlier request: only what is left
            return ColdCost(load_s=left)
        queued = max((max(l.ready_at - now, 0.0) for m, l in res.loading.items() if m != model), default=0.0)
        cost = ColdCost(load_s=load_s(model), queued_load_s=queued)
        if len(res.loaded(now) | set(res.loading)) < capacity:  # room for one more
            return cost
        victim = res.victim(order, {m: len(r) for m, r in running.items()}, now)
        if victim is None:
            return cost
        cost.victim = victim
        cost.drain_s = max(running.get(victim, []), default=0.0)
        if sum(r.holds(victim, now) for r in self.nodes.values()) <= self.pins.get(victim, 0):
            cost.eviction_s = PIN_EVICTION_S
            return cost
        wanted = min(1.0, self.demand.rate(victim, now) * EVICTION_HORIZON_S)
        cost.eviction_s = wanted * load_s(victim) * (WARM_ELSEWHERE_DISCOUNT if warm_elsewhere(victim) else 1.0)
        return cost

    def sent(self, node: str, model: str, cold: ColdCost | None, now: float) -> None:
        """A request for `model` went to `node`; `cold`: what it was predicted to pay to load."""
        if cold is None:
            return
        res = self.of(node)
        loading = res.loading.get(model)
        if loading is not None:
            loading.flights += 1
            return
        res.loading[model] = Loading(ready_at=now + cold.queued_load_s + cold.drain_s + cold.load_s)
        if cold.victim is not None:
            res.learn(cold.victim, False, now)

    def finished(self, node: str, model: str, ok: bool, now: float) -> None:
        """A request for `model` on `node` ended: if it answered, the model is loaded there now."""
        res = self.of(node)
        loading = res.loading.get(model)
        if loading is not None:
            loading.flights -= 1
            if loading.flights <= 0 or ok:
                del res.loading[model]
        if ok:
            res.learn(model, True, now)
