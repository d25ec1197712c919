"""The Router deployment: decides which node takes each request, and learns from how it went.

A thin shell around `core.RoutingCore`: it keeps the core's snapshot of the shared node state
fresh in the background (so a decision makes no extra round trip), admits each request to a
slot or to the priority queue and hands out a Ticket for it; the Ingress's dispatcher carries
the request to the node and reports the Outcome back, which frees the slot and feeds learning.
The router also re-measures stale estimates, starts shard groups and manages nodes at run time.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator

import ray
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from sollol_serve.analysis.profile import RequestProfile
from sollol_serve.cluster.learning import Observation
from sollol_serve.cluster.state import NodeView
from sollol_serve.cluster.state_actor import state_actor
from sollol_serve.config import GatewayConfig, NodeConfig
from sollol_serve.loops import run_every
from sollol_serve.names import NAMESPACE, host_port, normalize_model
from sollol_serve.nodes.discovery import start_discovery
from sollol_serve.nodes.lifecycle import add_runtime_node, retire_node
from sollol_serve.observability.metrics_actor import metrics_actor
from sollol_serve.observability.restarts import RestartLog
from sollol_serve.protocol import (
    BadRequest,
    Conflict,
    GatewayError,
    ModelNotFound,
    NodeError,
    NodeReport,
    NodeRequest,
    NodeStatus,
    NoNodeAvailable,
    NotFound,
    Outcome,
    QueueStatus,
    Ticket,
    Usage,
    error_message,
    is_node_fault,
    unwrap,
)
from sollol_serve.routing.core import Flight, Grant, RoutingCore
from sollol_serve.routing.failover import hedge_delay_s, should_hedge
from sollol_serve.routing.holders import Holders
from sollol_serve.routing.keep_alive import keep_alive_s, session_s
from sollol_serve.routing.links import ActorLink, WorkerRegistry
from sollol_serve.routing.lost_workers import LostWorkers
from sollol_serve.routing.placement import Warm, pin_target, warm_ahead
from sollol_serve.routing.shard_start import await_shard_group
from sollol_serve.routing.policy import (
    candidates,
    model_known,
    needs_shard,
    warm_targets,
)
from sollol_serve.routing.pump import Admissions
from sollol_serve.shard.coordinator import (
    coordinator_name,
    shard_coordinator,
    shard_node_name,
)

logger = logging.getLogger("ray.serve")

SAMPLE_S = 2.5  # the dashboard charts 10 s intervals: a few samples each
# A call to the node state actor waits at most this long: while Ray restarts it (a second or
# two) the router keeps routing on its last snapshot, and views that need it answer without it.
STATE_CALL_S = 3.0
# How long a rebuild of a restarted state actor waits for the workers to register their nodes.
REJOIN_WAIT_S = 5.0
PINS_CHECK_S = 5.0  # how often pinned models are checked for their min_nodes
HOLDERS_CHECK_S = 2.0  # how often the holders of tickets in flight are checked for life


def observation(flight: Flight, ok: bool, usage: Usage | None, wall_s: float) -> Observation:
    profile, usage = flight.profile, usage or Usage()
    evaluated = usage.prompt_tokens if usage.prefill_tokens is None else usage.prefill_tokens
    return Observation(
        node=flight.node, model=normalize_model(profile.model), task_type=profile.task_type, ok=ok,
        prompt_tokens=evaluated, completion_tokens=usage.completion_tokens,
        prefill_s=usage.prefill_s, decode_s=usage.decode_s, load_s=usage.load_s, wall_s=wall_s,
        concurrent=flight.concurrent, embedding=profile.task_type == "embedding", ttfb_s=usage.ttfb_s,
        node_queued_s=usage.queued_s, running=usage.running, ends_after_send=usage.ends_after_send,
        probe=flight.probe, remeasure=flight.remeasure, at=time.time(),
    )


def choice_of(profile: RequestProfile, strategy: str, grant: Grant) -> dict:
    """The decision's part of `_sollol_routing`: the choice and every candidate's prediction."""
    chosen = grant.choice
    return {
        "node": chosen.node.name,
        "host": host_port(chosen.node.url),
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
    }


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Router:
    async def __init__(self, config: dict, workers: dict[str, DeploymentHandle]):
        self.config = GatewayConfig.model_validate(config)
        self.workers = WorkerRegistry(workers, self.config.state_actor_name)
        self._registrations: dict[str, int] = {}  # run-time node -> the registration its link is for
        self.rng = random.Random()
        self.state = state_actor(self.config)
        try:
            self.router_id = serve.get_replica_context().replica_id.unique_id
        except Exception:  # outside Serve (unit use)
            self.router_id = uuid.uuid4().hex
        self.core = RoutingCore(self.config.routing)
        self.core.max_loaded = {node.name: node.max_loaded for node in self.config.nodes}
        self.core.residency.pins = {model: p.min_nodes for model, p in self.config.models.items() if p.min_nodes}
        self.lost_workers = LostWorkers()
        self.holders = Holders()  # the replica carrying each ticket's request
        self.incarnation: str | None = None  # the node state actor's, as of the last sync
        self.deaths = RestartLog()  # of the gateway's processes this router saw die
        self.state_reachable = True  # the last sync got an answer
        self._synced_at = float("-inf")  # monotonic time of the last adopted state
        self._settling = True  # the last sync changed what nodes can serve what: no backing off yet
        self._idle = False  # the state sync is backed off: nothing was going on at the last one
        self._resync = asyncio.Lock()
        self.admissions = Admissions(self.core, self.config.routing.queue_timeout_s, fair=self.config.routing.fair_share)
        self.discovery = await asyncio.to_thread(start_discovery, self.config)  # one per gateway
        self.shard_models = {normalize_model(m) for m in self.config.shard.models}
        self.shard_coordinator = None  # created on first need
        await self._sync()
        self._work_came = asyncio.Event()  # wakes a backed-off sync
        self._refresher = run_every(self._sync_interval_s, self._refresh, "node state sync", wake=self._work_came)
        self.metrics_book = metrics_actor(self.config.state_actor_name)
        self._sampler = run_every(SAMPLE_S, self._sample, "cluster sample")
        self._reclaimer = run_every(HOLDERS_CHECK_S, self._reclaim_dead_holders, "ticket holders check")
        self._pinner = run_every(PINS_CHECK_S, self._keep_pins, "pinned models check") if self.config.models else None

    async def __del__(self) -> None:
        """Serve stopping this replica: its slots are no longer anyone's (the state would
        also forget them once this router stops syncing, but a redeploy should not wait)."""
        self._refresher.cancel()
        self._sampler.cancel()
        self._reclaimer.cancel()
        if self._pinner is not None:
            self._pinner.cancel()
        try:
            await self.state.forget_router.remote(self.router_id)
        except Exception:  # the state actor is gone too: nothing to forget
            pass

    async def _refresh(self) -> None:
        await self._sync()  # on failure the last snapshot stays; the actor restarts on its own
        self.admissions.pump()
        self._remeasure_stale()

    async def _sample(self) -> None:
        """The nodes, this router's queue and the shard groups, for the charts and alerts."""
        nodes, queue, shards = await asyncio.gather(self.nodes(), self.queue_stats(), self.shards())
        await self.metrics_book.observe.remote(self.router_id, nodes, queue, shards, self.deaths.times())

    async def _sync(self) -> None:
        """Send what this router learned and its in-flight counts; adopt the shared state."""
        pending = self.core.take_pending()
        try:
            views, book, incarnation = await self._state_sync(pending)
        except Exception:
            self.core.pending[:0] = pending
            self.state_reachable = False
            raise
        self.state_reachable = True
        if self.incarnation is not None and incarnation != self.incarnation:
            # The actor restarted: it knows no node until they are registered again. Adopting
            # its empty picture would answer every request 404; rebuild it first.
            await self._rebuild_state(incarnation)
            views, book, incarnation = await self._state_sync([])
            self.deaths.note("node state actor", time.time())
        self.incarnation = incarnation
        await self._adopt(views, book)
        self._synced_at = time.monotonic()

    def _sync_interval_s(self) -> float:
        """Every `snapshot_interval_s` while this router has work (in flight, queued, or
        learned and not yet sent) or its last sync changed what nodes serve (a gateway
        starting, a node going or coming back); `longest_sync_s` while it has none: an
        idle gateway's CPU is mostly these loops. The next request is routed on a picture at
        most that old (as fresh as the workers' health probes make it anyway), and its flight is
        reported at once: the first work after a quiet spell wakes the sync."""
        routing = self.config.routing
        self._idle = not (self._settling or self.core.pending or len(self.admissions.queue)
                          or any(self.core.flights.values()))
        return routing.longest_sync_s if self._idle else routing.snapshot_interval_s

    async def _state_sync(self, pending: list[Observation]) -> tuple[dict[str, NodeView], object, str]:
        return await asyncio.wait_for(
            self.state.sync.remote(self.router_id, self.core.in_flight_counts(), pending,
                                   self._sync_interval_s()), STATE_CALL_S)

    async def _rebuild_state(self, incarnation: str) -> None:
        """Hand a restarted state actor what this router held (the learned book, newer than
        its history file; the drains), and have every worker this router knows register its
        node again and report it now."""
        logger.warning("node state actor restarted (incarnation %s): rebuilding it from this router and the "
                       "workers", incarnation[:8])
        draining = [name for name, view in self.core.snapshot.items() if view.draining]
        await asyncio.wait_for(self.state.restore.remote(incarnation, self.core.book, draining), STATE_CALL_S)
        rejoins = [link.ask("rejoin", incarnation) for link in self.workers.links.values()]
        results = await asyncio.wait_for(asyncio.gather(*rejoins, return_exceptions=True), REJOIN_WAIT_S)
        for name, result in zip(self.workers.links, results):
            if isinstance(result, Exception):
                logger.warning("worker of node %s did not re-register: %s", name, error_message(result))

    async def _adopt(self, snapshot: dict[str, NodeView], book) -> None:
        """Take the shared state, routing only to nodes this router can reach: a node added
        at run time becomes routable once its worker actor is found."""
        links = self.workers.links
        for name in [n for n, link in links.items() if link.runtime and (
                n not in snapshot or snapshot[n].registration != self._registrations.get(n))]:
            self.workers.forget(name)  # removed by another router, or removed and added again
        for name in snapshot.keys() - links.keys():
            if await self.workers.find(name) is not None:
                self._registrations[name] = snapshot[name].registration
        snapshot = {n: v for n, v in snapshot.items() if n in links}
        self.lost_workers.mark(snapshot)
        self._settling = self.core.adopt(snapshot, book)

    def _release(self, flight_id: int, node: str, ok: bool | None, usage: Usage | None) -> None:
        """Free the slot; learn from the outcome unless there is none (the client left)."""
        now = time.monotonic()
        self.holders.release(node, flight_id)
        flight = self.core.finish(flight_id, node, now, ok)
        if flight is not None:
            if ok is False and flight.profile.conversation:
                self.core.forget_turn(flight.profile.conversation, node)
            if ok is not None:
                self.core.learn(observation(flight, ok, usage, now - flight.started))
            if ok and usage is not None:
                self.admissions.finished(flight.profile, flight.charged, usage.prompt_tokens, usage.completion_tokens)
        self.admissions.pump()

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
            _, usage = await self.workers.links[view.name].call(NodeRequest("ollama", "generate", body, False, model),
                                                        view.node_model(model))
            ok = True
        except Exception as exc:
            ok = False if is_node_fault(exc) else None
        finally:
            self._release(flight_id, view.name, ok, usage)

    # -- the request path: tickets out, outcomes back ----------------------------------
    async def _admit(self, profile: RequestProfile, exclude: set[str], counted: bool) -> tuple[Grant, float]:
        """Admission; a request no node can serve by a picture older than one sync (an idle
        router syncs less often) is asked again on a fresh one: the node may be back."""
        try:
            return await self.admissions.admit(profile, exclude, counted=counted)
        except (ModelNotFound, NoNodeAvailable) as unservable:
            if self._fresh():
                raise
            async with self._resync:  # one sync for a crowd of such requests (a client may send many)
                try:
                    if not self._fresh():
                        await self._sync()
                except Exception:  # the state actor is away: the answer stands on the picture there is
                    raise unservable from None
        return await self.admissions.admit(profile, exclude, counted=counted)

    def _fresh(self) -> bool:
        return time.monotonic() - self._synced_at <= self.config.routing.snapshot_interval_s

    async def decide(self, profile: RequestProfile, tried: frozenset[str], last_error: str | None,
                     wait: bool, holder: str | None = None) -> Ticket | None:
        """A slot on the best node not yet tried: at once, or from the priority queue if
        `wait` (else None when none is free now). For a model served by a shard group the
        group is started if needed and every other node ruled out."""
        if self._idle:
            self._idle = False
            self._work_came.set()
        exclude = set(tried) | await self._shard_only(profile)
        if last_error is not None and not candidates(self.core.snapshot, profile.model, exclude):
            raise NoNodeAvailable(f"every node that has '{profile.model}' failed or is unavailable; "
                                  f"last error: {last_error}")
        if not tried:  # a new request, not a retry: it counts in its model's demand
            self.core.residency.demand.note(normalize_model(profile.model), self.core.wall())
            self._consider_warming(profile, exclude)
        if wait:
            grant, queued_s = await self._admit(profile, exclude, counted=not tried)
        else:
            grant, queued_s = self.core.grant_now(profile, exclude, time.monotonic()), 0.0
            if grant is None:
                return None
        self.holders.hold(holder, grant.choice.node.name, grant.flight_id)
        return self._ticket(profile, grant, queued_s)

    def _consider_warming(self, profile: RequestProfile, exclude: set[str]) -> None:
        """Load the request's model on one more node now if its warm nodes are too busy."""
        if self.core.strategy != "intelligent":
            return
        try:
            ranked = self.core.rank(profile, exclude, time.monotonic())
        except GatewayError:
            return  # the request itself will say why
        model = normalize_model(profile.model)
        self._load_ahead(warm_ahead(model, ranked, self.core.residency.demand.rate(model, self.core.wall()),
                                    self._loading_anywhere(model)))

    async def _keep_pins(self) -> None:
        """Load each pinned model on one more node while fewer than its `min_nodes` have it."""
        for model, policy in self.config.models.items():
            if policy.min_nodes <= 0:
                continue
            try:
                ranked = self.core.rank(self.core.remeasure_profile(model), set(), time.monotonic())
            except GatewayError:
                continue  # no node has it (yet)
            self._load_ahead(pin_target(model, ranked, policy.min_nodes, self._loading_anywhere(model)))

    def _loading_anywhere(self, model: str) -> bool:
        return any(model in self.core.residency.of(n).loading for n in self.core.snapshot)

    def _load_ahead(self, plan: Warm | None) -> None:
        """Start the planned load in the background, counted as under way from now."""
        if plan is not None:
            self.core.residency.sent(plan.node, plan.model, plan.cold, self.core.wall())
            asyncio.create_task(self._warm(plan))

    async def _warm(self, plan: Warm) -> None:
        view, ok = self.core.snapshot.get(plan.node), False
        logger.info("loading %s on %s ahead of its requests (they would wait %.1f s for its warm nodes)",
                    plan.model, plan.node, plan.wait_s)
        try:
            if view is not None:
                await self.workers.links[plan.node].ask("warm", view.node_model(plan.model),
                                                        self._keep_alive(view, plan.model))
                ok = True
        except Exception as exc:
            logger.warning("loading %s on %s ahead failed: %s", plan.model, plan.node, error_message(exc))
        finally:
            self.core.residency.finished(plan.node, plan.model, ok, self.core.wall())

    async def _reclaim_dead_holders(self) -> None:
        """Free the slots of tickets whose holder died (it will never report their outcome)."""
        if not self.holders.holders():
            return
        alive = {actor["name"] for actor in await asyncio.to_thread(ray.util.list_named_actors, True)}
        orphaned = self.holders.orphaned(alive)
        for node, flight_id in orphaned:
            self._release(flight_id, node, None, None)
        if orphaned:
            logger.warning("freed %d slots held by requests of a replica that died", len(orphaned))

    def _ticket(self, profile: RequestProfile, grant: Grant, queued_s: float) -> Ticket:
        node = grant.choice.node
        flight = self.core.flights[node.name][grant.flight_id]
        hedge_after_s = None
        if should_hedge(profile.priority, self.config.failover):
            perf = self.core.book.perf(node.name, normalize_model(profile.model))
            hedge_after_s = hedge_delay_s(perf, self.config.failover)
        return Ticket(
            router_id=self.router_id, flight_id=grant.flight_id, node=node.name,
            node_model=node.node_model(profile.model), choice=choice_of(profile, self.core.strategy, grant),
            queued_s=queued_s, probe=grant.probe, hedge_after_s=hedge_after_s,
            # its first byte can prove slots only above what the node has proven already
            wants_first_byte=flight.alone and flight.concurrent > self.core.slots(node),
            worker=getattr(self.workers.links[node.name], "actor", None),
            keep_alive=self._keep_alive(node, profile.model))

    def _keep_alive(self, node: NodeView, model: str) -> int | None:
        """What to keep the model loaded for on an Ollama node (None: the node's default)."""
        if node.kind != "ollama" or not self.config.routing.steer_keep_alive:
            return None
        name, routing = normalize_model(model), self.config.routing
        keep = keep_alive_s(self.core.residency.demand.rate(name, self.core.wall()),
                            self.config.pinned(name) > 0, routing.node_keep_alive_s)
        self.core.residency.of(node.name).keep_s[name] = session_s(keep)
        return keep

    async def report(self, owner: str, outcomes: list[Outcome]) -> None:
        """Tries that ended (batched by the dispatcher): free their slots, learn from them.
        Outcomes of another replica's tickets (it died and took its slots along) are dropped,
        but what they tell of a dead worker is taken."""
        for outcome in outcomes:
            if outcome.worker_died and (view := self.core.snapshot.get(outcome.node)) is not None:
                if outcome.node not in self.lost_workers:
                    self.deaths.note(f"worker of node {outcome.node}", time.time())
                self.lost_workers.died(view)
            if owner == self.router_id:
                self._release(outcome.flight_id, outcome.node, outcome.ok, outcome.usage)

    async def began(self, owner: str, flight_id: int, node: str, running: int) -> None:
        if owner == self.router_id:
            self.core.began(flight_id, node, running)
            self.admissions.pump()  # a slot it proved may take a waiter now, not at the next refresh

    # -- shard groups: models no single node can hold ----------------------------------
    async def _shard_only(self, profile: RequestProfile) -> set[str]:
        """For a model served by a shard group: start the group if needed; every other node
        that has the model is ruled out. Decided afresh for every request."""
        shard = self.config.shard
        if not needs_shard(self.core.snapshot, profile.model, self.shard_models, self.config.routing.vram_headroom):
            return set()
        name = shard_node_name(profile.model)
        view = self.core.snapshot.get(name)
        if view is None or not view.healthy:
            def reachable() -> bool:
                return (found := self.core.snapshot.get(name)) is not None and found.healthy

            await await_shard_group(profile.model, name, self._shards().ensure.remote, reachable,
                                    shard.start_timeout_s, self.config.routing.snapshot_interval_s)
        return {n for n, v in self.core.snapshot.items() if n != name and v.has_model(profile.model)}

    def _shards(self):
        if self.shard_coordinator is None:
            self.shard_coordinator = shard_coordinator(self.config)
        return self.shard_coordinator

    async def shards(self) -> list[dict]:
        """The shard groups; none (and no coordinator started) until one is needed."""
        if self.shard_coordinator is None:
            try:
                await asyncio.to_thread(ray.get_actor, coordinator_name(self.config.state_actor_name), NAMESPACE)
            except ValueError:
                return []
        return await self._shards().status.remote()

    async def shard_action(self, model: str, action: str) -> dict:
        coordinator = self._shards()
        return await (coordinator.ensure if action == "start" else coordinator.stop).remote(model)

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
        self.workers.links[config.name] = ActorLink(actor)
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
        self.workers.forget(name)

    async def sync_now(self) -> None:
        """Adopt the shared state now, not at the next refresh: a model just pulled, copied or
        deleted (its node's worker has reported it) routes at once. Other router replicas
        adopt it at their next refresh (`snapshot_interval_s`, `longest_sync_s` if idle)."""
        await self._sync()

    # -- cluster views used by the ingress ---------------------------------------------
    async def _ask_state(self, method: str, default: object) -> object:
        """A view's call to the state actor, `default` while it restarts (what is routed on
        is this router's snapshot, which stays)."""
        try:
            return await asyncio.wait_for(getattr(self.state, method).remote(), STATE_CALL_S)
        except Exception as exc:
            logger.warning("node state actor did not answer %s: %s", method, error_message(exc))
            return default

    def recovery(self) -> dict:
        """The gateway's own processes as this router sees them, for /health."""
        lost = sorted(n for n in self.core.snapshot if n in self.lost_workers)
        return {"state_actor": "ok" if self.state_reachable else "unreachable", "workers_restarting": lost,
                "deaths": {process: len(times) for process, times in self.deaths.times().items()}}

    async def nodes(self) -> list[NodeStatus]:
        reports = await self._ask_state("reports", {})
        return [self._status(view, reports.get(view.name)) for view in self.core.snapshot.values()]

    def _status(self, v: NodeView, report: NodeReport | None) -> NodeStatus:
        book = self.core.book
        return NodeStatus(
            name=v.name, url=v.url, kind=v.kind, healthy=v.healthy, slots=self.core.slots(v),
            slots_source=v.slots_source, slots_configured=v.slots if v.slots_source == "configured" else None,
            slots_learned=book.learned_slots(v.name), capacity=book.capacity_of(v.name).as_dict(),
            in_flight=self.core.busy(v), breaker=v.breaker, draining=v.draining,
            added_at_run_time=self.workers.links[v.name].runtime, models=sorted(v.models.values()),
            loaded=sorted(v.loaded), error=v.error,
            worker_ip=report.worker_ip if report else None, worker_node_id=report.worker_node_id if report else None,
            telemetry=report.telemetry if report else None, worker_down=v.worker_down,
            **self._residency_status(v),
            decode_tps={model: round(perf.decode_tps.mean, 2) for (node, model), perf in book.models.items()
                        if node == v.name and perf.decode_tps.n})

    def _residency_status(self, v: NodeView) -> dict:
        if v.kind != "ollama":
            return {}
        res = self.core.residency.of(v.name)
        configured = self.core.max_loaded.get(v.name)
        return {"max_loaded": res.capacity(configured), "max_loaded_source": res.capacity_source(configured),
                "model_loads": dict(res.loads), "model_evictions": dict(res.evictions)}

    async def queue_stats(self) -> QueueStatus:
        """Requests waiting now, and how long served requests waited, per priority."""
        queue = self.core.queue
        stats = queue.wait_stats
        return QueueStatus(router=self.router_id, waiting=len(queue), max=queue.max_size, aging_s=queue.aging_s,
                           waited_by_priority={str(p): stats[p].as_dict() for p in sorted(stats)},
                           by_application=self.admissions.by_application(self.config.security.share_of))

    async def knows(self, model: str) -> bool:
        """Whether some node (or a shard group) serves `model`, up or down."""
        return model_known(self.core.snapshot, model) or normalize_model(model) in self.shard_models

    async def model_names(self) -> set[str]:
        """Every model some node (or a shard group) serves, normalized: the ones metrics label."""
        return {m for v in self.core.snapshot.values() for m in v.models} | self.shard_models

    async def tags(self) -> list[dict]:
        fallback = [{"name": name, "model": name} for name in
                    sorted({m for v in self.core.snapshot.values() if v.healthy for m in v.models.values()})]
        return await self._ask_state("tags", fallback)

    async def ps(self) -> list[dict]:
        healthy = [v.name for v in self.core.snapshot.values() if v.healthy]
        results = await asyncio.gather(*(self.workers.links[n].ask("ps") for n in healthy), return_exceptions=True)
        return [entry for r in results if isinstance(r, list) for entry in r]

    async def show(self, body: dict, model: str) -> dict:
        views = candidates(self.core.snapshot, model)
        if not views:
            raise ModelNotFound(f"model '{model}' not found on any node")
        for view in views:
            try:
                return await self.workers.links[view.name].ask("show", body)
            except Exception as exc:
                error = unwrap(exc)
                if isinstance(error, NodeError) and not error.retryable:
                    raise error from None
        raise NoNodeAvailable(f"no node answered /api/show for '{model}'")

    async def warm(self, model: str, names: list[str] | None, keep_alive: str | int | None) -> AsyncIterator[dict]:
        """Load `model` on the chosen nodes at once; an event as each one finishes."""
        targets = warm_targets(self.core.snapshot, model, names)
        yield {"status": "loading", "model": model, "nodes": [v.name for v in targets]}
        pending = {asyncio.ensure_future(self.workers.links[v.name].ask("warm", v.node_model(model), keep_alive)): v.name
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
        reports = await self._ask_state("reports", {})
        return [r.version for r in reports.values() if r.healthy and r.version]
