"""The Router deployment: picks a node for each request and carries it there.

It reads a local snapshot of the shared node state (refreshed in the background, so the hot
path makes no extra round trip), counts its own in-flight work immediately, asks the policy
for a ranking, calls the chosen node's worker and moves to the next node when one fails
before sending anything.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
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
from sollol_serve.routing.policy import Chooser, Scored, candidates, model_known
from sollol_serve.routing.state import NodeView
from sollol_serve.routing.state_actor import state_actor

logger = logging.getLogger("ray.serve")


def unwrap(exc: BaseException) -> BaseException:
    """The user exception inside a Ray task error, if any."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


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
        self.in_flight: Counter[str] = Counter()
        self.snapshot: dict[str, NodeView] = await self.state.sync.remote(self.router_id, {})
        self.chooser = Chooser(self.config.routing.strategy)
        self._refresher = asyncio.create_task(self._refresh_loop())

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.routing.snapshot_interval_s)
            try:
                self.snapshot = await self.state.sync.remote(self.router_id, dict(self.in_flight))
            except Exception:  # keep the last snapshot; the actor restarts on its own
                logger.exception("node state sync failed")

    def _rank(self, model: str, exclude: set[str]) -> list[Scored]:
        nodes = candidates(self.snapshot, model, exclude)
        if not nodes:
            if not model_known(self.snapshot, model):
                raise ModelNotFound(f"model '{model}' not found on any node")
            down = sorted(v.name for v in self.snapshot.values() if v.has_model(model))
            raise NoNodeAvailable(f"no healthy node can serve model '{model}' (nodes with it: {', '.join(down)})")
        return self.chooser.rank(nodes, self.in_flight, model)

    async def call(self, profile: RequestProfile, req: NodeRequest) -> Routed:
        started = time.perf_counter()
        attempts: list[dict] = []
        tried: set[str] = set()
        ranked = self._rank(req.model, tried)
        routing_ms = (time.perf_counter() - started) * 1000
        while True:
            choice = ranked[0]
            name = choice.node.name
            tried.add(name)
            self.in_flight[name] += 1
            try:
                body, _usage = await self.workers[name].call.remote(req, choice.node.node_model(req.model))
            except Exception as exc:
                error = self._failed_attempt(exc, name, attempts)
                ranked = self._next_ranking(req.model, tried, error)
                continue
            finally:
                self.in_flight[name] -= 1
            attempts.append({"node": name, "ok": True})
            info = routing_info(profile, self.chooser.strategy, ranked, choice, attempts, 0.0, routing_ms)
            return Routed(body=body, node=name, routing=info)

    def _failed_attempt(self, exc: BaseException, node: str, attempts: list[dict]) -> NodeError:
        error = unwrap(exc)
        if not isinstance(error, NodeError):
            if isinstance(error, GatewayError):
                raise error
            error = NodeError(f"worker for {node} failed: {type(error).__name__}: {error}", 502)
        attempts.append({"node": node, "ok": False, "status": error.status, "error": error.message})
        if not error.retryable:
            raise error
        return error

    def _next_ranking(self, model: str, tried: set[str], error: NodeError) -> list[Scored]:
        try:
            return self._rank(model, tried)
        except GatewayError:
            raise NoNodeAvailable(f"every node that has '{model}' failed; last error: {error.message}") from None

    async def stream(self, profile: RequestProfile, req: NodeRequest) -> AsyncIterator[object]:
        started = time.perf_counter()
        attempts: list[dict] = []
        tried: set[str] = set()
        ranked = self._rank(req.model, tried)
        routing_ms = (time.perf_counter() - started) * 1000
        while True:
            choice = ranked[0]
            name = choice.node.name
            tried.add(name)
            self.in_flight[name] += 1
            items = self.workers[name].stream.options(stream=True).remote(req, choice.node.node_model(req.model))
            finished = False
            try:
                try:
                    first = await items.__anext__()
                except StopAsyncIteration:
                    first = Usage()
                except Exception as exc:
                    error = self._failed_attempt(exc, name, attempts)
                    ranked = self._next_ranking(req.model, tried, error)
                    continue
                attempts.append({"node": name, "ok": True})
                yield StreamStart(node=name)
                async for item in self._relay(first, items, name):
                    yield item
                finished = True
                yield StreamEnd(routing_info(profile, self.chooser.strategy, ranked, choice, attempts, 0.0, routing_ms))
                return
            finally:
                self.in_flight[name] -= 1
                if not finished:
                    items.cancel()  # the client went away or the stream broke: stop the node's work

    async def _relay(self, first: object, items: AsyncIterator[object], node: str) -> AsyncIterator[dict]:
        """Pass chunks through as they come; Usage stays here (it feeds learning)."""
        try:
            if isinstance(first, dict):
                yield first
            async for item in items:
                if isinstance(item, dict):
                    yield item
        except Exception as exc:
            error = unwrap(exc)
            message = error.message if isinstance(error, GatewayError) else f"{type(error).__name__}: {error}"
            raise StreamBroken(f"stream from {node} broke: {message}") from None

    # -- cluster views used by the ingress ---------------------------------------------
    async def nodes(self) -> list[dict]:
        return [
            {"name": v.name, "url": v.url, "kind": v.kind, "healthy": v.healthy, "slots": v.slots,
             "in_flight": self.in_flight.get(v.name, 0) + v.in_flight_elsewhere,
             "models": sorted(v.models.values()), "loaded": sorted(v.loaded), "error": v.error}
            for v in self.snapshot.values()
        ]

    async def tags(self) -> list[dict]:
        return await self.state.tags.remote()

    async def ps(self) -> list[dict]:
        healthy = [v.name for v in self.snapshot.values() if v.healthy]
        results = await asyncio.gather(*(self.workers[n].ps.remote() for n in healthy), return_exceptions=True)
        return [entry for r in results if isinstance(r, list) for entry in r]

    async def show(self, body: dict, model: str) -> dict:
        for choice in self._rank(model, set()):
            try:
                return await self.workers[choice.node.name].show.remote(body)
            except Exception as exc:
                error = unwrap(exc)
                if isinstance(error, NodeError) and not error.retryable:
                    raise error from None
        raise NoNodeAvailable(f"no node answered /api/show for '{model}'")

    async def versions(self) -> list[str]:
        reports = await self.state.reports.remote()
        return [r.version for r in reports.values() if r.healthy and r.version]
