"""The router's admission unit: a slot now, or the priority queue until one frees (no Ray)."""

from __future__ import annotations

import asyncio

import pytest

from sollol_serve.protocol import ModelNotFound, NoNodeAvailable, QueueFull
from sollol_serve.routing.pump import Admissions
from tests.unit.test_core import core_with, nv, prof


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def admissions(slots: int = 1, timeout_s: float = 5.0) -> tuple[Admissions, Clock]:
    clock = Clock()
    return Admissions(core_with("least_busy", nv("a", slots=slots)), timeout_s, clock), clock


def test_a_free_slot_is_granted_at_once():
    async def go():
        adm, _ = admissions()
        grant, waited = await adm.admit(prof(), set())
        return adm, grant, waited

    adm, grant, waited = asyncio.run(go())
    assert grant.choice.node.name == "a" and waited == 0.0
    assert len(adm.core.flights["a"]) == 1 and not len(adm.queue)


def test_a_waiter_gets_the_slot_when_it_frees_and_its_wait_is_counted():
    async def go():
        adm, clock = admissions()
        first, _ = await adm.admit(prof(), set())
        waiting = asyncio.ensure_future(adm.admit(prof(), set()))
        await asyncio.sleep(0)
        assert len(adm.queue) == 1 and not waiting.done()  # the node's one slot is taken
        clock.now += 2.5
        adm.core.finish(first.flight_id, "a", clock.now)
        adm.pump()
        return await waiting

    grant, waited = asyncio.run(go())
    assert grant.choice.node.name == "a" and waited == pytest.approx(2.5)


def test_the_most_urgent_waiter_goes_first():
    async def go():
        adm, clock = admissions()
        first, _ = await adm.admit(prof(), set())
        low = asyncio.ensure_future(adm.admit(prof(priority=2), set()))
        await asyncio.sleep(0)
        high = asyncio.ensure_future(adm.admit(prof(priority=9), set()))
        await asyncio.sleep(0)
        adm.core.finish(first.flight_id, "a", clock.now)
        adm.pump()
        grant, _ = await asyncio.wait_for(high, 5)
        return low.done(), grant

    low_done, grant = asyncio.run(go())
    assert grant.choice.node.name == "a" and not low_done  # the low one still waits


def test_a_waiter_that_waits_too_long_gets_a_clear_503_and_leaves_the_queue():
    async def go():
        adm, _ = admissions(timeout_s=0.05)
        await adm.admit(prof(), set())
        with pytest.raises(NoNodeAvailable, match="within 0 s in the queue"):
            await adm.admit(prof(), set())
        return adm

    assert not len(asyncio.run(go()).queue)


def test_a_caller_leaving_the_queue_gives_back_its_place():
    async def go():
        adm, _ = admissions()
        await adm.admit(prof(), set())
        waiting = asyncio.ensure_future(adm.admit(prof(), set()))
        await asyncio.sleep(0)
        waiting.cancel()
        await asyncio.sleep(0)
        return adm

    adm = asyncio.run(go())
    assert not len(adm.queue) and len(adm.core.flights["a"]) == 1


def test_a_grant_that_lands_as_its_caller_leaves_frees_the_slot():
    async def go():
        adm, clock = admissions()
        first, _ = await adm.admit(prof(), set())
        waiting = asyncio.ensure_future(adm.admit(prof(), set()))
        await asyncio.sleep(0)
        adm.core.finish(first.flight_id, "a", clock.now)
        adm.pump()  # granted: the slot is reserved for the waiter...
        waiting.cancel()  # ...which goes away before it runs
        try:
            await waiting
            held = 1  # the grant won the race: the caller has it (and gives it back as any other)
        except asyncio.CancelledError:
            held = 0
        return adm, held

    adm, held = asyncio.run(go())
    assert len(adm.core.flights["a"]) == held  # no slot is left reserved for a caller who left


def app_prof(app: str, share: float = 1.0, priority: int = 5):
    p = prof(priority=priority)
    p.app, p.share = app, share
    return p


def test_at_equal_priority_the_next_slot_goes_to_the_application_furthest_behind():
    # One slot. "flood" holds it and queues three more; "chat" queues one after them. Each
    # request is predicted at 10 + 2 x 100 = 210 tokens. flood has been charged 210 (its
    # first), chat is lifted to it on joining: a tie, and chat has fewer waiting (1 against
    # 3): chat's goes first, though it arrived last; then the flood's in order.
    async def go():
        adm, clock = admissions()
        first, _ = await adm.admit(app_prof("flood"), set())
        queued = [asyncio.ensure_future(adm.admit(app_prof(app), set())) for app in ("flood", "flood", "flood", "chat")]
        await asyncio.sleep(0)
        assert adm.fair.counter("flood") == adm.fair.counter("chat") == 210.0
        served, grant = [], first
        for _ in range(4):
            adm.core.finish(grant.flight_id, "a", clock.now)
            adm.pump()
            pending = [q for i, q in enumerate(queued) if i not in served]
            await asyncio.wait(pending, timeout=5, return_when=asyncio.FIRST_COMPLETED)
            done = next(i for i, q in enumerate(queued) if q.done() and i not in served)
            served.append(done)
            grant = queued[done].result()[0]
        return served, adm

    served, adm = asyncio.run(go())
    assert served == [3, 0, 1, 2]
    assert adm.fair.counter("flood") == 840.0 and adm.fair.counter("chat") == 420.0


def test_an_application_over_its_part_of_the_queue_gets_429_and_no_other_does():
    # queue_max 4, one slot held. flood fills the queue alone (4); then chat's request is
    # within its part (half of 4 with two waiting) and is queued past the global bound,
    # while flood's fifth is refused for flood alone.
    async def go():
        clock = Clock()
        core = core_with("least_busy", nv("a", slots=1))
        core.queue.max_size = 4
        adm = Admissions(core, 5.0, clock)
        await adm.admit(app_prof("flood"), set())
        waiting = [asyncio.ensure_future(adm.admit(app_prof("flood"), set())) for _ in range(4)]
        await asyncio.sleep(0)
        chat = asyncio.ensure_future(adm.admit(app_prof("chat"), set()))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull, match="application 'flood'"):
            await adm.admit(app_prof("flood"), set())
        status = adm.by_application(lambda app: 1.0)
        for f in [*waiting, chat]:
            f.cancel()
        return chat, status, len(adm.queue)

    chat, status, _ = asyncio.run(go())
    assert status["flood"]["waiting"] == 4 and status["flood"]["refused"] == 1
    assert status["chat"]["waiting"] == 1 and status["chat"]["refused"] == 0


def test_a_retry_counts_against_no_one_and_an_answer_corrects_the_charge():
    async def go():
        adm, clock = admissions(slots=2)
        grant, _ = await adm.admit(app_prof("app"), set())
        await adm.admit(app_prof("app"), set(), counted=False)  # a retry on another node
        flight = adm.core.flights["a"][grant.flight_id]
        adm.finished(flight.profile, flight.charged, prompt_tokens=10, completion_tokens=300)
        return adm

    adm = asyncio.run(go())
    assert adm.fair.counter("app") == 210.0 + (610.0 - 210.0)  # one charge, corrected to what it used


def test_with_fair_share_off_the_queue_serves_by_arrival_with_one_bound_for_all():
    async def go():
        clock = Clock()
        core = core_with("least_busy", nv("a", slots=1))
        core.queue.max_size = 2
        adm = Admissions(core, 5.0, clock, fair=False)
        first, _ = await adm.admit(app_prof("flood"), set())
        queued = [asyncio.ensure_future(adm.admit(app_prof(app), set())) for app in ("flood", "flood")]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull, match="its queue of 2 is full"):  # the flood's fill refuses chat too
            await adm.admit(app_prof("chat"), set())
        adm.core.finish(first.flight_id, "a", clock.now)
        adm.pump()
        await asyncio.wait(queued, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        done = [q.done() for q in queued]
        for q in queued:
            q.cancel()
        return done

    assert asyncio.run(go()) == [True, False]


class Counted:
    """Counts the core's rankings (each looks at every node for one request)."""

    def __init__(self, core):
        self.calls, self._rank = 0, core.rank
        core.rank = self

    def __call__(self, *args):
        self.calls += 1
        return self._rank(*args)


@pytest.mark.parametrize("waiting", [10, 1_000, 10_000])
def test_the_queue_costs_the_same_per_admission_and_per_freed_slot_however_long_it_is(waiting):
    # Two slots, both held; `waiting` requests of three applications queued behind. Joining
    # the queue ranks the newcomer once (can any node take it?) and draws nobody (no room);
    # a freed slot draws the one waiter it goes to, and stops there.
    async def go():
        adm, clock = admissions(slots=2, timeout_s=600)
        adm.queue.max_size = 2 * waiting
        held = [(await adm.admit(app_prof("a"), set()))[0] for _ in range(2)]
        apps = ("a", "b", "c")
        queued = [asyncio.ensure_future(adm.admit(app_prof(apps[i % 3]), set())) for i in range(waiting)]
        await asyncio.sleep(0)
        assert len(adm.queue) == waiting
        ranks = Counted(adm.core)
        newcomer = asyncio.ensure_future(adm.admit(app_prof("d"), set()))
        await asyncio.sleep(0)
        per_admission = ranks.calls
        ranks.calls = 0
        adm.core.finish(held[0].flight_id, "a", clock.now)
        adm.pump()
        per_freed_slot = ranks.calls
        await asyncio.wait_for(asyncio.shield(newcomer), 30)
        granted = [(f is newcomer, f.result()[0].choice.node.name) for f in queued + [newcomer] if f.done()]
        for f in queued + [newcomer]:
            f.cancel()
        await asyncio.sleep(0)
        return per_admission, per_freed_slot, granted

    per_admission, per_freed_slot, granted = asyncio.run(go())
    assert (per_admission, per_freed_slot) == (1, 1)
    # "d" joined last and is lifted to the lowest counter among those waiting: tied with "b"
    # and "c" (none served yet), and with one waiting against their thousands it goes first.
    assert granted == [(True, "a")]


def test_a_waiter_no_node_can_serve_any_more_is_told_so_when_the_nodes_change():
    async def go():
        adm, clock = admissions(slots=1)
        adm.core.snapshot["b"] = nv("b", models=["phi3:mini"])
        assert adm.core.adopt(dict(adm.core.snapshot), adm.core.book)  # a changed picture says so ...
        assert not adm.core.adopt(dict(adm.core.snapshot), adm.core.book)  # ... the same one does not
        adm.core.take_picture_change()
        await adm.admit(prof(), set())
        await adm.admit(prof(model="phi3:mini"), set())
        llama = asyncio.ensure_future(adm.admit(prof(), set()))
        phi = asyncio.ensure_future(adm.admit(prof(model="phi3:mini"), set()))
        await asyncio.sleep(0)
        adm.pump()
        assert not phi.done()  # b is busy, not gone: it waits
        snapshot = dict(adm.core.snapshot)
        del snapshot["b"]  # b left the cluster with the only phi3
        adm.core.adopt(snapshot, adm.core.book)
        adm.pump()
        await asyncio.sleep(0)
        with pytest.raises(ModelNotFound):
            await asyncio.wait_for(phi, 1)
        assert not llama.done() and len(adm.queue) == 1  # the other waits on
        # and a newcomer for a model no node has is refused at once, not queued
        with pytest.raises(ModelNotFound):
            await adm.admit(prof(model="phi3:mini"), set())
        llama.cancel()

    asyncio.run(go())
