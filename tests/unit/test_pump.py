"""The router's admission unit: a slot now, or the priority queue until one frees (no Ray)."""

from __future__ import annotations

import asyncio

import pytest

from sollol_serve.protocol import NoNodeAvailable
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
        grant, _ = await asyncio.wait_for(high, 1.0)
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
