"""Predicted completion time of a request on a node: the score of the `intelligent` strategy.

    total = wait for a slot + cold load (if the model isn't resident) + prefill + decode,
            inflated by recent failures (expected retries) and, for urgent requests, by the
            uncertainty of the node's speed.

A cold model's wait (`residency.ColdCost`: a load under way for another model, the victim's
running requests, its own load) runs alongside the wait for a slot, as Ollama loads a model
before the request takes a slot; what evicting the victim costs its next requests is added
to the score, not to this request's time.

Speeds come from what the node has shown (`learning.ModelPerf`), leaning back toward the
cluster's typical speed for the model (`Priors`) as they age; a node not yet measured borrows
that typical speed outright, so it gets tried and learned. A prompt prefix the node holds in
its KV cache (`cached_tokens`) costs no prefill.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from statistics import median

from sollol_serve.analysis.profile import RequestProfile
from sollol_serve.cluster.learning import Ewma, ModelPerf, PerfBook
from sollol_serve.routing.residency import ColdCost

MIN_SUCCESS = 0.2


@dataclass(slots=True)
class Priors:
    """Fallback speeds for a node x model with no samples yet."""

    prefill_tps: float = 500.0
    decode_tps: float = 30.0
    embed_tps: float = 1000.0
    load_s: float = 5.0

    @classmethod
    def from_book(cls, book: PerfBook, model: str) -> "Priors":
        """The median measured speed of `model` across nodes, else of any model."""
        perfs = [p for (_, m), p in book.models.items() if m == model] or list(book.models.values())
        base = cls()

        def med(values: list[float], default: float) -> float:
            return median(values) if values else default

        return cls(
            prefill_tps=med([p.prefill_tps.mean for p in perfs if p.prefill_tps.n], base.prefill_tps),
            decode_tps=med([p.decode_tps.mean for p in perfs if p.decode_tps.n], base.decode_tps),
            embed_tps=med([p.embed_tps.mean for p in perfs if p.embed_tps.n], base.embed_tps),
            load_s=med([p.load_s.mean for p in perfs if p.load_s.n], base.load_s),
        )


@dataclass(slots=True)
class Prediction:
    node: str
    total_s: float
    wait_s: float
    load_s: float
    prefill_s: float
    decode_s: float
    free_slot: bool
    factors: dict[str, float] = field(default_factory=dict)
    cold: ColdCost | None = None  # what loading the model there costs (None: it is loaded)

    def as_dict(self) -> dict:
        out = {"predicted_s": round(self.total_s, 4), "wait_s": round(self.wait_s, 4),
               "load_s": round(self.load_s, 4), "prefill_s": round(self.prefill_s, 4),
               "decode_s": round(self.decode_s, 4), "free_slot": self.free_slot,
               "factors": {k: round(v, 4) for k, v in self.factors.items()}}
        if self.cold is not None:
            out["cold"] = self.cold.as_dict()
        return out


def slot_wait(remaining_s: list[float], slots: int) -> float:
    """Seconds until a slot frees, given each in-flight request's predicted remaining time.
    With n >= slots in flight, the new request starts when the (n - slots + 1)-th finishes."""
    n = len(remaining_s)
    if n < slots:
        return 0.0
    return sorted(remaining_s)[n - slots]


def risk_z(priority: int) -> float:
    """How many standard deviations of speed uncertainty a request pays for: urgent
    requests prefer a node that is reliably fast over one that is fast on average."""
    return 1.5 if priority >= 8 else 0.5 if priority >= 4 else 0.0


def _speed(e: Ewma | None, prior: float, now: float) -> float:
    return e.toward(prior, now) if e is not None and e.n else prior


def predict(node: str, slots: int, profile: RequestProfile, perf: ModelPerf | None, priors: Priors,
            remaining_s: list[float], resident: bool, now: float = 0.0, cached_tokens: int = 0,
            cold: ColdCost | None = None) -> Prediction:
    """`remaining_s`: predicted seconds left for each request in flight on the node.
    `resident`: the model is loaded on the node (or already being loaded for it).
    `now`: wall-clock time, for the age of the estimates (0: the current time).
    `cold`: for a model not resident, what loading it there costs (else its learned load time)."""
    wait = slot_wait(remaining_s, slots)
    measured = perf is not None and perf.samples > 0
    load = 0.0 if resident else cold.load_s if cold else (perf.load_s.mean if perf and perf.load_s.n else priors.load_s)
    before = 0.0  # the waits that run alongside the slot wait: loads queued there, the victim's drain
    if not resident and cold is not None:
        before = cold.queued_load_s + cold.drain_s
        wait = max(wait - before - load, 0.0)  # what is left of the slot wait once it is loaded
    spread = 0.0
    fresh = now or time.time()
    if profile.task_type == "embedding":
        tps = _speed(perf and perf.embed_tps, priors.embed_tps, fresh)
        prefill, decode = profile.tokens_in / tps, 0.0
        if perf and perf.embed_tps.n:
            spread = prefill * perf.embed_tps.relative_std()
    else:
        prefill_tps = _speed(perf and perf.prefill_tps, priors.prefill_tps, fresh)
        decode_tps = _speed(perf and perf.decode_tps, priors.decode_tps, fresh)
        prefill = max(profile.tokens_in - cached_tokens, 1) / prefill_tps
        decode = profile.tokens_out_est / decode_tps
        if perf and perf.decode_tps.n:
            spread = decode * perf.decode_tps.relative_std()
    service = load + prefill + decode
    success = max(perf.success.mean, MIN_SUCCESS) if perf and perf.success.n else 1.0
    risk = risk_z(profile.priority) * spread
    eviction = cold.eviction_s if cold is not None and not resident else 0.0
    total = (wait + before + service) / success + risk + eviction
    factors = {"wait_s": wait, "service_s": service, "failure_inflation": 1 / success, "risk_s": risk}
    if before:
        factors["cold_wait_s"] = before
    if eviction:
        factors["eviction_s"] = eviction
    if not measured:
        factors["unmeasured"] = 1.0
    if cached_tokens:
        factors["cached_tokens"] = float(cached_tokens)
    return Prediction(node, total, wait, load, prefill, decode, len(remaining_s) < slots, factors,
                      cold if not resident else None)
