"""Admission: a slot now, or a place in the priority queue until the core grants one.

`Admissions` owns the waiting: each waiter is a typed `Asking` (its profile, the nodes it must
avoid, the future its caller awaits); `pump()` hands free slots to waiters, most urgent first
(with aging), whenever a slot may have come free. Plain asyncio over a `RoutingCore`: unit-
tested without Ray.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from sollol_serve.analysis.profile import RequestProfile
from sollol_serve.protocol import NoNodeAvailable
from sollol_serve.routing.admission import Waiter
from sollol_serve.routing.core import Grant, RoutingCore


@dataclass(slots=True)
class Asking:
    """A queued request: what it is, where it must not go, and where its grant is delivered."""

    profile: RequestProfile
    exclude: set[str]
    granted: asyncio.Future


class Admissions:
    def __init__(self, core: RoutingCore, queue_timeout_s: float, clock: Callable[[], float] = time.monotonic):
        self.core, self.queue_timeout_s, self.clock = core, queue_timeout_s, clock

    @property
    def queue(self):
        return self.core.queue

    async def admit(self, profile: RequestProfile, exclude: set[str]) -> tuple[Grant, float]:
        """A reserved slot and the seconds waited for it in the queue."""
        now = self.clock()
        if not len(self.queue):  # nobody waiting: no one to overtake
            grant = self.core.admit_now(profile, exclude, profile.priority, now)
            if grant is not None:
                return grant, 0.0
        asking = Asking(profile, exclude, asyncio.get_running_loop().create_future())
        waiter = self.queue.push(asking, profile.priority, now, self.core.retry_after_s())
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
        for waiter in self.queue.ordered(now):
            if waiter.item.granted.done():  # its caller gave up
                self.queue.remove(waiter, now, served=False)
            else:
                waiters.append(waiter)
        aging_s = self.queue.aging_s
        asked = [(w.item.profile, w.item.exclude, w.effective_priority(now, aging_s)) for w in waiters]
        for waiter, decision in zip(waiters, self.core.plan(asked, now)):
            if decision is None:
                continue
            self.queue.remove(waiter, now, served=isinstance(decision, Grant))
            if isinstance(decision, Grant):
                waiter.item.granted.set_result(decision)
            else:
                waiter.item.granted.set_exception(decision)
