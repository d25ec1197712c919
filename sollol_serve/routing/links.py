"""How the gateway's processes reach each other: a node's worker through a Serve deployment
handle (nodes in the config) or a detached actor (nodes added at run time), both giving the
same calls; and the Router, as the Ingress's dispatcher asks it for tickets."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Protocol

import ray
from ray import serve
from ray.actor import ActorHandle
from ray.serve.handle import DeploymentHandle

from sollol_serve.analysis.profile import RequestProfile
from sollol_serve.names import NAMESPACE, runtime_worker_name
from sollol_serve.protocol import NodeError, NodeRequest, Outcome, Ticket, Usage

logger = logging.getLogger("ray.serve")

# Outcomes wait this long to share a call to their router: a slot is freed at most this much
# later, and a call costs the Ingress and the Router a few ms of CPU each.
REPORT_EVERY_S = 0.005


class ItemStream(Protocol):
    """A worker's streamed answer: items as they come; `cancel()` stops the worker's work."""

    def __aiter__(self) -> AsyncIterator[object]: ...

    async def __anext__(self) -> object: ...

    def cancel(self) -> None: ...


class WorkerLink(Protocol):
    runtime: bool  # added through the admin API (its actor is ours to kill on removal)

    async def call(self, req: NodeRequest, node_model: str) -> tuple[dict, Usage]: ...

    def open(self, method: str, req: NodeRequest, node_model: str) -> ItemStream: ...

    async def ask(self, method: str, *args: object) -> object: ...

    def stream(self, method: str, *args: object) -> ItemStream: ...


class ServeLink:
    runtime = False

    def __init__(self, handle: DeploymentHandle):
        self.handle = handle

    async def call(self, req: NodeRequest, node_model: str) -> tuple[dict, Usage]:
        return await self.handle.call.remote(req, node_model)

    def open(self, method: str, req: NodeRequest, node_model: str) -> ItemStream:
        return getattr(self.handle, method).options(stream=True).remote(req, node_model)

    async def ask(self, method: str, *args: object) -> object:
        return await getattr(self.handle, method).remote(*args)

    def stream(self, method: str, *args: object) -> ItemStream:
        return getattr(self.handle, method).options(stream=True).remote(*args)


class ActorItems:
    def __init__(self, refs: ray.ObjectRefGenerator):
        self.refs = refs

    def __aiter__(self) -> "ActorItems":
        return self

    async def __anext__(self) -> object:
        return await (await self.refs.__anext__())

    def cancel(self) -> None:
        ray.cancel(self.refs)


class ActorLink:
    runtime = True

    def __init__(self, actor: ActorHandle):
        self.actor = actor

    async def call(self, req: NodeRequest, node_model: str) -> tuple[dict, Usage]:
        return await self.actor.call.remote(req, node_model)

    def open(self, method: str, req: NodeRequest, node_model: str) -> ItemStream:
        return ActorItems(getattr(self.actor, method).options(num_returns="streaming").remote(req, node_model))

    async def ask(self, method: str, *args: object) -> object:
        return await getattr(self.actor, method).remote(*args)

    def stream(self, method: str, *args: object) -> ItemStream:
        return ActorItems(getattr(self.actor, method).options(num_returns="streaming").remote(*args))


class WorkerRegistry:
    """The workers this process can reach, by node name: the config's Serve handles, and the
    detached actors of nodes added at run time (found by name when first needed; a ticket
    carries the one its router knows, so the dispatcher never holds a stale one)."""

    def __init__(self, handles: dict[str, DeploymentHandle], state_actor_name: str):
        self.links: dict[str, WorkerLink] = {name: ServeLink(handle) for name, handle in handles.items()}
        self.state_actor_name = state_actor_name

    async def find(self, node: str) -> WorkerLink | None:
        link = self.links.get(node)
        if link is None:
            try:
                actor = await asyncio.to_thread(
                    ray.get_actor, runtime_worker_name(self.state_actor_name, node), NAMESPACE)
            except ValueError:  # not created yet, or being removed
                return None
            link = self.links[node] = ActorLink(actor)
        return link

    def for_ticket(self, ticket: Ticket) -> WorkerLink:
        if ticket.worker is not None:
            return ActorLink(ticket.worker)
        link = self.links.get(ticket.node)
        if link is None:
            raise NodeError(f"no worker for node '{ticket.node}'", 503)
        return link

    def forget(self, node: str) -> None:
        """Drop a run-time node's actor handle (removed, or died: a new one may take its name)."""
        link = self.links.get(node)
        if link is not None and link.runtime:
            del self.links[node]


class ServeRouterLink:
    """The Router deployment as the Ingress's dispatcher reaches it. Outcomes are batched per
    issuing router replica and sent off the request path; Serve sends each batch to the
    replica that issued the tickets (`OwnerFirstRequestRouter`)."""

    def __init__(self, handle: DeploymentHandle, holder: str | None = None):
        self.handle = handle
        self.holder = holder  # this replica's actor name: its tickets' slots come back if it dies
        self._outcomes: dict[str, list[Outcome]] = defaultdict(list)
        self._flush_scheduled = False
        self._sending: set[asyncio.Task] = set()

    async def decide(self, profile: RequestProfile, tried: frozenset[str], last_error: str | None,
                     wait: bool) -> Ticket | None:
        response = self.handle.decide.remote(profile, tried, last_error, wait, holder=self.holder)
        answer = asyncio.ensure_future(_result(response))
        try:
            return await asyncio.shield(answer)
        except asyncio.CancelledError:
            # The client left while the router decided: a ticket issued anyway must come back.
            response.cancel()
            answer.add_done_callback(self._return_unused)
            raise

    def _return_unused(self, answer: asyncio.Future) -> None:
        if not answer.cancelled() and answer.exception() is None and answer.result() is not None:
            ticket = answer.result()
            self.report(Outcome(ticket.router_id, ticket.flight_id, ticket.node, None))

    def report(self, outcome: Outcome) -> None:
        self._outcomes[outcome.router_id].append(outcome)
        if not self._flush_scheduled:  # what ends within REPORT_EVERY_S goes in one call
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(REPORT_EVERY_S, self._flush)

    def began(self, ticket: Ticket, running: int) -> None:
        self._send(self.handle.began.remote(owner=ticket.router_id, flight_id=ticket.flight_id, node=ticket.node,
                                            running=running))

    def _flush(self) -> None:
        self._flush_scheduled = False
        batches, self._outcomes = self._outcomes, defaultdict(list)
        for owner, outcomes in batches.items():
            self._send(self.handle.report.remote(owner=owner, outcomes=outcomes))

    def _send(self, response) -> None:
        task = asyncio.ensure_future(_result(response))
        self._sending.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task) -> None:
        self._sending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("reporting to the router failed: %s", task.exception())


async def _result(response):
    return await response


def this_replica() -> str | None:
    """The Ray actor name of the Serve replica this runs in (None outside Serve)."""
    try:
        return serve.get_replica_context().replica_id.to_full_id_str()
    except Exception:
        return None
