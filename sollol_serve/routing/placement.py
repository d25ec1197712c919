"""Placement that follows demand: load a model on one more node before its requests need it.

Routing alone decides one request at a time: a request for a popular model waits for a node
that has it loaded rather than pay a load (and an eviction) elsewhere, and so does the next,
and the next; the model never gets a second node while the queue on its first grows. So, when
a model is wanted (a request arrives for it) and the wait for its warm nodes is longer than
loading it on another node, that node loads it now, in the background (as `sollol warm` does
by hand), while the request goes where it is predicted soonest. The node chosen is the one
where the load disturbs least: no eviction, or the eviction of the least-wanted model, and no
running requests to wait for; then the sooner ready. At most one such load per model at a time,
and only for a model asked for often enough that more requests will come while it loads.

An operator's pin (`models: {name: {min_nodes: N}}`) is kept the same way, without waiting
for demand: while fewer than N nodes have the model loaded, it is loaded on one more.
"""

from __future__ import annotations

from dataclasses import dataclass

from sollol_serve.routing.policy import Scored
from sollol_serve.routing.residency import EVICTION_HORIZON_S, ColdCost


@dataclass(frozen=True, slots=True)
class Warm:
    node: str
    model: str
    cold: ColdCost  # what the load costs there (its victim, if any)
    wait_s: float  # the wait for the model's warm nodes that called for it


def warm_ahead(model: str, ranked: list[Scored], demand_rps: float, loading_anywhere: bool) -> Warm | None:
    """The node to load `model` on now, or None. `ranked`: the request's candidates with their
    predictions; `demand_rps`: requests per second for the model; `loading_anywhere`: a load of
    it is under way already."""
    if loading_anywhere:
        return None
    warm = [s for s in ranked if s.prediction is not None and s.prediction.cold is None]
    cold = [s for s in ranked if s.prediction is not None and s.prediction.cold is not None and s.node.routable]
    if not warm or not cold:
        return None
    wait = min(s.prediction.wait_s for s in warm)

    target = min(cold, key=_disturbance)
    c = target.prediction.cold
    if wait <= c.load_s + c.drain_s + c.queued_load_s:  # its warm nodes answer sooner than a load
        return None
    if demand_rps * c.load_s < 1.0:  # nobody else is coming while it loads
        return None
    # What the model's next requests save, against what the victim's next ones will pay.
    if wait * demand_rps * EVICTION_HORIZON_S < c.eviction_s:
        return None
    return Warm(target.node.name, model, c, wait)


def _disturbance(s: Scored) -> tuple[float, float]:
    """What loading there costs others (evicted model, drained requests, a load waited for),
    then how soon the node would answer."""
    c = s.prediction.cold
    return c.eviction_s + c.drain_s + c.queued_load_s, s.prediction.total_s


def pin_target(model: str, ranked: list[Scored], min_nodes: int, loading_anywhere: bool) -> Warm | None:
    """The node to load a pinned model on now, or None: while fewer than `min_nodes` of its
    candidates have it loaded, one load at a time, where it disturbs least."""
    if loading_anywhere:
        return None
    known = [s for s in ranked if s.prediction is not None]
    warm = [s for s in known if s.prediction.cold is None]
    cold = [s for s in known if s.prediction.cold is not None and s.node.routable]
    if len(warm) >= min_nodes or not cold:
        return None
    target = min(cold, key=_disturbance)
    return Warm(target.node.name, model, target.prediction.cold, 0.0)
