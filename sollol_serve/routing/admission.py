"""The priority queue on the request path: who goes next when the cluster is full.

Waiting requests are ordered by effective priority = priority + waited seconds / aging_s
(so a priority-1 request overtakes fresh priority-10 ones after 9 x aging_s and never
starves), then by arrival. The queue is bounded: a full queue rejects with a Retry-After
estimate. Wait times are recorded per priority. Pure and synchronous; the router's
`Admissions` (pump.py) wraps it with asyncio futures and serves it in fair-share order.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, deque
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from sollol_serve.cluster.learning import Ewma
from sollol_serve.protocol import QueueFull

T = TypeVar("T")


@dataclass(slots=True)
class Waiter(Generic[T]):
    priority: int
    enqueued_at: float
    seq: int
    item: T
    group: Hashable = None  # whose it is (fair share's application): the queue keeps each group's own line

    def effective_priority(self, now: float, aging_s: float) -> float:
        return self.priority + (now - self.enqueued_at) / aging_s


@dataclass
class WaitStats:
    count: int = 0
    total_s: float = 0.0
    max_s: float = 0.0
    recent: Ewma = field(default_factory=lambda: Ewma(alpha=0.1))

    def add(self, waited_s: float) -> None:
        self.count += 1
        self.total_s += waited_s
        self.max_s = max(self.max_s, waited_s)
        self.recent.update(waited_s)

    def as_dict(self) -> dict:
        mean = self.total_s / self.count if self.count else 0.0
        return {"count": self.count, "mean_ms": round(mean * 1000, 2), "max_ms": round(self.max_s * 1000, 2),
                "recent_ms": round(self.recent.mean * 1000, 2)}


class PriorityQueue(Generic[T]):
    """Waiters by arrival, and one line per (priority, group) so that the next of each line is
    found without looking at the rest: push and remove cost O(1) (a waiter leaving from the
    middle of its line is dropped from it when it reaches the front)."""

    def __init__(self, max_size: int, aging_s: float):
        self.max_size = max_size
        self.aging_s = aging_s
        self._waiters: dict[int, Waiter[T]] = {}  # seq -> waiter, in arrival order
        self._lines: dict[tuple[int, Hashable], deque[Waiter[T]]] = {}
        self._counts: Counter[tuple[int, Hashable]] = Counter()  # waiters in each line
        self._seq = itertools.count()
        self.wait_stats: dict[int, WaitStats] = {}

    def __len__(self) -> int:
        return len(self._waiters)

    def __contains__(self, waiter: object) -> bool:
        return isinstance(waiter, Waiter) and self._waiters.get(waiter.seq) is waiter

    def __iter__(self) -> Iterator[Waiter[T]]:
        return iter(list(self._waiters.values()))

    def push(self, item: T, priority: int, now: float, retry_after_s: int = 1, bounded: bool = True,
             group: Hashable = None) -> Waiter[T]:
        """Queue `item`; past `max_size` only if not `bounded` (a request within its
        application's own part of the queue is never refused for another's flood)."""
        if bounded and len(self._waiters) >= self.max_size:
            raise QueueFull(f"the cluster is saturated and its queue of {self.max_size} is full; "
                            f"retry in {retry_after_s} s", retry_after_s=max(1, retry_after_s))
        waiter = Waiter(priority, now, next(self._seq), item, group)
        self._waiters[waiter.seq] = waiter
        key = (priority, group)
        self._lines.setdefault(key, deque()).append(waiter)
        self._counts[key] += 1
        return waiter

    def ordered(self, now: float) -> list[Waiter[T]]:
        """Waiters, next to serve first."""
        return sorted(self._waiters.values(), key=lambda w: (-w.effective_priority(now, self.aging_s), w.seq))

    def lines(self) -> dict[tuple[int, Hashable], Iterator[Waiter[T]]]:
        """Each (priority, group) line's waiters in arrival order, lazily: looking at a line's
        first few costs that few. Not to be advanced after a waiter is removed."""
        return {key: (w for w in line if w.seq in self._waiters) for key, line in self._lines.items()}

    def fronts(self) -> dict[tuple[int, Hashable], Waiter[T]]:
        """The first waiter of each (priority, group) line."""
        return {key: line[0] for key, line in self._lines.items()}

    def counts(self) -> dict[Hashable, int]:
        """Waiters per group."""
        out: dict[Hashable, int] = {}
        for (_, group), n in self._counts.items():
            out[group] = out.get(group, 0) + n
        return out

    def remove(self, waiter: Waiter[T], now: float, served: bool = True) -> None:
        """Take a waiter out (served, or given up); served waits are recorded."""
        if waiter not in self:
            raise ValueError("not in the queue")
        del self._waiters[waiter.seq]
        key = (waiter.priority, waiter.group)
        self._counts[key] -= 1
        line = self._lines[key]
        while line and line[0].seq not in self._waiters:
            line.popleft()
        if not self._counts[key]:
            del self._counts[key], self._lines[key]
        if served:
            self.wait_stats.setdefault(waiter.priority, WaitStats()).add(now - waiter.enqueued_at)


def retry_after(queued: int, mean_service_s: float, total_slots: int) -> int:
    """Seconds until the queue has drained enough to take one more, roughly."""
    return max(1, math.ceil((queued + 1) * mean_service_s / max(total_slots, 1)))
