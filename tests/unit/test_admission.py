"""sollol_serve.routing.admission: the bounded priority queue with aging."""

from __future__ import annotations

import pickle

import pytest

from sollol_serve.protocol import GatewayError, QueueFull
from sollol_serve.routing.admission import PriorityQueue, Waiter, WaitStats, retry_after


def items(waiters) -> list:
    return [w.item for w in waiters]


def test_push_returns_waiter_and_len_contains():
    q: PriorityQueue[str] = PriorityQueue(max_size=10, aging_s=10.0)
    assert len(q) == 0
    w = q.push("x", priority=3, now=5.0)
    assert isinstance(w, Waiter)
    assert (w.item, w.priority, w.enqueued_at, w.seq) == ("x", 3, 5.0, 0)
    assert q.push("y", priority=3, now=5.0).seq == 1
    assert len(q) == 2 and w in q
    q.remove(w, now=6.0)
    assert len(q) == 1 and w not in q


def test_ordered_by_priority_then_fifo():
    q = PriorityQueue(max_size=10, aging_s=1000.0)
    for name, priority in [("low1", 1), ("mid1", 5), ("high", 10), ("mid2", 5), ("low2", 1), ("mid3", 5)]:
        q.push(name, priority, now=0.0)
    assert items(q.ordered(now=0.0)) == ["high", "mid1", "mid2", "mid3", "low1", "low2"]
    assert len(q) == 6  # ordered() doesn't take anything out


def test_effective_priority():
    w = Waiter(priority=2, enqueued_at=10.0, seq=0, item=None)
    assert w.effective_priority(10.0, aging_s=4.0) == 2.0
    assert w.effective_priority(16.0, aging_s=4.0) == 3.5


def test_aging_priority_1_overtakes_fresh_priority_10_after_9_aging_periods():
    aging_s = 2.0  # (10 - 1) x 2 = 18 s
    q = PriorityQueue(max_size=10, aging_s=aging_s)
    q.push("old-low", priority=1, now=0.0)
    # At 17.9 s it has effective priority 9.95: a fresh priority-10 request goes first.
    fresh = q.push("fresh-high", priority=10, now=17.9)
    assert items(q.ordered(now=17.9)) == ["fresh-high", "old-low"]
    q.remove(fresh, now=17.9, served=False)
    # At 18 s it has 10: tied with a fresh 10, and it arrived first.
    q.push("fresh-high-2", priority=10, now=18.0)
    assert items(q.ordered(now=18.0)) == ["old-low", "fresh-high-2"]
    # Later a priority-10 that arrives at 18.5 s still stays behind (10.25 > 10).
    q.push("fresh-high-3", priority=10, now=18.5)
    assert items(q.ordered(now=18.5)) == ["old-low", "fresh-high-2", "fresh-high-3"]


def test_aging_between_waiters_that_both_wait():
    # Aging 10 s: a priority-5 is ahead of a priority-7 that arrives more than 20 s after it.
    q = PriorityQueue(max_size=10, aging_s=10.0)
    q.push("p5", 5, now=0.0)
    q.push("p7", 7, now=25.0)
    assert items(q.ordered(now=25.0)) == ["p5", "p7"]  # 7.5 vs 7.0
    assert items(q.ordered(now=100.0)) == ["p5", "p7"]  # 15.0 vs 14.5: the gap stays
    q = PriorityQueue(max_size=10, aging_s=10.0)
    q.push("p5", 5, now=0.0)
    q.push("p7", 7, now=15.0)
    assert items(q.ordered(now=15.0)) == ["p7", "p5"]  # 7.0 vs 6.5
    assert items(q.ordered(now=100.0)) == ["p7", "p5"]  # 15.5 vs 15.0


def test_bound_raises_queue_full_429_with_retry_after():
    q = PriorityQueue(max_size=2, aging_s=10.0)
    q.push("a", 5, now=0.0)
    q.push("b", 5, now=0.0)
    with pytest.raises(QueueFull) as info:
        q.push("c", 10, now=1.0, retry_after_s=7)
    err = info.value
    assert isinstance(err, GatewayError)
    assert (err.status, err.code, err.retry_after_s) == (429, "queue_full", 7)
    assert "queue of 2 is full" in err.message and "retry in 7 s" in err.message
    assert len(q) == 2  # nothing was added
    with pytest.raises(QueueFull) as info:
        q.push("c", 10, now=1.0, retry_after_s=0)
    assert info.value.retry_after_s == 1  # at least 1 s
    # It survives a Ray hop with its Retry-After.
    again = pickle.loads(pickle.dumps(err))
    assert (type(again), again.status, again.retry_after_s, again.message) == (QueueFull, 429, 7, err.message)


def test_zero_size_queue_rejects_everything():
    q = PriorityQueue(max_size=0, aging_s=10.0)
    with pytest.raises(QueueFull):
        q.push("a", 10, now=0.0)


def test_wait_stats_per_priority():
    q = PriorityQueue(max_size=10, aging_s=10.0)
    a = q.push("a", 5, now=0.0)
    b = q.push("b", 5, now=1.0)
    c = q.push("c", 9, now=2.0)
    d = q.push("d", 5, now=2.0)
    q.remove(c, now=2.5)  # waited .5 s
    q.remove(a, now=3.0)  # waited 3 s
    q.remove(b, now=2.0)  # waited 1 s
    q.remove(d, now=50.0, served=False)  # gave up: not recorded
    assert len(q) == 0
    assert sorted(q.wait_stats) == [5, 9]
    s5, s9 = q.wait_stats[5], q.wait_stats[9]
    assert (s5.count, s5.total_s, s5.max_s) == (2, pytest.approx(4.0), 3.0)
    assert s5.as_dict() == {"count": 2, "mean_ms": 2000.0, "max_ms": 3000.0, "recent_ms": 2000.0}
    assert s9.as_dict() == {"count": 1, "mean_ms": 500.0, "max_ms": 500.0, "recent_ms": 500.0}


def test_wait_stats_empty_as_dict():
    assert WaitStats().as_dict() == {"count": 0, "mean_ms": 0.0, "max_ms": 0.0, "recent_ms": 0.0}


@pytest.mark.parametrize(
    ("queued", "mean_service_s", "total_slots", "seconds"),
    [
        (0, 5.0, 10, 1),  # .5 -> at least 1
        (9, 5.0, 10, 5),  # 10 x 5 / 10
        (10, 5.0, 10, 6),  # 55 / 10 = 5.5 -> 6
        (3, 2.0, 0, 8),  # no slots counted as 1
        (0, 0.0, 4, 1),
        (99, 1.5, 3, 50),
        (10, 1.1, 5, 3),  # 2.42 rounds up
    ],
)
def test_retry_after(queued, mean_service_s, total_slots, seconds):
    assert retry_after(queued, mean_service_s, total_slots) == seconds
