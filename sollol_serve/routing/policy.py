"""Choosing a node: candidate filtering and the strategies.

Pure functions over a snapshot of `NodeView`s, in-flight counts and predictions.
A candidate is healthy and has the model; among candidates the strategy decides:
`intelligent` by predicted completion time, `least_busy` by in-flight per slot,
`round_robin` and `random` by turn and by chance.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from itertools import count

from sollol_serve.cluster.state import NodeView
from sollol_serve.config import Strategy
from sollol_serve.names import normalize_model
from sollol_serve.protocol import BadRequest, ModelNotFound, NoNodeAvailable, NotFound
from sollol_serve.routing.predict import Prediction


@dataclass(slots=True)
class Scored:
    node: NodeView
    score: float  # lower is better
    busy: int  # in flight on the node, all routers
    reason: str
    slots: int = 1
    prediction: Prediction | None = None

    @property
    def free(self) -> bool:
        return self.busy < self.slots

    def as_dict(self) -> dict:
        out = {"node": self.node.name, "score": round(self.score, 4), "in_flight": self.busy,
               "slots": self.slots, "slots_source": self.node.slots_source, "predicted_s": None,
               "reason": self.reason}
        if self.prediction is not None:
            out.update(self.prediction.as_dict())
        return out


def candidates(snapshot: dict[str, NodeView], model: str, exclude: set[str] = frozenset()) -> list[NodeView]:
    return [v for v in snapshot.values() if v.routable and v.name not in exclude and v.has_model(model)]


def model_known(snapshot: dict[str, NodeView], model: str) -> bool:
    return any(v.has_model(model) for v in snapshot.values())


def warm_targets(snapshot: dict[str, NodeView], model: str, names: list[str] | None) -> list[NodeView]:
    """The nodes `sollol warm` loads `model` on: the ones named (each must exist and have the
    model), or every routable node that has it."""
    if not model_known(snapshot, model):
        raise ModelNotFound(f"model '{model}' not found on any node")
    if names is None:
        chosen = candidates(snapshot, model)
        if not chosen:
            raise NoNodeAvailable(f"no healthy node that has '{model}' is taking work")
        return chosen
    unknown = [n for n in names if n not in snapshot]
    if unknown:
        raise NotFound(f"node '{unknown[0]}' not found")
    without = [n for n in names if not snapshot[n].has_model(model)]
    if without:
        raise BadRequest(f"node '{without[0]}' does not have model '{model}'")
    return [snapshot[n] for n in dict.fromkeys(names)]


def score_least_busy(node: NodeView, busy: int, slots: int, resident: bool) -> Scored:
    """In-flight per slot; a node that must cold-load the model counts as half a slot busier."""
    cold = 0.0 if resident else 0.5
    score = (busy + cold) / slots
    reason = f"{busy} in flight / {slots} slots" + (", model not loaded" if cold else "")
    return Scored(node, score, busy, reason, slots)


def score_predicted(node: NodeView, busy: int, slots: int, prediction: Prediction) -> Scored:
    p = prediction
    reason = (f"predicted {p.total_s:.2f} s = wait {p.wait_s:.2f} + load {p.load_s:.2f} + prefill "
              f"{p.prefill_s:.2f} + decode {p.decode_s:.2f}")
    if p.factors.get("failure_inflation", 1.0) > 1.001:
        reason += f", x{p.factors['failure_inflation']:.2f} for recent failures"
    if p.factors.get("risk_s"):
        reason += f", +{p.factors['risk_s']:.2f} s speed uncertainty"
    if p.factors.get("unmeasured"):
        reason += ", not measured yet (cluster prior)"
    if p.factors.get("cached_tokens"):
        reason += f", {p.factors['cached_tokens']:.0f} prompt tokens cached there"
    return Scored(node, p.total_s, busy, reason, slots, p)


def model_loaded(node: NodeView, model: str) -> bool:
    return node.kind != "ollama" or normalize_model(model) in node.loaded


class Chooser:
    """Applies a strategy; keeps the round-robin position and the random generator."""

    def __init__(self, strategy: Strategy, seed: int | None = None):
        self.strategy = strategy
        self._turn = count()
        self._rng = random.Random(seed)

    def rank(self, scored: list[Scored]) -> list[Scored]:
        """All candidates, best first (`scored` by prediction for intelligent, else by load)."""
        if self.strategy == "intelligent":
            return sorted(scored, key=lambda s: s.score)
        if self.strategy == "least_busy":
            ranked = sorted(scored, key=lambda s: s.score)
            # Nodes tied for best take turns, so that an idle cluster still spreads work.
            tied = [s for s in ranked if s.score == ranked[0].score] if ranked else []
            if len(tied) > 1:
                turn = next(self._turn) % len(tied)
                ranked = tied[turn:] + tied[:turn] + ranked[len(tied):]
            return ranked
        if self.strategy == "round_robin":
            turn = next(self._turn) % max(len(scored), 1)
            return scored[turn:] + scored[:turn]
        shuffled = scored[:]
        self._rng.shuffle(shuffled)
        return shuffled


def needs_shard(snapshot: dict[str, NodeView], model: str, listed: set[str], headroom: float) -> bool:
    """Whether the model goes to a shard group: listed for sharding, or no healthy node that
    has it can hold its own copy (its size there vs the node's free VRAM, else its free RAM;
    unknown = can hold). Each node is judged by its own size: one node advertising a huge
    size (a rogue server found by a scan) cannot push a model others hold onto a shard group."""
    wanted = normalize_model(model)
    if wanted in listed:
        return True
    holders = [v for v in snapshot.values() if v.healthy and v.has_model(wanted) and not v.name.startswith("shard:")]

    def holds(v: NodeView) -> bool:
        size_mb = v.model_sizes.get(wanted, 0) / 2**20 * headroom
        capacity = v.vram_free_mb if v.vram_free_mb is not None else v.ram_available_mb
        return size_mb <= 0 or capacity is None or capacity >= size_mb

    return bool(holders) and not any(holds(v) for v in holders)
