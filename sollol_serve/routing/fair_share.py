"""Fair share between applications inside a priority band: the Virtual Token Counter.

At equal priority a queue served by arrival lets whoever sends most own the cluster. Here each
application has a counter of the service it has had, in tokens (prompt plus `OUTPUT_WEIGHT` x
output: predicted when it is granted a slot, corrected when its answer ends), divided by its
share; the next free slot goes to the waiting application furthest behind (the lowest counter),
first come first served within it. This is the Virtual Token Counter of Sheng et al.,
"Fairness in Serving Large Language Models" (OSDI 2024): between two backlogged applications
the gap in service stays bounded, and no slot is left idle for fairness' sake (an application
alone gets the whole cluster).

An application that starts waiting is lifted to the lowest counter among those waiting (to the
counter of the last one served if none waits): it is owed nothing for the time it sent nothing,
so a late joiner gets its share from now on, not a burst. Priorities come first: the most
urgent waiter (priority with aging) names the band, and the share decides within it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

OUTPUT_WEIGHT = 2.0  # a generated token costs the node about two prompt tokens' time (VTC's weights)
MAX_IDLE_APPLICATIONS = 1024  # counters of applications with nothing waiting kept at most


def request_cost(tokens_in: int, tokens_out: int) -> float:
    return tokens_in + OUTPUT_WEIGHT * tokens_out


@dataclass(frozen=True, slots=True)
class Waiting:
    """A queued request, as fair share sees it."""

    app: str
    share: float
    priority: int  # its band
    urgency: float  # its priority with aging: the most urgent waiter names the band served
    seq: int  # arrival order
    cost: float  # predicted tokens


class FairShare:
    def __init__(self) -> None:
        self.counters: dict[str, float] = {}
        self.last_served = 0.0

    def counter(self, app: str) -> float:
        return self.counters.get(app, 0.0)

    def joined(self, app: str, waiting: set[str]) -> None:
        """`app` starts waiting (`waiting`: the applications with requests waiting already)."""
        others = [self.counter(a) for a in waiting if a != app]
        self.counters[app] = max(self.counter(app), min(others) if others else self.last_served)
        self._forget_idle(waiting | {app})

    def charge(self, app: str, share: float, tokens: float) -> None:
        """A request of `app` was granted a slot: its predicted tokens count now."""
        self.counters[app] = self.counter(app) + tokens / share
        self.last_served = self.counters[app]

    def correct(self, app: str, share: float, charged: float, used: float) -> None:
        """Its answer ended having used `used` tokens where `charged` were counted."""
        if app in self.counters:
            self.counters[app] += (used - charged) / share

    def order(self, waiting: list[Waiting]) -> list[Waiting]:
        """The order to serve `waiting` in: the band of the most urgent, then the application
        furthest behind, counting each as served in turn. At equal counters (a joiner is lifted
        to the lowest) the one with fewer requests waiting goes first: the lighter user is not
        made to wait behind a backlog it is level with. Then arrival."""
        queues: dict[tuple[int, str], deque[Waiting]] = {}
        for w in sorted(waiting, key=lambda w: w.seq):
            queues.setdefault((w.priority, w.app), deque()).append(w)
        virtual = {app: self.counter(app) for _, app in queues}
        backlog = {app: 0 for app in virtual}
        for w in waiting:
            backlog[w.app] += 1
        out: list[Waiting] = []
        while queues:
            heads = [q[0] for q in queues.values()]  # each queue's oldest is its most urgent
            band = max(heads, key=lambda w: (w.urgency, -w.seq)).priority
            pick = min((w for w in heads if w.priority == band),
                       key=lambda w: (virtual[w.app], backlog[w.app], w.seq))
            out.append(pick)
            virtual[pick.app] += pick.cost / pick.share
            backlog[pick.app] -= 1
            queue = queues[(pick.priority, pick.app)]
            queue.popleft()
            if not queue:
                del queues[(pick.priority, pick.app)]
        return out

    def _forget_idle(self, waiting: set[str]) -> None:
        """Drop the lowest counters of applications with nothing waiting past a bound: a
        forgotten one that comes back is lifted as any joiner is, so nothing is lost."""
        if len(self.counters) <= MAX_IDLE_APPLICATIONS:
            return  # the common case, on every request's admission: nothing to sort
        idle = [app for app in self.counters if app not in waiting]
        for app in sorted(idle, key=self.counter)[:max(0, len(idle) - MAX_IDLE_APPLICATIONS)]:
            del self.counters[app]


def queue_bound(app: str, share: float, queued: dict[str, int], shares: dict[str, float], queue_max: int) -> int:
    """How many requests `app` may have waiting: its share of the queue among the applications
    waiting (itself included), so that a flood fills its own part and never another's."""
    total = share + sum(shares[a] for a, n in queued.items() if n > 0 and a != app)
    return max(1, math.floor(queue_max * share / total))
