"""The Router deployment: picks a node for each request and carries it there.

A thin shell around `core.RoutingCore`: it keeps the core's snapshot of the shared node state
fresh in the background (so the hot path makes no extra round trip), admits each request to
a slot or to the priority queue, calls the chosen node's worker, moves to the next node when
one fails before sending anything, and feeds what each response tells back into learning.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import ray
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from sollol_serve.analysis.profile import RequestProfile
from sollol_serve.config import GatewayConfig, NodeConfig
from sollol_serve.nodes.discovery import start_discovery
from sollol_serve.nodes.lifecycle import add_runtime_node, retire_node
from sollol_serve.nodes.worker import runtime_worker_name
from sollol_serve.protocol import (
    BadRequest,
    Conflict,
    FirstByte,
    GatewayError,
    ModelNotFound,
    NodeError,
    NodeRequest,
    NoNodeAvailable,
    NotFound,
    Routed,
    StreamBroken,
    StreamEnd,
    StreamStart,
    Usage,
    error_message,
    unwrap,
)
from sollol_serve.routing.core import Flight, Grant, RoutingCore
from sollol_serve.routing.failover import backoff_s, hedge_delay_s, should_hedge
from sollol_serve.routing.learning import Observation
from sollol_serve.routing.links import ActorLink, ItemStream, ServeLink, WorkerLink
from sollol_serve.routing.policy import candidates, model_known, needs_shard, warm_targets
from sollol_serve.routing.state import NodeView, normalize_model
from sollol_serve.routing.state_actor import NAMESPACE, state_actor
from sollol_serve.shard.coordinator import coordinator_name, shard_coordinator, shard_node_name

logger = logging.getLogger("ray.serve")


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
            raise StreamBroken(f"stream from {self.node} broke: {error_message(exc)}") from None

    def outcome(self) -> bool | None:
        """True: the node delivered; False: it failed; None: the client left (learn nothing)."""
        return True if self.usage is not None else False if self.broken else None


def observation(flight: Flight, profile: RequestProfile, ok: bool, usage: Usage | None, wall_s: float) -> Observation:
    usage = usage or Usage()
    evaluated = usage.prompt_tokens if usage.prefill_tokens is None else usage.prefill_tokens
    return Observation(
        node=flight.node, model=normalize_model(profile.model), task_type=profile.task_type, ok=ok,
        prompt_tokens=evaluated, completion_tokens=usage.completion_tokens,
        prefill_s=usage.prefill_s, decode_s=usage.decode_s, load_s=usage.load_s, wall_s=wall_s,
        concurrent=flight.concurrent, embedding=profile.task_type == "embedding", ttfb_s=usage.ttfb_s,
        node_queued_s=usage.queued_s, probe=flight.probe, remeasure=flight.remeasure, at=time.time(),
    )


@dataclass
class Attempts:
    """One request's way through the router: nodes tried, time queued, what happened."""

    started: float = field(default_factory=time.perf_counter)
    log: list[dict] = field(default_factory=list)
    tried: set[str] = field(default_factory=set)
    failures: int = 0
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
            "probe": grant.probe,  # sent one above the node's proven slots, to learn its capacity
            "reasoning": f"{chosen.node.name}: {chosen.reason} (best of {len(grant.ranked)} by {strategy})",
            "candidates": [s.as_dict() for s in grant.ranked],
            "attempts": self.log,
            "queue_wait_ms": round(self.waited_s * 1000, 3),
            "routing_ms": round(self.routing_ms, 3),
        }


@dataclass(eq=False)
class Leg:
    """One node's try at a request (a hedged request has two at once)."""

    grant: Grant
    items: ItemStream
    relay: Relay
    first: asyncio.Future  # the worker's first item
    dropped: bool = False

    @property
    def node(self) -> str:
        return self.grant.choice.node.name


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Router:
    async def __init__(self, config: dict, workers: dict[str, DeploymentHandle]):
        self.config = GatewayConfig.model_validate(config)
        self.links: dict[str, WorkerLink] = {name: ServeLink(handle) for name, handle in workers.items()}
        self.rng = random.Random()
        self.state = state_actor(self.config.state_actor_name)
        try:
            self.router_id = serve.get_replica_context().replica_id.unique_id
        except Exception:  # outside Serve (unit use)
            self.router_id = uuid.uuid4().hex
        self.core = RoutingCore(self.config.routing)
        self.discovery = start_discovery(self.config)  # one per gateway, whichever router starts it
        self.shard_models = {normalize_model(m) for m in self.config.shard.models}
        self.shard_coordinator = None  # created on first need
        await self._adopt(*await self.state.sync.remote(self.router_id, {}, []))
        self._refresher = asyncio.create_task(self._refresh_loop())

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.routing.snapshot_interval_s)
            try:
                await self._sync()
            except Exception:  # keep the last snapshot; the actor restarts on its own
                logger.exception("node state sync failed")
                continue
            self._pump()
            self._remeasure_stale()

    async def _sync(self) -> None:
        """Send what this router learned and its in-flight counts; adopt the shared state."""
        pending = self.core.take_pending()
        try:
            synced = await self.state.sync.remote(self.router_id, self.core.in_flight_counts(), pending)
        except Exception:
            self.core.pending[:0] = pending
            raise
        await self._adopt(*synced)

    async def _adopt(self, snapshot: dict[str, NodeView], book) -> None:
        """Take the shared state, routing only to nodes this router can reach: a node added
        at run time becomes routable once its worker actor is found."""
        for name in snapshot.keys() - self.links.keys():
            try:
                actor = await asyncio.to_thread(
                    ray.get_actor, runtime_worker_name(self.config.state_actor_name, name), NAMESPACE)
            except ValueError:  # not created yet, or being removed
                continue
            self.links[name] = ActorLink(actor)
        for name in [n for n, link in self.links.items() if link.runtime and n not in snapshot]:
            del self.links[name]  # removed by another router
        self.core.adopt({n: v for n, v in snapshot.items() if n in self.links}, book)

    # -- admission: a slot now, or a place in the priority queue -------------------------
    async def _admit(self, profile: RequestProfile, exclude: set[str]) -> tuple[Grant, float]:
        """A reserved slot and the seconds waited for it in the queue."""
        now = time.monotonic()
        if not len(self.core.queue):  # nobody waiting: no one to overtake
            grant = self.core.admit_now(profile, exclude, profile.priority, now)
            if grant is not None:
                return grant, 0.0
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
        aging_s = self.core.queue.aging_s
        decisions = self.core.plan([(w.item[0], w.item[1], w.effective_priority(now, aging_s)) for w in waiters], now)
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
        flight = self.core.finish(flight_id, node, time.monotonic(), profile.conversation if ok else None)
        if flight is not None and ok is not None:
            self.core.learn(observation(flight, profile, ok, usage, time.monotonic() - flight.started))
        self._pump()

    # -- re-measuring: a short request of the router's own to a node whose estimate aged ----
    def _remeasure_stale(self) -> None:
        now = time.monotonic()
        for view, model in self.core.stale(now):
            flight_id = self.core.start_remeasure(view, model, now)
            asyncio.create_task(self._remeasure(view, model, flight_id))

    async def _remeasure(self, view: NodeView, model: str, flight_id: int) -> None:
        profile = self.core.remeasure_profile(model)
        body = {"model": view.node_model(model), "prompt": "Count from one to twenty.", "stream": False,
                "options": {"num_predict": profile.tokens_out_est}}
        ok, usage = False, None
        try:
            _, usage = await self.links[view.name].call(NodeRequest("ollama", "generate", body, False, model),
                                                        view.node_model(model))
            ok = True
        except Exception as exc:
            ok = False if is_node_fault(exc) else None
        finally:
            self._release(flight_id, view.name, profile, ok, usage)

    # -- the request path --------------------------------------------------------------
    async def _attempt(self, profile: RequestProfile, attempts: Attempts) -> Grant:
        grant, queued = await self._admit(profile, attempts.tried)
        attempts.admitted(grant, queued)
        return grant

    async def call(self, profile: RequestProfile, req: NodeRequest) -> Routed:
        if should_hedge(profile.priority, self.config.failover):
            return await self._call_hedged(profile, req)
        attempts = await self._attempts_for(profile)
        while True:
            grant = await self._attempt(profile, attempts)
            if grant.probe:  # a watched call shows the node's first byte, which proves the slot early
                routed = await self._watched(profile, req, attempts, grant)
                if routed is not None:
                    return routed
                continue
            node = grant.choice.node
            usage, ok = None, None  # stays None if the caller goes away (cancellation)
            try:
                body, usage = await self.links[node.name].call(req, node.node_model(req.model))
                ok = True
            except Exception as exc:
                ok = False if is_node_fault(exc) else None
                self._failed_attempt(exc, node.name, attempts, profile.model)
            finally:
                self._release(grant.flight_id, node.name, profile, ok, usage)
            if ok:
                attempts.log.append({"node": node.name, "ok": True})
                return Routed(body=body, node=node.name, routing=attempts.routing(profile, self.core.strategy, grant))
            await self._backoff(attempts)

    async def _call_hedged(self, profile: RequestProfile, req: NodeRequest) -> Routed:
        """A non-streamed call that can be hedged: the worker signals the node's first byte."""
        attempts = await self._attempts_for(profile)
        while True:
            routed = await self._watched(profile, req, attempts)
            if routed is not None:
                return routed

    async def _watched(self, profile: RequestProfile, req: NodeRequest, attempts: Attempts,
                       grant: Grant | None = None) -> Routed | None:
        """One watched try (on `grant`, else a new one): the answer, or None when it failed
        after the node's first byte (the next try follows a backoff)."""
        leg, item = await self._start(profile, req, "call_watched", attempts, grant)
        try:
            while isinstance(item, FirstByte):
                item = await leg.items.__anext__()
            body, leg.relay.usage = item
        except Exception as exc:  # failed after its first byte: the client has nothing yet
            leg.relay.broken = is_node_fault(exc)
            self._drop(leg, profile)
            self._failed_attempt(exc, leg.node, attempts, profile.model)
            await self._backoff(attempts)
            return None
        except BaseException:
            self._drop(leg, profile)
            raise
        self._drop(leg, profile)
        attempts.log.append({"node": leg.node, "ok": True})
        return Routed(body=body, node=leg.node, routing=attempts.routing(profile, self.core.strategy, leg.grant))

    async def stream(self, profile: RequestProfile, req: NodeRequest) -> AsyncIterator[object]:
        attempts = await self._attempts_for(profile)
        leg, first = await self._start(profile, req, "stream", attempts)
        try:
            attempts.log.append({"node": leg.node, "ok": True})
            yield StreamStart(node=leg.node)
            async for item in leg.relay.chunks(first, leg.items):
                yield item
            usage = leg.relay.usage
            used = usage.prompt_tokens + usage.completion_tokens if usage else 0
            yield StreamEnd(attempts.routing(profile, self.core.strategy, leg.grant), tokens=used)
        finally:
            self._drop(leg, profile)

    # -- shard groups: models no single node can hold ----------------------------------
    async def _attempts_for(self, profile: RequestProfile) -> Attempts:
        """A new request's Attempts; for a model served by a shard group, the group is started
        if needed and every other node is ruled out. Decided afresh for every request."""
        attempts = Attempts()
        shard = self.config.shard
        if not needs_shard(self.core.snapshot, profile.model, self.shard_models, self.config.routing.vram_headroom):
            return attempts
        name = shard_node_name(profile.model)
        view = self.core.snapshot.get(name)
        if view is None or not view.healthy:
            await self._shards().ensure.remote(profile.model)
            deadline = time.monotonic() + shard.start_timeout_s
            while not (self.core.snapshot.get(name) and self.core.snapshot[name].healthy):
                if time.monotonic() > deadline:
                    raise NoNodeAvailable(f"shard group '{name}' started but is not reachable")
                await asyncio.sleep(self.config.routing.snapshot_interval_s)
        attempts.tried |= {n for n, v in self.core.snapshot.items() if n != name and v.has_model(profile.model)}
        return attempts

    def _shards(self):
        if self.shard_coordinator is None:
            self.shard_coordinator = shard_coordinator(self.config)
        return self.shard_coordinator

    async def shards(self) -> list[dict]:
        """The shard groups; none (and no coordinator started) until one is needed."""
        if self.shard_coordinator is None:
            try:
                self.shard_coordinator = await asyncio.to_thread(
                    ray.get_actor, coordinator_name(self.config.state_actor_name), NAMESPACE)
            except ValueError:
                return []
        return await self.shard_coordinator.status.remote()

    async def shard_action(self, model: str, action: str) -> dict:
        coordinator = self._shards()
        return await (coordinator.ensure if action == "start" else coordinator.stop).remote(model)

    # -- legs: one node's try at a request; several at once when hedging ----------------
    async def _start(self, profile: RequestProfile, req: NodeRequest, method: str,
                     attempts: Attempts, grant: Grant | None = None) -> tuple[Leg, object]:
        """The first leg to produce its first item, and that item (on `grant` first, if
        given). A leg that fails first moves the request to the next node (after a backoff);
        an urgent request whose node has not begun to answer by its p95 time to first byte
        gets a second leg."""
        while True:
            legs = [self._open(grant or await self._attempt(profile, attempts), method, req)]
            grant = None
            try:
                if should_hedge(profile.priority, self.config.failover):
                    await self._hedge(legs, profile, req, method, attempts)
                won = await self._first_of(legs, profile, attempts)
            except BaseException:
                for leg in legs:
                    self._drop(leg, profile)
                raise
            if won is not None:
                return won
            await self._backoff(attempts)

    def _open(self, grant: Grant, method: str, req: NodeRequest) -> Leg:
        node = grant.choice.node
        items = self.links[node.name].open(method, req, node.node_model(req.model))
        return Leg(grant, items, Relay(node.name), asyncio.ensure_future(items.__anext__()))

    async def _hedge(self, legs: list[Leg], profile: RequestProfile, req: NodeRequest, method: str,
                     attempts: Attempts) -> None:
        first = legs[0]
        perf = self.core.book.perf(first.node, normalize_model(profile.model))
        delay = hedge_delay_s(perf, self.config.failover)
        done, _ = await asyncio.wait([first.first], timeout=delay)
        if done:
            return
        grant = self.core.grant_now(profile, attempts.tried, time.monotonic())
        if grant is None:  # no other node has a free slot: a hedge must not queue
            return
        attempts.tried.add(grant.choice.node.name)
        attempts.log.append({"node": grant.choice.node.name, "hedge": True,
                             "after_s": round(delay, 3), "slow_node": first.node})
        legs.append(self._open(grant, method, req))

    async def _first_of(self, legs: list[Leg], profile: RequestProfile,
                        attempts: Attempts) -> tuple[Leg, object] | None:
        """The leg whose first item came first (the others are dropped), or None if all failed."""
        pending = {leg.first: leg for leg in legs}
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                leg = pending.pop(future)
                legs.remove(leg)
                error = future.exception()
                if error is None or isinstance(error, StopAsyncIteration):
                    self.core.began(leg.grant.flight_id, leg.node)
                    for loser in pending.values():
                        legs.remove(loser)
                        self._drop(loser, profile)
                    return leg, Usage() if error else future.result()
                leg.relay.broken = is_node_fault(error)
                self._drop(leg, profile)
                self._failed_attempt(error, leg.node, attempts, profile.model, others_pending=bool(pending))
        return None

    def _drop(self, leg: Leg, profile: RequestProfile) -> None:
        """Free the leg's slot, learn what it showed, stop the node's work if unfinished."""
        if leg.dropped:
            return
        leg.dropped = True
        self._release(leg.grant.flight_id, leg.node, profile, leg.relay.outcome(), leg.relay.usage)
        if leg.relay.usage is None:
            leg.first.cancel()
            leg.items.cancel()

    def _failed_attempt(self, exc: BaseException, node: str, attempts: Attempts, model: str,
                        others_pending: bool = False) -> None:
        """Record a failed attempt; raise unless another node may still succeed."""
        error = unwrap(exc)
        if not isinstance(error, NodeError):
            if isinstance(error, GatewayError) and not isinstance(error, StreamBroken):
                raise error
            error = NodeError(f"worker for {node} failed: {error_message(error)}", 502)
        attempts.log.append({"node": node, "ok": False, "status": error.status, "error": error.message})
        attempts.failures += 1
        if not error.retryable:
            raise error
        if others_pending:
            return
        if attempts.failures >= self.config.failover.max_attempts:
            raise NoNodeAvailable(f"{attempts.failures} attempts failed (nodes: {', '.join(sorted(attempts.tried))});"
                                  f" last error: {error.message}")
        if not candidates(self.core.snapshot, model, attempts.tried):
            raise NoNodeAvailable(f"every node that has '{model}' failed or is unavailable; "
                                  f"last error: {error.message}")

    async def _backoff(self, attempts: Attempts) -> None:
        await asyncio.sleep(backoff_s(attempts.failures, self.config.failover, self.rng))

    # -- run-time node management (the admin API) --------------------------------------
    async def add_node(self, node: dict) -> dict:
        try:
            config = NodeConfig.model_validate(node)
        except ValidationError as exc:
            raise BadRequest(f"invalid node: {exc.errors()[0]['msg']}") from None
        known = await self.state.snapshot.remote()
        if config.name in known or any(v.url == config.url for v in known.values()):
            raise Conflict(f"node '{config.name}' or a node at {config.url} is already in the cluster")
        if config.name in {n.name for n in self.config.nodes}:
            raise Conflict(f"node '{config.name}' is in the gateway's config; it returns when the app is redeployed")
        actor, probed = await add_runtime_node(self.state, config, self.config)
        self.links[config.name] = ActorLink(actor)
        await self._sync()  # routable here at once; other router replicas see it within a refresh
        return probed

    async def drain_node(self, name: str, drain: bool = True) -> dict:
        await self._known(name)
        await (self.state.drain if drain else self.state.undrain).remote(name)
        return {"node": name, "draining": drain}

    async def remove_node(self, name: str) -> dict:
        """Drain the node now and remove it once it has finished what it has."""
        await self._known(name)
        await self.state.drain.remote(name)
        asyncio.create_task(self._remove_when_idle(name))
        return {"node": name, "status": "draining; removed when its requests finish"}

    async def _known(self, name: str) -> None:
        if name not in await self.state.snapshot.remote():
            raise NotFound(f"node '{name}' not found")

    async def _remove_when_idle(self, name: str) -> None:
        await retire_node(self.state, name, self.config)
        self.core.snapshot.pop(name, None)  # with its link, so nothing routes to it in between
        self.links.pop(name, None)

    # -- cluster views used by the ingress ---------------------------------------------
    async def nodes(self) -> list[dict]:
        reports = await self.state.reports.remote()
        out = []
        for v in self.core.snapshot.values():
            report = reports.get(v.name)
            out.append({
                "name": v.name, "url": v.url, "kind": v.kind, "healthy": v.healthy, "slots": self.core.slots(v),
                "slots_source": v.slots_source, "slots_configured": v.slots if v.slots_source == "configured" else None,
                "slots_learned": self.core.book.learned_slots(v.name),
                "capacity": self.core.book.capacity_of(v.name).as_dict(),
                "in_flight": self.core.busy(v), "breaker": v.breaker, "draining": v.draining,
                "added_at_run_time": self.links[v.name].runtime,
                "models": sorted(v.models.values()), "loaded": sorted(v.loaded), "error": v.error,
                "worker_ip": report.worker_ip if report else None,
                "worker_node_id": report.worker_node_id if report else None,
                "telemetry": report.telemetry if report else None,
                "decode_tps": {model: round(perf.decode_tps.mean, 2) for (node, model), perf in self.core.book.models.items()
                               if node == v.name and perf.decode_tps.n},
            })
        return out

    async def queue_stats(self) -> dict:
        """Requests waiting now, and how long served requests waited, per priority."""
        stats = self.core.queue.wait_stats
        return {"router": self.router_id, "waiting": len(self.core.queue), "max": self.core.queue.max_size,
                "aging_s": self.core.queue.aging_s,
                "waited_by_priority": {str(p): stats[p].as_dict() for p in sorted(stats)}}

    async def knows(self, model: str) -> bool:
        """Whether some node (or a shard group) serves `model`, up or down."""
        return model_known(self.core.snapshot, model) or normalize_model(model) in self.shard_models

    async def tags(self) -> list[dict]:
        return await self.state.tags.remote()

    async def ps(self) -> list[dict]:
        healthy = [v.name for v in self.core.snapshot.values() if v.healthy]
        results = await asyncio.gather(*(self.links[n].ask("ps") for n in healthy), return_exceptions=True)
        return [entry for r in results if isinstance(r, list) for entry in r]

    async def show(self, body: dict, model: str) -> dict:
        views = candidates(self.core.snapshot, model)
        if not views:
            raise ModelNotFound(f"model '{model}' not found on any node")
        for view in views:
            try:
                return await self.links[view.name].ask("show", body)
            except Exception as exc:
                error = unwrap(exc)
                if isinstance(error, NodeError) and not error.retryable:
                    raise error from None
        raise NoNodeAvailable(f"no node answered /api/show for '{model}'")

    async def warm(self, model: str, names: list[str] | None, keep_alive: str | int | None) -> AsyncIterator[dict]:
        """Load `model` on the chosen nodes at once; an event as each one finishes."""
        targets = warm_targets(self.core.snapshot, model, names)
        yield {"status": "loading", "model": model, "nodes": [v.name for v in targets]}
        pending = {asyncio.ensure_future(self.links[v.name].ask("warm", v.node_model(model), keep_alive)): v.name
                   for v in targets}
        loaded = 0
        try:
            while pending:
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for future in done:
                    node = pending.pop(future)
                    error = future.exception()
                    if error is None:
                        loaded += 1
                        seconds = future.result()
                        yield {"node": node, "status": "loaded",
                               "load_s": None if seconds is None else round(seconds, 3)}
                    else:
                        yield {"node": node, "status": "error", "error": error_message(error)}
        finally:
            for future in pending:
                future.cancel()
        yield {"status": "done", "model": model, "loaded": loaded, "failed": len(targets) - loaded}

    async def versions(self) -> list[str]:
        reports = await self.state.reports.remote()
        return [r.version for r in reports.values() if r.healthy and r.version]
