"""Admission: a slot now, or a place in the priority queue until the core grants one.

`Admissions` owns the waiting: each waiter is a typed `Asking` (its profile, the nodes it must
avoid, the future its caller awaits); `pump()` hands free slots to waiters whenever a slot may
have come free: the most urgent band first (priority with aging), and within it the
application furthest behind its share (`fair_share.py`). A request's first try counts against
its application; a retry or a hedge does not. Plain asyncio over a `RoutingCore`: unit-tested
without Ray.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from sollol_serve.analysis.profile import RequestProfile
from sollol_serve.protocol import GatewayError, NoNodeAvailable, QueueFull
from sollol_serve.observability.applications import MAX_APPLICATIONS, OTHER
from sollol_serve.routing.admission import Waiter, WaitStats
from sollol_serve.routing.core import Grant, RoutingCore
from sollol_serve.routing.fair_share import FairShare, queue_bound, request_cost


@dataclass(slots=True)
class InLine:
    """A waiter as fair share sees it (fair_share.Queued)."""

    waiter: Waiter[Asking]

    @property
    def app(self) -> str:
        return self.waiter.item.profile.app

    @property
    def share(self) -> float:
        return self.waiter.item.profile.share

    @property
    def priority(self) -> int:
        return self.waiter.priority

    @property
    def seq(self) -> int:
        return self.waiter.seq

    @property
    def cost(self) -> float:
        profile = self.waiter.item.profile
        return request_cost(profile.tokens_in, profile.tokens_out_est)


@dataclass(slots=True)
class Asking:
    """A queued request: what it is, where it must not go, and where its grant is delivered."""

    profile: RequestProfile
    exclude: set[str]
    granted: asyncio.Future
    counted: bool = True  # its application is charged for it (a first try)


class Admissions:
    def __init__(self, core: RoutingCore, queue_timeout_s: float, clock: Callable[[], float] = time.monotonic,
                 fair: bool = True):
        self.core, self.queue_timeout_s, self.clock, self.fair_on = core, queue_timeout_s, clock, fair
        self.fair = FairShare()
        self.refused: dict[str, int] = {}  # application -> requests refused over its part of the queue
        self.waited: dict[str, WaitStats] = {}  # application -> its served requests' waits

    @property
    def queue(self):
        return self.core.queue

    async def admit(self, profile: RequestProfile, exclude: set[str], counted: bool = True) -> tuple[Grant, float]:
        """A reserved slot and the seconds waited for it in the queue. `counted`: a first try,
        charged to its application. Raises at once if no node can take the request."""
        now = self.clock()
        if not len(self.queue):  # nobody waiting: no one to overtake
            self.fair.joined(profile.app, set())
            grant = self.core.admit_now(profile, exclude, profile.priority, now)
            if grant is not None:
                self._waited(profile.app, 0.0)
                self._charge(grant, profile, counted)
                return grant, 0.0
        else:
            self.core.rank(profile, exclude, now)  # queued only if some node could serve it
        asking = Asking(profile, exclude, asyncio.get_running_loop().create_future(), counted)
        waiter = self._enqueue(asking, now)
        self.pump()
        try:
            grant = await asyncio.wait_for(asyncio.shield(asking.granted), self.queue_timeout_s)
        except asyncio.TimeoutError:
            self.queue.remove(waiter, self.clock(), served=False)
            raise NoNodeAvailable(f"no slot for '{profile.model}' within "
                                  f"{self.queue_timeout_s:.0f} s in the queue") from None
        except asyncio.CancelledError:
            self._abandon(waiter)
            raise
        return grant, self.clock() - now

    def _enqueue(self, asking: Asking, now: float) -> Waiter[Asking]:
        """Into the queue, within its application's part of it (else 429 for that one alone)."""
        app = asking.profile.app
        if not self.fair_on:
            return self.queue.push(asking, asking.profile.priority, now, self.core.retry_after_s(), group=app)
        queued = self.queue.counts()
        shares = {group: waiter.item.profile.share for (_, group), waiter in self.queue.fronts().items()}
        bound = queue_bound(app, asking.profile.share, queued, shares, self.queue.max_size)
        retry_s = self.core.retry_after_s()
        if queued.get(app, 0) >= bound:
            counted_as = app if app in self.refused or len(self.refused) < MAX_APPLICATIONS else OTHER
            self.refused[counted_as] = self.refused.get(counted_as, 0) + 1
            raise QueueFull(f"the cluster is saturated and {queued[app]} requests of application '{app}' are "
                            f"waiting, its part of the queue; retry in {retry_s} s", retry_after_s=retry_s)
        if app not in queued:
            self.fair.joined(app, set(queued))
        return self.queue.push(asking, asking.profile.priority, now, retry_s, bounded=False, group=app)

    def _waited(self, app: str, waited_s: float) -> None:
        if app not in self.waited and len(self.waited) >= MAX_APPLICATIONS:
            app = OTHER  # names from headers are the caller's: the list stays bounded
        self.waited.setdefault(app, WaitStats()).add(waited_s)

    def by_application(self, share_of: Callable[[str], float]) -> dict[str, dict]:
        """Per application: its share, requests waiting now, refused over its part of the
        queue, and the waits of its served requests."""
        waiting = self.queue.counts()
        apps = sorted(set(self.waited) | set(self.refused) | set(waiting))[:MAX_APPLICATIONS]
        return {app: {"share": share_of(app), "waiting": waiting.get(app, 0), "refused": self.refused.get(app, 0),
                      **self.waited.get(app, WaitStats()).as_dict()} for app in apps}

    def _charge(self, grant: Grant, profile: RequestProfile, counted: bool) -> None:
        if not counted:
            return
        tokens = request_cost(profile.tokens_in, profile.tokens_out_est)
        self.fair.charge(profile.app, profile.share, tokens)
        flight = self.core.flights[grant.choice.node.name].get(grant.flight_id)
        if flight is not None:
            flight.charged = tokens

    def _abandon(self, waiter: Waiter[Asking]) -> None:
        """The caller went away while queued: give back its place, or its slot."""
        granted = waiter.item.granted
        if granted.done() and not granted.cancelled() and granted.exception() is None:
            grant = granted.result()
            self.core.finish(grant.flight_id, grant.choice.node.name, self.clock())
            self.pump()
        elif waiter in self.queue:
            self.queue.remove(waiter, self.clock(), served=False)

    def pump(self) -> None:
        """Hand free slots to waiters in serving order (fair_share.py within the most urgent
        band), as far as the core finds room: what it costs grows with the slots handed out,
        not with the length of the queue. When the nodes changed, every waiter that no node
        can serve now is told so."""
        if not len(self.queue):
            return
        now = self.clock()
        if self.core.take_picture_change():
            self._refuse_unservable(now)
        seen: list[Waiter[Asking]] = []
        gone: list[Waiter[Asking]] = []
        aging_s = self.queue.aging_s

        def asked() -> Iterator[tuple[RequestProfile, set[str], float]]:
            for waiter in self._serving_order(now):
                if waiter.item.granted.done():  # its caller gave up
                    gone.append(waiter)
                    continue
                seen.append(waiter)
                yield waiter.item.profile, waiter.item.exclude, waiter.effective_priority(now, aging_s)

        decisions = self.core.plan(asked(), now)
        for waiter in gone:
            self.queue.remove(waiter, now, served=False)
        for waiter, decision in zip(seen, decisions):
            if decision is not None:
                self._settle(waiter, decision, now)

    def _settle(self, waiter: Waiter[Asking], decision: Grant | GatewayError, now: float) -> None:
        self.queue.remove(waiter, now, served=isinstance(decision, Grant))
        if isinstance(decision, Grant):
            self._waited(waiter.item.profile.app, now - waiter.enqueued_at)
            self._charge(decision, waiter.item.profile, waiter.item.counted)
            waiter.item.granted.set_result(decision)
        else:
            waiter.item.granted.set_exception(decision)

    def _refuse_unservable(self, now: float) -> None:
        """Every waiter no node can take now (its model gone, its nodes down) gets its error."""
        for waiter in self.queue:
            try:
                self.core.rank(waiter.item.profile, waiter.item.exclude, now)
            except GatewayError as exc:
                if waiter.item.granted.done():
                    self.queue.remove(waiter, now, served=False)
                else:
                    self._settle(waiter, exc, now)

    def _serving_order(self, now: float) -> Iterator[Waiter[Asking]]:
        if not self.fair_on:  # most urgent first (with aging), then by arrival: the queue's own order
            return iter(self.queue.ordered(now))
        lines = {key: (InLine(w) for w in line) for key, line in self.queue.lines().items()}
        aging_s = self.queue.aging_s
        return (entry.waiter for entry in self.fair.serve(
            lines, self.queue.counts(), lambda entry: entry.waiter.effective_priority(now, aging_s)))

    def finished(self, profile: RequestProfile, charged: float, prompt_tokens: int, completion_tokens: int) -> None:
        """A charged request ended: count what it used instead of what was predicted."""
        if charged:
            self.fair.correct(profile.app, profile.share, charged, request_cost(prompt_tokens, completion_tokens))
