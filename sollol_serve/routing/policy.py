"""Choosing a node: candidate filtering and the simple strategies.

Pure functions over a snapshot of `NodeView`s and the router's own in-flight counts.
A candidate is healthy and has the model; among candidates the strategy decides.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from itertools import count

from sollol_serve.config import Strategy
from sollol_serve.routing.state import NodeView, normalize_model


@dataclass(slots=True)
class Scored:
    node: NodeView
    score: float  # lower is better
    busy: int  # in flight on the node, all routers
    reason: str

    def as_dict(self) -> dict:
        return {"node": self.node.name, "score": round(self.score, 4), "in_flight": self.busy,
                "slots": self.node.slots, "predicted_s": None, "reason": self.reason}


def candidates(snapshot: dict[str, NodeView], model: str, exclude: set[str] = frozenset()) -> list[NodeView]:
    return [v for v in snapshot.values() if v.healthy and v.name not in exclude and v.has_model(model)]


def model_known(snapshot: dict[str, NodeView], model: str) -> bool:
    return any(v.has_model(model) for v in snapshot.values())


def score_least_busy(node: NodeView, busy: int, model: str) -> Scored:
    """In-flight per slot; a node that must cold-load the model counts as half a slot busier."""
    cold = 0.0 if node.kind != "ollama" or model_loaded(node, model) else 0.5
    score = (busy + cold) / node.slots
    reason = f"{busy} in flight / {node.slots} slots" + (", model not loaded" if cold else "")
    return Scored(node, score, busy, reason)


def model_loaded(node: NodeView, model: str) -> bool:
    return normalize_model(model) in node.loaded


class Chooser:
    """Applies a strategy; keeps the round-robin position and the random generator."""

    def __init__(self, strategy: Strategy, seed: int | None = None):
        self.strategy = strategy
        self._turn = count()
        self._rng = random.Random(seed)

    def rank(self, nodes: list[NodeView], in_flight: dict[str, int], model: str) -> list[Scored]:
        """All candidates, best first."""
        scored = [score_least_busy(n, in_flight.get(n.name, 0) + n.in_flight_elsewhere, model) for n in nodes]
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
