"""The shared picture of the cluster: what each node has and how busy it is.

`ClusterState` is plain data and logic; `state_actor.NodeStateActor` holds one instance for
the whole app. Workers report inventories into it, routers sync their in-flight counts with
it and read back a snapshot of `NodeView`s.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

from sollol_serve.cluster.breaker import (
    DEFAULT_POLICY,
    Breaker,
    BreakerPolicy,
    BreakerState,
)
from sollol_serve.cluster.learning import Observation, PerfBook
from sollol_serve.names import normalize_model
from sollol_serve.protocol import NOT_PROBED, NodeReport

SlotsSource = Literal["configured", "reported", "learned"]
# A router's in-flight counts stop counting once it has missed this many syncs (and at least
# this long: a busy replica's sync can lag a few seconds without it being gone).
ROUTER_MISSED_SYNCS = 10
ROUTER_SILENT_S = 5.0


def _entry_name(entry: dict) -> str:
    return entry.get("name") or entry.get("model") or ""


def loaded_contexts(loaded: list[dict]) -> dict[str, int]:
    """Loaded model -> its context length, where the node says (Ollama's /api/ps)."""
    out = {}
    for entry in loaded:
        ctx = entry.get("context_length")
        if isinstance(ctx, int) and not isinstance(ctx, bool) and ctx > 0:
            out[normalize_model(_entry_name(entry))] = ctx
    return out


@dataclass(slots=True)
class NodeView:
    """A router's view of one node."""

    name: str
    url: str
    kind: str | None
    healthy: bool
    models: dict[str, str]  # normalized name -> the name the node uses
    loaded: frozenset[str]
    slots: int
    slots_known: bool  # configured, or reported by the node (llama-server); else learned
    in_flight_elsewhere: int  # requests other router replicas have on this node
    slots_source: SlotsSource = "learned"
    error: str | None = None
    breaker: BreakerState = "closed"
    draining: bool = False  # finishes what it has, gets nothing new
    vram_free_mb: int | None = None  # None: no GPU readings (a CPU node, or none yet)
    ram_available_mb: int | None = None
    model_sizes: dict[str, int] = field(default_factory=dict)  # normalized name -> bytes on disk
    # normalized name -> the context (tokens) the model is loaded with now
    contexts: dict[str, int] = field(default_factory=dict)
    registration: int = 0  # which registration of this name (a removed node's successor has a new one)
    worker_started_at: float | None = None  # when the worker that last reported started
    probed_at: float = 0.0  # wall time of the report `loaded` comes from (Ollama's /api/ps)
    digests: dict[str, str] = field(default_factory=dict)  # normalized name -> its digest (/api/tags)
    worker_down: bool = False  # this router saw its worker process die, and no newer one has reported

    @property
    def routable(self) -> bool:
        """May get new work (a half-open node gets a trial request)."""
        return self.healthy and not self.draining and self.breaker != "open" and not self.worker_down

    def has_model(self, model: str) -> bool:
        return normalize_model(model) in self.models

    def node_model(self, model: str) -> str:
        """The node's own name for `model` (OpenAI-compatible servers want it exactly)."""
        return self.models.get(normalize_model(model), model)


@dataclass
class ClusterState:
    configured_slots: dict[str, int | None] = field(default_factory=dict)
    reports: dict[str, NodeReport] = field(default_factory=dict)
    # router replica id -> node -> in-flight requests
    in_flight: dict[str, dict[str, int]] = field(default_factory=dict)
    # router replica id -> when its counts stop counting if it has not synced again
    expires: dict[str, float] = field(default_factory=dict)
    # what every router has learned, merged
    book: PerfBook = field(default_factory=PerfBook)
    breakers: dict[str, Breaker] = field(default_factory=dict)
    draining: set[str] = field(default_factory=set)
    # Bumped each time a name is registered anew (after a removal): a router holding the
    # handle of the removed node's worker must find the new one, even if it never saw the gap.
    registrations: dict[str, int] = field(default_factory=dict)

    def register(self, name: str, url: str, slots: int | None, policy: BreakerPolicy = DEFAULT_POLICY) -> None:
        if name not in self.reports:
            self.registrations[name] = self.registrations.get(name, 0) + 1
        self.configured_slots[name] = slots
        self.breakers.setdefault(name, Breaker(policy))
        self.reports.setdefault(name, NodeReport(name=name, url=url, kind=None, healthy=False, error=NOT_PROBED))

    def report(self, report: NodeReport) -> None:
        if report.name not in self.configured_slots:  # removed while its probe was on the way
            return
        before = self.reports.get(report.name)
        if before is not None and not report.healthy and not report.models:
            # Remember what a node that went down had: a request for its models is then a
            # 503 (its nodes are down), not a 404 (no such model).
            report.models = before.models
        if report.healthy and before is not None and not before.healthy:
            self.breakers[report.name].probe_succeeded(time.monotonic())
        self.reports[report.name] = report

    def drain(self, name: str) -> None:
        self.draining.add(name)

    def undrain(self, name: str) -> None:
        self.draining.discard(name)

    def remove(self, name: str) -> None:
        for table in (self.configured_slots, self.reports, self.breakers):
            table.pop(name, None)
        self.draining.discard(name)

    def in_flight_total(self, name: str) -> int:
        return sum(counts.get(name, 0) for counts in self.in_flight.values())

    def sync(self, router_id: str, in_flight: dict[str, int], observations: list[Observation] = (),
             every_s: float = 0.5, now: float | None = None) -> tuple[dict[str, NodeView], PerfBook]:
        """A router's periodic exchange (every `every_s`): its in-flight counts and what it
        learned go in; the cluster as others see it and everything learned come back."""
        now = time.monotonic() if now is None else now
        self.in_flight[router_id] = dict(in_flight)
        self.expires[router_id] = now + max(ROUTER_SILENT_S, ROUTER_MISSED_SYNCS * every_s)
        self._forget_silent_routers(now)
        self.book.merge_from(list(observations))
        for o in observations:
            if o.node in self.breakers and o.phase == "done":
                self.breakers[o.node].record(o.ok, now)
        return self.snapshot(exclude_router=router_id), self.book

    def snapshot(self, exclude_router: str | None = None) -> dict[str, NodeView]:
        views = {}
        now = time.monotonic()
        for name, r in self.reports.items():
            others = sum(v.get(name, 0) for rid, v in self.in_flight.items() if rid != exclude_router)
            configured = self.configured_slots.get(name)
            known = configured or r.slots
            views[name] = NodeView(
                name=name,
                url=r.url,
                kind=r.kind,
                healthy=r.healthy,
                models={normalize_model(_entry_name(m)): _entry_name(m) for m in r.models},
                loaded=frozenset(normalize_model(_entry_name(m)) for m in r.loaded),
                slots=known or 1,
                slots_known=known is not None,
                in_flight_elsewhere=others,
                slots_source="configured" if configured else "reported" if r.slots else "learned",
                error=r.error,
                breaker=self.breakers[name].state(now) if name in self.breakers else "closed",
                draining=name in self.draining,
                vram_free_mb=(r.telemetry or {}).get("vram_free_mb"),
                ram_available_mb=(r.telemetry or {}).get("ram_available_mb"),
                model_sizes={normalize_model(_entry_name(m)): int(m.get("size") or 0) for m in r.models},
                contexts=loaded_contexts(r.loaded),
                registration=self.registrations.get(name, 0),
                worker_started_at=r.worker_started_at,
                probed_at=r.at,
                digests={normalize_model(_entry_name(m)): str(m.get("digest") or "") for m in r.models},
            )
        return views

    def tags(self) -> list[dict]:
        """Union of the healthy nodes' installed models, one entry per model name."""
        seen: dict[str, dict] = {}
        for r in self.reports.values():
            if not r.healthy:
                continue
            for entry in r.models:
                seen.setdefault(normalize_model(_entry_name(entry)), entry)
        return sorted(seen.values(), key=lambda e: e.get("name", ""))

    def forget_router(self, router_id: str) -> None:
        self.in_flight.pop(router_id, None)
        self.expires.pop(router_id, None)

    def _forget_silent_routers(self, now: float) -> None:
        """A router that stopped syncing died (killed, or its app deleted) holding slots whose
        outcomes will never come: without this its counts would fill those nodes for good."""
        for router_id in [r for r, at in self.expires.items() if at < now]:
            self.forget_router(router_id)
