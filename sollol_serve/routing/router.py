"""The Router deployment: picks a node for each request and carries it there.

A thin shell around `core.RoutingCore`: it keeps the core's snapshot of the shared node state
fresh in the background (so the hot path makes no extra round trip), admits each request to
a slot or to the priority queue, calls the chosen node's worker, moves to the next node when
one fails before sending anything, and feeds what each response tells back into learning.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from ray import serve
from ray.serve.handle import DeploymentHandle

from sollol_serve.analysis.profile import RequestProfile
from sollol_serve.config import GatewayConfig
from sollol_serve.protocol import (
    GatewayError,
    ModelNotFound,
    NodeError,
    NodeRequest,
    NoNodeAvailable,
    Routed,
    StreamBroken,
    StreamEnd,
    StreamStart,
    Usage,
)
from sollol_serve.routing.core import Flight, Grant, RoutingCore
from sollol_serve.routing.learning import Observation
from sollol_serve.routing.policy import candidates
from sollol_serve.routing.state import normalize_model
from sollol_serve.routing.state_actor import state_actor

logger = logging.getLogger("ray.serve")


def unwrap(exc: BaseException) -> BaseException:
    """The user exception inside a Ray task error, if any."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def is_node_fault(exc: BaseException) -> bool:
    """A failure that counts against the node (unreachable, 5xx, worker crash), not a
    client error the node rightly refused."""
    error = unwrap(exc)
    if isinstance(error, NodeError):
        return error.retryable
    return not isinstance(error, GatewayError)


class Relay:
    """Passes a worker's chunks through as they come and keeps the closing Usage here
    (it feeds learning, not the client). Failures after the first chunk: StreamBroken."""

    def __init__(self, node: str):
        self.node = node
        self.usage: Usage | None = None
        self.broken = False  # the node failed mid-stream (not the client going away)

    def _is_chunk(self, item: object) -> bool:
        if isinstance(item, Usage):
            self.usage = item
        return isinstance(item, dict)

    async def chunks(self, first: object, items: AsyncIterator[object]) -> AsyncIterator[dict]:
        try:
            if self._is_chunk(first):
                yield first
            async for item in items:
                if self._is_chunk(item):
                    yield item
        except Exception as exc:
            self.broken = True
            error = unwrap(exc)
            message = error.message if isinstance(error, GatewayError) else f"{type(error).__name__}: {error}"
            raise StreamBroken(f"stream from {self.node} broke: {message}") from None

    def outcome(self) -> bool | None:
        """True: the node delivered; False: it failed; None: the client left (learn nothing)."""
        return True if self.usage is not None else False if self.broken else None


def observation(flight: Flight, profile: RequestProfile, ok: bool, usage: Usage | None, wall_s: float) -> Observation:
    usage = usage or Usage()
    return Observation(
        node=flight.node, model=normalize_model(profile.model), task_type=profile.task_type, ok=ok,
        prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
        prefill_s=usage.prefill_s, decode_s=usage.decode_s, load_s=usage.load_s, wall_s=wall_s,
        concurrent=flight.concurrent, embedding=profile.task_type == "embedding",
    )


@dataclass
class Attempts:
    """One request's way through the router: nodes tried, time queued, what happened."""

    started: float = field(default_factory=time.perf_counter)
    log: list[dict] = field(default_factory=list)
    tried: set[str] = field(default_factory=set)
    waited_s: float = 0.0
    routing_ms: float = 0.0

    def admitted(self, grant: Grant, queued_s: float) -> None:
        self.waited_s += queued_s
        self.routing_ms = (time.perf_counter() - self.started - self.waited_s) * 1000
        self.tried.add(grant.choice.node.name)

    def routing(self, profile: RequestProfile, strategy: str, grant: Grant) -> dict:
        """`_sollol_routing`: the choice, every candidate with its prediction, the attempts."""
        chosen = grant.choice
        return {
            "node": chosen.node.name,
            "host": chosen.node.url,
            "strategy": strategy,
            "task_type": profile.task_type,
            "complexity": profile.complexity,
            "priority": profile.priority,
            "tokens_in": profile.tokens_in,
            "tokens_out_est": profile.tokens_out_est,
            "score": round(chosen.score, 4),
            "reasoning": f"{chosen.node.name}: {chosen.reason} (best of {len(grant.ranked)} by {strategy})",
            "candidates": [s.as_dict() for s in grant.ranked],
            "attempts": self.log,
            "queue_wait_ms": round(self.waited_s * 1000, 3),
            "routing_ms": round(self.routing_ms, 3),
        }


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Router:
    async def __init__(self, config: dict, workers: dict[str, DeploymentHandle]):
        self.config = GatewayConfig.model_validate(config)
        self.workers = workers
        self.state = state_actor(self.config.state_actor_name)
        try:
            self.router_id = serve.get_replica_context().replica_id.unique_id
        except Exception:  # outside Serve (unit use)
            self.router_id = uuid.uuid4().hex
        self.core = RoutingCore(self.config.routing)
        self.core.adopt(*await self.state.sync.remote(self.router_id, {}, []))
        self._refresher = asyncio.create_task(self._refresh_loop())

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.routing.snapshot_interval_s)
            pending = self.core.take_pending()
            try:
                synced = await self.state.sync.remote(self.router_id, self.core.in_flight_counts(), pending)
            except Exception:  # keep the last snapshot; the actor restarts on its own
                self.core.pending[:0] = pending
                logger.exception("node state sync failed")
                continue
            self.core.adopt(*synced)
            self._pump()

    # -- admission: a slot now, or a place in the priority queue -------------------------
    async def _admit(self, profile: RequestProfile, exclude: set[str]) -> tuple[Grant, float]:
        """A reserved slot and the seconds waited for it in the queue."""
        now = time.monotonic()
        if not len(self.core.queue):  # nobody waiting: no one to overtake
            ranked = self.core.rank(profile, exclude, now)
            choice = self.core.pick(ranked)
            if choice is not None:
                return Grant(ranked, choice, self.core.start(choice, profile, now)), 0.0
        granted: asyncio.Future = asyncio.get_running_loop().create_future()
        waiter = self.core.queue.push((profile, exclude, granted), profile.priority, now, self.core.retry_after_s())
        self._pump()
        try:
            grant = await asyncio.wait_for(asyncio.shield(granted), self.config.routing.queue_timeout_s)
        except asyncio.TimeoutError:
            self.core.queue.remove(waiter, time.monotonic(), served=False)
            raise NoNodeAvailable(f"no slot for '{profile.model}' within "
                                  f"{self.config.routing.queue_timeout_s:.0f} s in the queue") from None
        except asyncio.CancelledError:
            self._abandon(waiter, granted)
            raise
        return grant, time.monotonic() - now

    def _abandon(self, waiter, granted: asyncio.Future) -> None:
        """The caller went away while queued: give back its place, or its slot."""
        if granted.done() and not granted.cancelled() and granted.exception() is None:
            grant = granted.result()
            self.core.finish(grant.flight_id, grant.choice.node.name, time.monotonic())
            self._pump()
        elif waiter in self.core.queue:
            self.core.queue.remove(waiter, time.monotonic(), served=False)

    def _pump(self) -> None:
        """Hand free slots to waiters, most urgent first (with aging)."""
        if not len(self.core.queue):
            return
        now = time.monotonic()
        waiters = []
        for waiter in self.core.queue.ordered(now):
            if waiter.item[2].done():  # its caller gave up
                self.core.queue.remove(waiter, now, served=False)
            else:
                waiters.append(waiter)
        decisions = self.core.plan([(w.item[0], w.item[1]) for w in waiters], now)
        for waiter, decision in zip(waiters, decisions):
            if decision is None:
                continue
            self.core.queue.remove(waiter, now, served=isinstance(decision, Grant))
            granted = waiter.item[2]
            if isinstance(decision, Grant):
                granted.set_result(decision)
            else:
                granted.set_exception(decision)

    def _release(self, flight_id: int, node: str, profile: RequestProfile, ok: bool | None,
                 usage: Usage | None) -> None:
        """Free the slot; learn from the outcome unless there is none (the client left)."""
        flight = self.core.finish(flight_id, node, time.monotonic())
        if flight is not None and ok is not None:
            self.core.learn(observation(flight, profile, ok, usage, time.monotonic() - flight.started))
        self._pump()

    # -- the request path --------------------------------------------------------------
    async def _attempt(self, profile: RequestProfile, attempts: Attempts) -> Grant:
        grant, queued = await self._admit(profile, attempts.tried)
        attempts.admitted(grant, queued)
        return grant

    async def call(self, profile: RequestProfile, req: NodeRequest) -> Routed:
        attempts = Attempts()
        while True:
            grant = await self._attempt(profile, attempts)
            node = grant.choice.node
            usage, ok = None, None  # stays None if the caller goes away (cancellation)
            try:
                body, usage = await self.workers[node.name].call.remote(req, node.node_model(req.model))
                ok = True
            except Exception as exc:
                ok = False if is_node_fault(exc) else None
                self._failed_attempt(exc, node.name, attempts, profile.model)
                continue
            finally:
                self._release(grant.flight_id, node.name, profile, ok, usage)
            attempts.log.append({"node": node.name, "ok": True})
            return Routed(body=body, node=node.name, routing=attempts.routing(profile, self.core.strategy, grant))

    def _failed_attempt(self, exc: BaseException, node: str, attempts: Attempts, model: str) -> None:
        """Record a failed attempt; raise unless another node may succeed."""
        error = unwrap(exc)
        if not isinstance(error, NodeError):
            if isinstance(error, GatewayError):
                raise error
            error = NodeError(f"worker for {node} failed: {type(error).__name__}: {error}", 502)
        attempts.log.append({"node": node, "ok": False, "status": error.status, "error": error.message})
        if not error.retryable:
            raise error
        if not candidates(self.core.snapshot, model, attempts.tried):
            raise NoNodeAvailable(f"every node that has '{model}' failed; last error: {error.message}")

    async def stream(self, profile: RequestProfile, req: NodeRequest) -> AsyncIterator[object]:
        attempts = Attempts()
        while True:
            grant = await self._attempt(profile, attempts)
            node = grant.choice.node
            items = self.workers[node.name].stream.options(stream=True).remote(req, node.node_model(req.model))
            relay = Relay(node.name)
            try:
                try:
                    first = await items.__anext__()
                except StopAsyncIteration:
                    first = Usage()
                except Exception as exc:
                    relay.broken = is_node_fault(exc)
                    self._failed_attempt(exc, node.name, attempts, profile.model)
                    continue
                attempts.log.append({"node": node.name, "ok": True})
                yield StreamStart(node=node.name)
                async for item in relay.chunks(first, items):
                    yield item
                used = relay.usage.prompt_tokens + relay.usage.completion_tokens if relay.usage else 0
                yield StreamEnd(attempts.routing(profile, self.core.strategy, grant), tokens=used)
                return
            finally:
                self._release(grant.flight_id, node.name, profile, relay.outcome(), relay.usage)
                if relay.usage is None:
                    items.cancel()  # the client went away or the stream broke: stop the node's work

    # -- cluster views used by the ingress ---------------------------------------------
    async def nodes(self) -> list[dict]:
        return [
            {"name": v.name, "url": v.url, "kind": v.kind, "healthy": v.healthy, "slots": self.core.slots(v),
             "in_flight": self.core.busy(v),
             "models": sorted(v.models.values()), "loaded": sorted(v.loaded), "error": v.error}
            for v in self.core.snapshot.values()
        ]

    async def queue_stats(self) -> dict:
        """Requests waiting now, and how long served requests waited, per priority."""
        stats = self.core.queue.wait_stats
        return {"router": self.router_id, "waiting": len(self.core.queue), "max": self.core.queue.max_size,
                "aging_s": self.core.queue.aging_s,
                "waited_by_priority": {str(p): stats[p].as_dict() for p in sorted(stats)}}

    async def tags(self) -> list[dict]:
        return await self.state.tags.remote()

    async def ps(self) -> list[dict]:
        healthy = [v.name for v in self.core.snapshot.values() if v.healthy]
        results = await asyncio.gather(*(self.workers[n].ps.remote() for n in healthy), return_exceptions=True)
        return [entry for r in results if isinstance(r, list) for entry in r]

    async def show(self, body: dict, model: str) -> dict:
        views = candidates(self.core.snapshot, model)
        if not views:
            raise ModelNotFound(f"model '{model}' not found on any node")
        for view in views:
            try:
                return await self.workers[view.name].show.remote(body)
            except Exception as exc:
                error = unwrap(exc)
                if isinstance(error, NodeError) and not error.retryable:
                    raise error from None
        raise NoNodeAvailable(f"no node answered /api/show for '{model}'")

    async def versions(self) -> list[str]:
        reports = await self.state.reports.remote()
        return [r.version for r in reports.values() if r.healthy and r.version]
