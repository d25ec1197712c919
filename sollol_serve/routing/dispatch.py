"""Carrying a request to the node a router chose, in the process that serves the client.

The Router decides (a Ticket: a reserved slot on a node); the Dispatcher sends the request to
that node's worker itself, so a streamed chunk crosses one Ray hop (worker -> here) instead of
two, and reports each try's Outcome back to the router off the path. On a failure before the
first byte it asks for the next node; an urgent request whose node has not begun to answer in
time gets a second leg (a hedge) on another node with a free slot.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from opentelemetry import trace
from opentelemetry.trace import Span

from sollol_serve.analysis.profile import RequestProfile
from sollol_serve.config import FailoverConfig
from sollol_serve.observability.tracing import attempt_attributes, decision_attributes, failed, span, tracer
from sollol_serve.protocol import (
    FirstByte,
    GatewayError,
    NodeError,
    NodeRequest,
    NoNodeAvailable,
    Outcome,
    Routed,
    StreamBroken,
    StreamEnd,
    StreamStart,
    Ticket,
    Usage,
    error_message,
    is_node_fault,
    is_process_death,
    unwrap,
)
from sollol_serve.routing.failover import backoff_s
from sollol_serve.routing.links import ItemStream, WorkerLink

logger = logging.getLogger("ray.serve")


# A request whose Router replica died is asked again this many times (Serve restarts a dead
# replica in seconds; with two replicas the other answers at once).
ROUTER_DEATH_RETRIES = 4
ROUTER_DEATH_BACKOFF_S = 0.25


class RouterLink(Protocol):
    """The Router as the dispatcher sees it."""

    async def decide(self, profile: RequestProfile, tried: frozenset[str], last_error: str | None,
                     wait: bool) -> Ticket | None:
        """A ticket for the best node not tried yet; waits in the priority queue if `wait`,
        else None when no node has a free slot now (a hedge never queues)."""

    def report(self, outcome: Outcome) -> None:
        """Free the ticket's slot and learn from it (off the path)."""

    def began(self, ticket: Ticket, running: int) -> None:
        """The node's first byte for a ticket that asked for it, with the requests its worker
        counted running there at once."""


class WorkerLinks(Protocol):
    def for_ticket(self, ticket: Ticket) -> WorkerLink:
        """The worker of the ticket's node."""


class Relay:
    """Passes a worker's chunk batches through as they come and keeps the closing Usage here
    (it feeds learning, not the client). Failures after the first chunk: StreamBroken."""

    def __init__(self, node: str):
        self.node = node
        self.usage: Usage | None = None
        self.broken = False  # the node failed mid-stream (not the client going away)
        self.worker_died = False  # the node's worker process died: no fault of the node's

    def failed(self, exc: BaseException) -> None:
        self.worker_died = is_process_death(exc)
        self.broken = is_node_fault(exc)

    def _chunks_of(self, item: object) -> list[dict]:
        """The client's chunks in one item from the worker (a batch, or a lone Usage)."""
        batch = item if isinstance(item, list) else [item]
        if batch and isinstance(batch[0], FirstByte):  # for the router, not the client
            batch = batch[1:]
        if batch and isinstance(batch[-1], Usage):
            self.usage = batch.pop()
        return batch

    async def chunks(self, first: object, items: AsyncIterator[object]) -> AsyncIterator[list[dict]]:
        try:
            if batch := self._chunks_of(first):
                yield batch
            async for item in items:
                if batch := self._chunks_of(item):
                    yield batch
        except Exception as exc:
            self.failed(exc)
            self.broken = self.broken or not self.worker_died
            raise StreamBroken(f"stream from {self.node} broke: {error_message(exc)}") from None

    def outcome(self) -> bool | None:
        """True: the node delivered; False: it failed; None: the client left (learn nothing)."""
        return True if self.usage is not None else False if self.broken else None


def _queue_span(started_ns: int, queued_s: float) -> None:
    """The time a decision waited in the router's priority queue (none: a free slot at
    once), as a span of its own beneath the decision."""
    queued = tracer().start_span("sollol.queue", start_time=started_ns,
                                 attributes={"sollol.queued_s": round(queued_s, 6)})
    queued.end(end_time=started_ns + int(queued_s * 1e9))


def _end_attempt(leg: "Leg", outcome: bool | None) -> None:
    """End a try's span with what the node said of it, and how it ended."""
    leg.span.set_attributes(attempt_attributes(leg.relay.usage))
    if leg.error is not None or outcome is False or leg.relay.worker_died:
        failed(leg.span, leg.error or "the node failed after its first byte")
    elif outcome is None:  # the client left, or another leg answered first
        leg.span.set_attribute("sollol.dropped", True)
    leg.span.end()


def first_byte_of(item: object) -> FirstByte | None:
    """The worker's FirstByte in its first item: the item itself (a watched call) or the head
    of the first batch (a stream)."""
    if isinstance(item, list):
        item = item[0] if item else None
    return item if isinstance(item, FirstByte) else None


def refused_everywhere(attempts: "Attempts") -> None:
    """Every node tried refused the request the same way (a 404 for an endpoint or model none
    of them serves, a 400): the client gets that answer, not a 503 that reads like an outage."""
    statuses = {entry["status"] for entry in attempts.log}
    if len(statuses) == 1 and 400 <= (status := statuses.pop()) < 500 and status not in (408, 429):
        raise NodeError(attempts.log[-1]["error"], status=status, retryable=False)


@dataclass
class Attempts:
    """One request's way through the cluster: nodes tried, time queued, what happened."""

    request_id: str = ""
    log: list[dict] = field(default_factory=list)
    tried: set[str] = field(default_factory=set)
    failures: int = 0
    last_error: str | None = None
    waited_s: float = 0.0
    routing_ms: float = 0.0

    def admitted(self, ticket: Ticket, decided_s: float) -> None:
        self.waited_s += ticket.queued_s
        self.routing_ms = max(0.0, decided_s - ticket.queued_s) * 1000
        self.tried.add(ticket.node)

    def routing(self, ticket: Ticket) -> dict:
        """`_sollol_routing`: the router's choice, with this request's attempts and waits."""
        return {**ticket.choice, "request_id": self.request_id, "attempts": self.log,
                "queue_wait_ms": round(self.waited_s * 1000, 3), "routing_ms": round(self.routing_ms, 3)}


@dataclass(eq=False)
class Leg:
    """One node's try at a request (a hedged request has two at once)."""

    ticket: Ticket
    items: ItemStream
    relay: Relay
    first: asyncio.Future  # the worker's first item
    span: Span  # the try's span, ended when the leg is dropped
    dropped: bool = False
    error: str | None = None  # why it failed, if it did

    @property
    def node(self) -> str:
        return self.ticket.node


def for_try(req: NodeRequest, ticket: Ticket) -> NodeRequest:
    """The request as sent on this try: with the keep_alive the router chose for its node."""
    return req if ticket.keep_alive == req.keep_alive else dataclasses.replace(req, keep_alive=ticket.keep_alive)


class Dispatcher:
    def __init__(self, router: RouterLink, workers: WorkerLinks, failover: FailoverConfig,
                 rng: random.Random | None = None, clock=None):
        self.router, self.workers, self.failover = router, workers, failover
        self.rng = rng or random.Random()
        self.clock = clock or asyncio.get_running_loop().time

    # -- non-streamed ------------------------------------------------------------------
    async def call(self, profile: RequestProfile, req: NodeRequest) -> Routed:
        attempts = Attempts(req.request_id)
        while True:
            ticket = await self._ticket(profile, attempts)
            if ticket.probe or ticket.wants_first_byte or ticket.hedge_after_s is not None:
                routed = await self._watched(profile, req, attempts, ticket)
                if routed is not None:
                    return routed
                continue
            usage, ok, died = None, None, False  # ok stays None if the caller goes away (cancellation)
            with span("sollol.attempt", node=ticket.node, model=ticket.node_model) as attempt:
                try:
                    body, usage = await self.workers.for_ticket(ticket).call(for_try(req, ticket), ticket.node_model)
                    ok = True
                    attempt.set_attributes(attempt_attributes(usage))
                except Exception as exc:
                    ok, died = False if is_node_fault(exc) else None, is_process_death(exc)
                    failed(attempt, error_message(exc))
                    self._failed(exc, ticket.node, attempts)
                finally:
                    self._report(ticket, ok, usage, died)
            if ok:
                attempts.log.append({"node": ticket.node, "ok": True})
                return Routed(body=body, node=ticket.node, routing=attempts.routing(ticket))
            await self._backoff(attempts)

    async def _watched(self, profile: RequestProfile, req: NodeRequest, attempts: Attempts,
                       ticket: Ticket) -> Routed | None:
        """One try that shows the node's first byte (for hedging and for learning): the
        answer, or None when it failed after the first byte (the next try follows a backoff)."""
        leg, item = await self._start(profile, req, "call_watched", attempts, ticket)
        try:
            while isinstance(item, FirstByte):
                item = await leg.items.__anext__()
            body, leg.relay.usage = item
        except Exception as exc:  # failed after its first byte: the client has nothing yet
            leg.relay.failed(exc)
            leg.error = error_message(exc)
            self._drop(leg)
            self._failed(exc, leg.node, attempts)
            await self._backoff(attempts)
            return None
        except BaseException:
            self._drop(leg)
            raise
        self._drop(leg)
        attempts.log.append({"node": leg.node, "ok": True})
        return Routed(body=body, node=leg.node, routing=attempts.routing(leg.ticket))

    # -- streamed ----------------------------------------------------------------------
    async def stream(self, profile: RequestProfile, req: NodeRequest) -> AsyncIterator[object]:
        """StreamStart, then batches of chunks (lists) as the node sends them, then StreamEnd."""
        attempts = Attempts(req.request_id)
        leg, first = await self._start(profile, req, "stream", attempts)
        try:
            attempts.log.append({"node": leg.node, "ok": True})
            yield StreamStart(node=leg.node)
            async for batch in leg.relay.chunks(first, leg.items):
                yield batch
            usage = leg.relay.usage
            yield StreamEnd(attempts.routing(leg.ticket), prompt_tokens=usage.prompt_tokens if usage else 0,
                            completion_tokens=usage.completion_tokens if usage else 0)
        finally:
            self._drop(leg)

    # -- legs --------------------------------------------------------------------------
    async def _ticket(self, profile: RequestProfile, attempts: Attempts, wait: bool = True) -> Ticket | None:
        started, started_ns = self.clock(), time.time_ns()
        with span("sollol.decision", model=profile.model, priority=profile.priority, app=profile.app,
                  queue=wait, tried=sorted(attempts.tried)) as decision:
            for retry in range(ROUTER_DEATH_RETRIES + 1):
                try:
                    ticket = await self.router.decide(profile, frozenset(attempts.tried), attempts.last_error, wait)
                    break
                except Exception as exc:
                    if isinstance(unwrap(exc), NoNodeAvailable):
                        refused_everywhere(attempts)
                    # The Router replica died with the request in its queue: ask again. Serve has
                    # struck the dead replica off, so this goes to a live (or restarted) one.
                    if not is_process_death(exc, certain=True) or retry == ROUTER_DEATH_RETRIES:
                        raise
                    await asyncio.sleep(ROUTER_DEATH_BACKOFF_S * (retry + 1))
            if ticket is not None:
                attempts.admitted(ticket, self.clock() - started)
                decision.set_attributes(decision_attributes(ticket))
                _queue_span(started_ns, ticket.queued_s)
        return ticket

    async def _start(self, profile: RequestProfile, req: NodeRequest, method: str, attempts: Attempts,
                     ticket: Ticket | None = None) -> tuple[Leg, object]:
        """The first leg to produce its first item, and that item (on `ticket` first, if
        given). A leg that fails first moves the request to the next node (after a backoff);
        an urgent request whose node has not begun to answer in time gets a second leg."""
        while True:
            legs = [self._open(ticket or await self._ticket(profile, attempts), method, req)]
            ticket = None
            try:
                if legs[0].ticket.hedge_after_s is not None:
                    await self._hedge(legs, profile, req, method, attempts)
                won = await self._first_of(legs, attempts)
            except BaseException:
                for leg in legs:
                    self._drop(leg)
                raise
            if won is not None:
                return won
            await self._backoff(attempts)

    def _open(self, ticket: Ticket, method: str, req: NodeRequest, hedge: bool = False) -> Leg:
        attempt = tracer().start_span("sollol.attempt", attributes={
            "sollol.node": ticket.node, "sollol.model": ticket.node_model, "sollol.hedge": hedge,
            "sollol.stream": method == "stream"})
        try:
            with trace.use_span(attempt, end_on_exit=False):  # the worker's spans are the try's
                items = self.workers.for_ticket(ticket).open(method, for_try(req, ticket), ticket.node_model)
        except BaseException as exc:
            failed(attempt, error_message(exc))
            attempt.end()
            self._report(ticket, None, None)
            raise
        return Leg(ticket, items, Relay(ticket.node), asyncio.ensure_future(items.__anext__()), attempt)

    async def _hedge(self, legs: list[Leg], profile: RequestProfile, req: NodeRequest, method: str,
                     attempts: Attempts) -> None:
        first = legs[0]
        delay = first.ticket.hedge_after_s
        done, _ = await asyncio.wait([first.first], timeout=delay)
        if done:
            return
        ticket = await self._ticket(profile, attempts, wait=False)
        if ticket is None:  # no other node has a free slot: a hedge must not queue
            return
        attempts.log.append({"node": ticket.node, "hedge": True, "after_s": round(delay, 3),
                             "slow_node": first.node})
        legs.append(self._open(ticket, method, req, hedge=True))

    async def _first_of(self, legs: list[Leg], attempts: Attempts) -> tuple[Leg, object] | None:
        """The leg whose first item came first (the others are dropped), or None if all failed."""
        pending = {leg.first: leg for leg in legs}
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                leg = pending.pop(future)
                legs.remove(leg)
                error = future.exception()
                if error is None or isinstance(error, StopAsyncIteration):
                    first_byte = None if error else first_byte_of(future.result())
                    if leg.ticket.wants_first_byte and first_byte is not None:
                        self.router.began(leg.ticket, first_byte.running)
                    for loser in pending.values():
                        legs.remove(loser)
                        self._drop(loser)
                    return leg, Usage() if error else future.result()
                leg.relay.failed(error)
                leg.error = error_message(error)
                self._drop(leg)
                self._failed(error, leg.node, attempts, others_pending=bool(pending))
        return None

    def _drop(self, leg: Leg) -> None:
        """Give the leg's slot back, with what it showed; stop the node's work if unfinished."""
        if leg.dropped:
            return
        leg.dropped = True
        outcome = leg.relay.outcome()
        self._report(leg.ticket, outcome, leg.relay.usage, leg.relay.worker_died)
        if leg.relay.usage is None:
            leg.first.cancel()
            leg.items.cancel()
        _end_attempt(leg, outcome)

    def _report(self, ticket: Ticket, ok: bool | None, usage: Usage | None, worker_died: bool = False) -> None:
        self.router.report(Outcome(ticket.router_id, ticket.flight_id, ticket.node, ok, usage, worker_died))

    def _failed(self, exc: BaseException, node: str, attempts: Attempts, others_pending: bool = False) -> None:
        """Record a failed attempt; raise unless another node may still succeed (the router
        says whether one is left when asked for the next ticket)."""
        error = unwrap(exc)
        if not isinstance(error, NodeError):
            if isinstance(error, GatewayError) and not isinstance(error, StreamBroken):
                raise error
            error = NodeError(f"worker for {node} failed: {error_message(error)}", 502)
        attempts.log.append({"node": node, "ok": False, "status": error.status, "error": error.message})
        logger.warning("request %s: try on node %s failed (%s): %s", attempts.request_id, node, error.status,
                       error.message)
        attempts.failures += 1
        attempts.last_error = error.message
        if not error.retryable:
            raise error
        if not others_pending and attempts.failures >= self.failover.max_attempts:
            refused_everywhere(attempts)
            raise NoNodeAvailable(f"{attempts.failures} attempts failed (nodes: {', '.join(sorted(attempts.tried))});"
                                  f" last error: {error.message}")

    async def _backoff(self, attempts: Attempts) -> None:
        await asyncio.sleep(backoff_s(attempts.failures, self.failover, self.rng))
