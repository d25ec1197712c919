"""Supervision of shard groups against stops: a stop tears the group's processes down, which
is what a crash looks like too. Without Ray or llama.cpp: launch and teardown are fakes that
say when they ran, and the checks that await (a process's liveness, the restart's backoff,
a launch) are held open while the stop happens."""

from __future__ import annotations

import asyncio

from sollol_serve.shard.coordinator import Group
from tests.helpers import wait_for_async
from tests.unit.test_shard_security import bare_coordinator


class Probe:
    """A fake group lifecycle: counts launches and teardowns; `hold` keeps an await open."""

    def __init__(self, coordinator):
        self.launches, self.teardowns = 0, []
        self.hold: asyncio.Event | None = None
        coordinator._launch, coordinator._teardown = self.launch, self.teardown

    async def launch(self, group: Group) -> None:
        self.launches += 1
        if self.hold is not None:
            await self.hold.wait()

    async def teardown(self, group: Group, unregister: bool) -> None:
        self.teardowns.append(unregister)


def running(coordinator, model: str = "tiny:latest") -> Group:
    group = coordinator.groups[model] = Group(model, state="running")
    group.ready.set()
    return group


def test_a_stop_during_a_liveness_check_is_not_restarted_as_a_crash(tmp_path):
    coordinator = bare_coordinator(tmp_path)
    fake = Probe(coordinator)
    group = running(coordinator)
    checking, answer = asyncio.Event(), asyncio.Event()

    async def broken(g):  # the rpc-server's liveness call is in flight when the stop comes
        checking.set()
        await answer.wait()
        return "llama-server exited"  # ... and by its answer the stop has killed it

    coordinator._broken = broken

    async def run():
        check = asyncio.create_task(coordinator._check(group))
        await checking.wait()
        await coordinator.stop("tiny")
        answer.set()
        await check
        started = await coordinator.ensure("tiny")  # an admin starts it again at once
        return started

    started = asyncio.run(run())
    assert group.state == "stopped" and group.reason is None and group.restarts == 0
    assert started["state"] == "running" and fake.launches == 1  # the new start, no restart


def test_a_stop_during_the_restart_backoff_leaves_it_stopped(tmp_path):
    coordinator = bare_coordinator(tmp_path, restart_backoff_s=0.05)
    fake = Probe(coordinator)
    group = running(coordinator)

    async def run():
        restart = asyncio.create_task(coordinator._restart(group, "rpc-server lost"))
        # One turn of the loop: it tears the crashed group down (the fake does not suspend) and
        # parks in its backoff; the stop below does not suspend either, so it lands within it.
        await asyncio.sleep(0)
        assert group.state == "restarting"
        await coordinator.stop("tiny")
        await restart

    asyncio.run(run())
    assert group.state == "stopped" and fake.launches == 0


def test_a_stop_while_a_restart_launches_takes_down_what_it_launched(tmp_path):
    coordinator = bare_coordinator(tmp_path, restart_backoff_s=0.0)
    fake = Probe(coordinator)
    fake.hold = asyncio.Event()
    group = running(coordinator)

    async def run():
        restart = asyncio.create_task(coordinator._restart(group, "rpc-server lost"))
        await wait_for_async(lambda: fake.launches, 10, "the restart launching")
        await coordinator.stop("tiny")
        fake.hold.set()  # the launch finishes after the stop
        await restart

    asyncio.run(run())
    assert group.state == "stopped"
    # the crash's teardown, the stop's, then the late launch's, unregistering its node again
    assert fake.teardowns == [False, True, True]
