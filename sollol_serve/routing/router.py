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
from sollol_serve.routing.core import Flight, RoutingCore
from sollol_serve.routing.learning import Observation
from sollol_serve.routing.policy import Scored, candidates
from sollol_serve.routing.state import normalize_model
from sollol_serve.routing.state_actor import state_actor

logger = logging.getLogger("ray.serve")


def unwrap(exc: BaseException) -> BaseException:
    """The user exception inside a Ray task error, if any."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


class Relay:
    """Passes a worker's chunks through as they come and keeps the closing Usage here
    (it feeds learning, not the client). Failures after the first chunk: StreamBroken."""

    def __init__(self, node: str):
        self.node = node
        self.usage: Usage | None = None

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
            error = unwrap(exc)
            message = error.message if isinstance(error, GatewayError) else f"{type(error).__name__}: {error}"
            raise StreamBroken(f"stream from {self.node} broke: {message}") from None


def observation(flight: Flight, profile: RequestProfile, ok: bool, usage: Usage | None, wall_s: float) -> Observation:
    usage = usage or Usage()
    return Observation(
        node=flight.node, model=normalize_model(profile.model), task_type=profile.task_type, ok=ok,
        prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
        prefill_s=usage.prefill_s, decode_s=usage.decode_s, load_s=usage.load_s, wall_s=wall_s,
        concurrent=flight.concurrent, embedding=profile.task_type == "embedding",
    )


def routing_info(profile: RequestProfile, strategy: str, ranked: list[Scored], chosen: Scored,
                 attempts: list[dict], queue_wait_ms: float, routing_ms: float) -> dict:
    return {
        "node": chosen.node.name,
        "host": chosen.node.url,
        "strategy": strategy,
        "task_type": profile.task_type,
        "complexity": profile.complexity,
        "priority": profile.priority,
        "score": round(chosen.score, 4),
        "reasoning": f"{chosen.node.name}: {chosen.reason} (best of {len(ranked)} by {strategy})",
        "candidates": [s.as_dict() for s in ranked],
        "attempts": attempts,
        "queue_wait_ms": round(queue_wait_ms, 3),
        "routing_ms": round(routing_ms, 3),
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
    async def _admit(self, profile: RequestProfile, exclude: set[str]) -> tuple[list[Scored], Scored, int, float]:
        """(ranking, choice, flight id, seconds waited). The chosen slot is reserved."""
        now = time.monotonic()
        ranked = self.core.rank(profile, exclude, now)
        choice = self.core.pick(ranked)
        if choice is not None:
            return ranked, choice, self.core.start(choice, profile, now), 0.0
        granted: asyncio.Future = asyncio.get_running_loop().create_future()
        waiter = self.core.queue.push((profile, exclude, granted), profile.priority, now, self.core.retry_after_s())
        try:
            ranked, choice, flight_id = await asyncio.wait_for(asyncio.shield(granted),
                                                               self.config.routing.queue_timeout_s)
        except asyncio.TimeoutError:
            self.core.queue.remove(waiter, time.monotonic(), served=False)
            raise NoNodeAvailable(f"no slot for '{profile.model}' within "
                                  f"{self.config.routing.queue_timeout_s:.0f} s in the queue") from None
        except asyncio.CancelledError:
            self._abandon(waiter, granted)
            raise
        return ranked, choice, flight_id, time.monotonic() - now

    def _abandon(self, waiter, granted: asyncio.Future) -> None:
        """The caller went away while queued: give back its place, or its slot."""
        if granted.done() and not granted.cancelled() and granted.exception() is None:
            _, choice, flight_id = granted.result()
            self.core.finish(flight_id, choice.node.name)
            self._pump()
        elif waiter in self.core.queue:
            self.core.queue.remove(waiter, time.monotonic(), served=False)

    def _pump(self) -> None:
        """Hand free slots to waiters, most urgent first (with aging)."""
        if not len(self.core.queue):
            return
        now = time.monotonic()
        for waiter in self.core.queue.ordered(now):
            profile, exclude, granted = waiter.item
            if granted.done():
                self.core.queue.remove(waiter, now, served=False)
                continue
            try:
                ranked = self.core.rank(profile, exclude, now)
            except GatewayError as exc:
                self.core.queue.remove(waiter, now, served=False)
                granted.set_exception(exc)
                continue
            choice = self.core.pick(ranked)
            if choice is None:
                continue
            self.core.queue.remove(waiter, now)
            granted.set_result((ranked, choice, self.core.start(choice, profile, now)))

    def _release(self, flight_id: int, node: str, profile: RequestProfile, ok: bool,
                 usage: Usage | None) -> None:
        flight = self.core.finish(flight_id, node)
        if flight is not None:
            self.core.learn(observation(flight, profile, ok, usage, time.monotonic() - flight.started))
        self._pump()

    # -- the request path --------------------------------------------------------------
    async def call(self, profile: RequestProfile, req: NodeRequest) -> Routed:
        started = time.perf_counter()
        attempts: list[dict] = []
        tried: set[str] = set()
        waited = 0.0
        while True:
            ranked, choice, flight_id, queued = await self._admit(profile, tried)
            waited += queued
            routing_ms = (time.perf_counter() - started) * 1000 - queued * 1000
            name = choice.node.name
            tried.add(name)
            usage, ok = None, False
            try:
                body, usage = await self.workers[name].call.remote(req, choice.node.node_model(req.model))
                ok = True
            except Exception as exc:
                self._failed_attempt(exc, name, attempts, tried, profile.model)
                continue
            finally:
                self._release(flight_id, name, profile, ok, usage)
            attempts.append({"node": name, "ok": True})
            info = routing_info(profile, self.core.strategy, ranked, choice, attempts, waited * 1000, routing_ms)
            return Routed(body=body, node=name, routing=info)

    def _failed_attempt(self, exc: BaseException, node: str, attempts: list[dict], tried: set[str],
                        model: str) -> None:
        """Record a failed attempt; raise unless another node may succeed."""
        error = unwrap(exc)
        if not isinstance(error, NodeError):
            if isinstance(error, GatewayError):
                raise error
            error = NodeError(f"worker for {node} failed: {type(error).__name__}: {error}", 502)
        attempts.append({"node": node, "ok": False, "status": error.status, "error": error.message})
        if not error.retryable:
            raise error
        if not candidates(self.core.snapshot, model, tried):
            raise NoNodeAvailable(f"every node that has '{model}' failed; last error: {error.message}")

    async def stream(self, profile: RequestProfile, req: NodeRequest) -> AsyncIterator[object]:
        started = time.perf_counter()
        attempts: list[dict] = []
        tried: set[str] = set()
        waited = 0.0
        while True:
            ranked, choice, flight_id, queued = await self._admit(profile, tried)
            waited += queued
            routing_ms = (time.perf_counter() - started) * 1000 - queued * 1000
            name = choice.node.name
            tried.add(name)
            items = self.workers[name].stream.options(stream=True).remote(req, choice.node.node_model(req.model))
            relay = Relay(name)
            try:
                try:
                    first = await items.__anext__()
                except StopAsyncIteration:
                    first = Usage()
                except Exception as exc:
                    self._failed_attempt(exc, name, attempts, tried, profile.model)
                    continue
                attempts.append({"node": name, "ok": True})
                yield StreamStart(node=name)
                async for item in relay.chunks(first, items):
                    yield item
                yield StreamEnd(routing_info(profile, self.core.strategy, ranked, choice, attempts,
                                             waited * 1000, routing_ms))
                return
            finally:
                self._release(flight_id, name, profile, relay.usage is not None, relay.usage)
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
