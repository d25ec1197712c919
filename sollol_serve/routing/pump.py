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
from collections.abc import Callable
from dataclasses import dataclass

from sollol_serve.analysis.profile import RequestProfile
from sollol_serve.protocol import NoNodeAvailable, QueueFull
from sollol_serve.observability.applications import MAX_APPLICATIONS, OTHER
from sollol_serve.routing.admission import Waiter, WaitStats
from sollol_serve.routing.core import Grant, RoutingCore
from sollol_serve.routing.fair_share import FairShare, Waiting, queue_bound, request_cost


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
        charged to its application."""
        now = self.clock()
        if not len(self.queue):  # nobody waiting: no one to overtake
            self.fair.joined(profile.app, set())
            grant = self.core.admit_now(profile, exclude, profile.priority, now)
            if grant is not None:
                self._waited(profile.app, 0.0)
                self._charge(grant, profile, counted)
                return grant, 0.0
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
        if not self.fair_on:
            return self.queue.push(asking, asking.profile.priority, now, self.core.retry_after_s())
        app, queued, shares = asking.profile.app, {}, {}
        for waiter in self.queue:
            other = waiter.item.profile
            queued[other.app] = queued.get(other.app, 0) + 1
            shares[other.app] = other.share
        bound = queue_bound(app, asking.profile.share, queued, shares, self.queue.max_size)
        retry_s = self.core.retry_after_s()
        if queued.get(app, 0) >= bound:
            counted_as = app if app in self.refused or len(self.refused) < MAX_APPLICATIONS else OTHER
            self.refused[counted_as] = self.refused.get(counted_as, 0) + 1
            raise QueueFull(f"the cluster is saturated and {queued[app]} requests of application '{app}' are "
                            f"waiting, its part of the queue; retry in {retry_s} s", retry_after_s=retry_s)
        if app not in queued:
            self.fair.joined(app, set(queued))
        return self.queue.push(asking, asking.profile.priority, now, retry_s, bounded=False)

    def _waited(self, app: str, waited_s: float) -> None:
        if app not in self.waited and len(self.waited) >= MAX_APPLICATIONS:
            app = OTHER  # names from headers are the caller's: the list stays bounded
        self.waited.setdefault(app, WaitStats()).add(waited_s)

    def by_application(self, share_of: Callable[[str], float]) -> dict[str, dict]:
        """Per application: its share, requests waiting now, refused over its part of the
        queue, and the waits of its served requests."""
        waiting: dict[str, int] = {}
        for waiter in self.queue:
            waiting[waiter.item.profile.app] = waiting.get(waiter.item.profile.app, 0) + 1
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
        """Hand free slots to waiters, most urgent first (with aging)."""
        if not len(self.queue):
            return
        now = self.clock()
        waiters = []
        for waiter in self.queue:
            if waiter.item.granted.done():  # its caller gave up
                self.queue.remove(waiter, now, served=False)
            else:
                waiters.append(waiter)
        waiters = self._fair_order(waiters, now)
        aging_s = self.queue.aging_s
        asked = [(w.item.profile, w.item.exclude, w.effective_priority(now, aging_s)) for w in waiters]
        for waiter, decision in zip(waiters, self.core.plan(asked, now)):
            if decision is None:
                continue
            self.queue.remove(waiter, now, served=isinstance(decision, Grant))
            if isinstance(decision, Grant):
                self._waited(waiter.item.profile.app, now - waiter.enqueued_at)
                self._charge(decision, waiter.item.profile, waiter.item.counted)
                waiter.item.granted.set_result(decision)
            else:
                waiter.item.granted.set_exception(decision)

    def _fair_order(self, waiters: list[Waiter[Asking]], now: float) -> list[Waiter[Asking]]:
        if not self.fair_on:  # most urgent first (with aging), then by arrival: the queue's own order
            return self.queue.ordered(now)
        by_seq = {w.seq: w for w in waiters}
        seen = [Waiting(w.item.profile.app, w.item.profile.share, w.priority, w.effective_priority(now, self.queue.aging_s),
                        w.seq, request_cost(w.item.profile.tokens_in, w.item.profile.tokens_out_est)) for w in waiters]
        return [by_seq[w.seq] for w in self.fair.order(seen)]

    def finished(self, profile: RequestProfile, charged: float, prompt_tokens: int, completion_tokens: int) -> None:
        """A charged request ended: count what it used instead of what was predicted."""
        if charged:
            self.fair.correct(profile.app, profile.share, charged, request_cost(prompt_tokens, completion_tokens))
