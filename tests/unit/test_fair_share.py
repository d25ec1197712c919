"""Fair share between applications (the Virtual Token Counter), with orders worked out by hand."""

from __future__ import annotations

import pytest

from sollol_serve.routing import fair_share
from sollol_serve.routing.fair_share import FairShare, Waiting, queue_bound, request_cost


def w(app: str, seq: int, cost: float = 100.0, share: float = 1.0, priority: int = 5, urgency: float | None = None):
    return Waiting(app, share, priority, float(priority) if urgency is None else urgency, seq, cost)


def names(order: list[Waiting]) -> list[str]:
    return [f"{x.app}{x.seq}" for x in order]


def test_a_request_costs_its_prompt_and_twice_its_output():
    assert request_cost(50, 100) == 250.0


def test_two_applications_take_turns_once_the_newcomer_waits():
    # A has had 1000 tokens and waits with three requests; B joins: lifted to 1000 (the lowest
    # waiting counter). a1 and b4 tie at 1000: B has fewer waiting (1 against 3), so b4 goes
    # first, B to 1100; then a1 (1000 < 1100), a2, a3.
    fs = FairShare()
    fs.counters["A"] = 1000.0
    fs.joined("B", {"A"})
    assert fs.counter("B") == 1000.0
    assert names(fs.order([w("A", 1), w("A", 2), w("A", 3), w("B", 4)])) == ["B4", "A1", "A2", "A3"]


def test_shares_weigh_the_turns():
    # A has share 2: each of its requests moves its counter 50, B's and C's 100. From 0, all
    # tied: B and C have 2 waiting against A's 4: b2 (earlier than c3) B=100, c3 C=100; a1
    # A=50; a4 A=100; all at 100 again, B and C with 1 waiting: b5, c6 (B=C=200); a7 A=150,
    # a8 A=200: A gets two slots for each of B's and C's.
    fs = FairShare()
    waiting = [w("A", 1, share=2), w("B", 2), w("C", 3), w("A", 4, share=2), w("B", 5), w("C", 6),
               w("A", 7, share=2), w("A", 8, share=2)]
    assert names(fs.order(waiting)) == ["B2", "C3", "A1", "A4", "B5", "C6", "A7", "A8"]


def test_a_late_joiner_is_owed_no_credit_for_its_absence():
    # B used 200 tokens long ago; A has since been served alone up to 5000. Unlifted, B would
    # be served 48 times before A again; lifted to A's 5000 (the only one waiting), they alternate.
    fs = FairShare()
    fs.charge("B", 1.0, 200.0)
    for _ in range(50):
        fs.charge("A", 1.0, 100.0)
    assert fs.counter("A") == 5000.0 and fs.last_served == 5000.0
    fs.joined("B", {"A"})
    assert fs.counter("B") == 5000.0
    assert names(fs.order([w("A", 1), w("A", 2), w("B", 3), w("B", 4)])) == ["A1", "B3", "A2", "B4"]
    # with nobody waiting, a joiner is lifted to the counter of the last one served
    fs.joined("C", set())
    assert fs.counter("C") == 5000.0


def test_priority_bands_come_before_shares_and_aging_still_lifts_a_band():
    fs = FairShare()
    fs.counters.update({"A": 0.0, "B": 1e6})
    # B is far ahead of its share, but its priority 8 beats A's 5
    assert names(fs.order([w("A", 1), w("B", 2, priority=8)])) == ["B2", "A1"]
    # A's request has waited long enough to be more urgent (aged to 9 > 8): band 5 goes first,
    # and within it, the application furthest behind
    assert names(fs.order([w("A", 1, urgency=9.0), w("B", 2, priority=8), w("B", 3, urgency=9.5)])) == \
        ["A1", "B3", "B2"]


def test_the_charge_is_corrected_by_what_the_answer_used():
    fs = FairShare()
    fs.charge("A", 2.0, 100.0)  # predicted 100 tokens at share 2: +50
    fs.correct("A", 2.0, charged=100.0, used=300.0)  # used 300: +100 more
    assert fs.counter("A") == 150.0
    fs.correct("gone", 1.0, 100.0, 50.0)  # forgotten meanwhile: nothing to correct
    assert "gone" not in fs.counters


def test_each_application_may_fill_only_its_share_of_the_queue():
    # queue_max 100. Alone, A may fill it all; with B waiting too, each half; with A's share 3
    # against B's 1, B a quarter, A three quarters.
    assert queue_bound("A", 1.0, {"A": 7}, {"A": 1.0}, 100) == 100
    assert queue_bound("B", 1.0, {"A": 100}, {"A": 1.0, "B": 1.0}, 100) == 50
    assert queue_bound("A", 1.0, {"A": 100, "B": 3}, {"A": 1.0, "B": 1.0}, 100) == 50
    assert queue_bound("B", 1.0, {"A": 100}, {"A": 3.0, "B": 1.0}, 100) == 25
    assert queue_bound("A", 3.0, {"A": 100, "B": 1}, {"A": 3.0, "B": 1.0}, 100) == 75
    assert queue_bound("C", 1.0, {"A": 1, "B": 1}, {"A": 1000.0, "B": 1000.0}, 100) == 1  # never 0


def test_counters_of_idle_applications_are_bounded(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(fair_share, "MAX_IDLE_APPLICATIONS", 2)
    fs = FairShare()
    for i, app in enumerate(("a", "b", "c", "d")):
        fs.charge(app, 1.0, float(i + 1))
    fs.joined("e", {"a"})  # a waits: kept; of b, c, d (idle) the two highest stay
    assert set(fs.counters) == {"a", "c", "d", "e"}
