"""The priority queue on the request path: who goes next when the cluster is full.

Waiting requests are ordered by effective priority = priority + waited seconds / aging_s
(so a priority-1 request overtakes fresh priority-10 ones after 9 x aging_s and never
starves), then by arrival. The queue is bounded: a full queue rejects with a Retry-After
estimate. Wait times are recorded per priority. Pure and synchronous; the router's
`Admission` wraps it with asyncio futures.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
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
    def __init__(self, max_size: int, aging_s: float):
        self.max_size = max_size
        self.aging_s = aging_s
        self._waiters: list[Waiter[T]] = []
        self._seq = itertools.count()
        self.wait_stats: dict[int, WaitStats] = {}

    def __len__(self) -> int:
        return len(self._waiters)

    def __contains__(self, waiter: object) -> bool:
        return waiter in self._waiters

    def __iter__(self) -> Iterator[Waiter[T]]:
        return iter(list(self._waiters))

    def push(self, item: T, priority: int, now: float, retry_after_s: int = 1, bounded: bool = True) -> Waiter[T]:
        """Queue `item`; past `max_size` only if not `bounded` (a request within its
        application's own part of the queue is never refused for another's flood)."""
        if bounded and len(self._waiters) >= self.max_size:
            raise QueueFull(f"the cluster is saturated and its queue of {self.max_size} is full; "
                            f"retry in {retry_after_s} s", retry_after_s=max(1, retry_after_s))
        waiter = Waiter(priority, now, next(self._seq), item)
        self._waiters.append(waiter)
        return waiter

    def ordered(self, now: float) -> list[Waiter[T]]:
        """Waiters, next to serve first."""
        return sorted(self._waiters, key=lambda w: (-w.effective_priority(now, self.aging_s), w.seq))

    def remove(self, waiter: Waiter[T], now: float, served: bool = True) -> None:
        """Take a waiter out (served, or given up); served waits are recorded."""
        self._waiters.remove(waiter)
        if served:
            self.wait_stats.setdefault(waiter.priority, WaitStats()).add(now - waiter.enqueued_at)

    def count_ahead(self, priority: int, now: float) -> int:
        """Waiters that a new request of `priority` would queue behind."""
        return sum(1 for w in self._waiters if w.effective_priority(now, self.aging_s) >= priority)


def retry_after(queued: int, mean_service_s: float, total_slots: int) -> int:
    """Seconds until the queue has drained enough to take one more, roughly."""
    return max(1, math.ceil((queued + 1) * mean_service_s / max(total_slots, 1)))
