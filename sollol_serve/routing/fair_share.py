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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, TypeVar

OUTPUT_WEIGHT = 2.0  # a generated token costs the node about two prompt tokens' time (VTC's weights)
MAX_IDLE_APPLICATIONS = 1024  # counters of applications with nothing waiting kept at most


def request_cost(tokens_in: int, tokens_out: int) -> float:
    return tokens_in + OUTPUT_WEIGHT * tokens_out


class Queued(Protocol):
    """What fair share needs of a waiting request."""

    @property
    def app(self) -> str: ...
    @property
    def share(self) -> float: ...
    @property
    def priority(self) -> int: ...
    @property
    def seq(self) -> int: ...
    @property
    def cost(self) -> float: ...


Q = TypeVar("Q", bound=Queued)


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
        """The whole order to serve `waiting` in (see `serve`)."""
        lines: dict[tuple[int, str], list[Waiting]] = {}
        backlog: dict[str, int] = {}
        for w in sorted(waiting, key=lambda w: w.seq):
            lines.setdefault((w.priority, w.app), []).append(w)
            backlog[w.app] = backlog.get(w.app, 0) + 1
        return list(self.serve({key: iter(line) for key, line in lines.items()}, backlog, lambda w: w.urgency))

    def serve(self, lines: dict[tuple[int, str], Iterator[Q]], backlog: dict[str, int],
              urgency: Callable[[Q], float]) -> Iterator[Q]:
        """The order to serve waiting requests in, lazily: each next costs O(lines), whatever
        the number waiting. `lines`: each (priority, application)'s requests in arrival order
        (its first is its most urgent); `backlog`: requests waiting per application. The band
        of the most urgent first, then the application furthest behind, counting each as
        served in turn. At equal counters (a joiner is lifted to the lowest) the one with fewer
        requests waiting goes first: the lighter user is not made to wait behind a backlog it
        is level with. Then arrival."""
        heads = {key: first for key, line in lines.items() if (first := next(line, None)) is not None}
        virtual = {app: self.counter(app) for _, app in heads}
        backlog = dict(backlog)
        while heads:
            band = max(heads.values(), key=lambda w: (urgency(w), -w.seq)).priority
            key = min((k for k, w in heads.items() if w.priority == band),
                      key=lambda k: (virtual[k[1]], backlog.get(k[1], 0), heads[k].seq))
            pick = heads[key]
            yield pick
            virtual[pick.app] += pick.cost / pick.share
            backlog[pick.app] = backlog.get(pick.app, 0) - 1
            following = next(lines[key], None)
            if following is None:
                del heads[key]
            else:
                heads[key] = following

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
