"""The simulated node's model scheduler behaves as Ollama's `server/sched.go`: one load at a
time, a victim chosen by keep-alive then model path (not LRU), evicted only when idle, and
keep-alive expiry. Model paths sort by the sha256 of the name:
b:latest 1b572bf6 < c:latest 27a5b9d9 < a:latest 38201ea1."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from sollol_serve.sim.scheduler import ModelScheduler, Runner, victim
from tests.helpers import wait_for_async
from tests.unit.test_pump import Clock

LOAD_S = 0.05


def scheduler(max_loaded: int | None = 2, keep_s: float = 300.0,
              clock: Callable[[], float] = time.monotonic) -> ModelScheduler:
    return ModelScheduler(lambda model: LOAD_S, max_loaded, keep_s, clock)


async def hold(s: ModelScheduler, model: str, work: float | asyncio.Event, keep: float | None = None,
               log: list | None = None):
    """One request using `model` for `work`: seconds, or until the event is set."""
    async with s.use(model, keep, 2048) as waited:
        if log is not None:
            log.append((model, round(waited, 2)))
        await (work.wait() if isinstance(work, asyncio.Event) else asyncio.sleep(work))


def test_the_victim_is_the_idle_one_with_the_shortest_keep_alive_then_the_first_path():
    a, b, c = Runner("a:latest", 2048, 300), Runner("b:latest", 2048, 300), Runner("c:latest", 2048, 300)
    assert victim([a, b, c]) is b  # equal keep-alives: by path, b < c < a, whatever was used last
    b.refs = 1
    assert victim([a, b, c]) is c  # b busy: the first idle one
    a.session_s = 60
    assert victim([a, b, c]) is a  # the shortest keep-alive goes first
    a.refs = c.refs = 1
    assert victim([a, b, c]) is a  # none idle: the first in order, waited for


def test_a_full_node_evicts_an_idle_model_to_load_another():
    async def go():
        s = scheduler(max_loaded=2)
        await hold(s, "a:latest", 0)
        await hold(s, "b:latest", 0)
        await hold(s, "c:latest", 0)  # evicts b (first path), not a (the least recently used)
        return sorted(s.loaded()), dict(s.loads), dict(s.evictions)

    loaded, loads, evictions = asyncio.run(go())
    assert loaded == ["a:latest", "c:latest"]
    assert loads == {"a:latest": 1, "b:latest": 1, "c:latest": 1} and evictions == {"b:latest": 1}


def test_a_busy_victim_is_waited_for_and_still_serves_its_own_requests_meanwhile():
    # a and b loaded and busy; c must wait for b (first path) to go idle. A request for b
    # arriving meanwhile uses it at once (Ollama's fast path) and holds c back longer.
    async def go():
        s = scheduler(max_loaded=2)
        await hold(s, "a:latest", 0)
        await hold(s, "b:latest", 0)
        log: list = []
        release = asyncio.Event()
        busy = [asyncio.create_task(hold(s, model, release)) for model in ("a:latest", "b:latest")]
        await wait_for_async(lambda: all(r.refs for r in s.runners.values()), 10, "a and b busy")
        cold = asyncio.create_task(hold(s, "c:latest", 0, log=log))
        await wait_for_async(lambda: s.runners["b:latest"].evicting, 10, "c waiting for b to go idle")
        late = asyncio.create_task(hold(s, "b:latest", 0.3, log=log))  # b is still loaded: served now
        await wait_for_async(lambda: log, 10, "the late b request served")
        release.set()  # the first b request ends; the late one still holds b
        await asyncio.gather(*busy, cold, late)
        return log, dict(s.evictions)

    log, evictions = asyncio.run(go())
    assert log[0] == ("b:latest", 0.0)
    # c asked before the late b request began: it waited for all of its 0.3 s, then its own
    # load (0.05 s) (a busy machine only adds)
    assert log[1][0] == "c:latest" and log[1][1] >= 0.34
    assert evictions == {"b:latest": 1}


def test_one_load_at_a_time():
    async def go():
        s = scheduler(max_loaded=None)
        log: list = []
        await asyncio.gather(hold(s, "a:latest", 0, log=log), hold(s, "b:latest", 0, log=log))
        return sorted(log)

    # the second cold model waits for the first's load: 0.05 s, then at least 0.1 s
    (a, a_waited), (b, b_waited) = asyncio.run(go())
    assert (a, a_waited, b) == ("a:latest", 0.05, "b:latest") and b_waited >= 0.1


def test_keep_alive_expires_after_the_last_request_and_zero_unloads_when_idle():
    async def go():
        clock = Clock()
        s = scheduler(max_loaded=None, clock=clock)
        await hold(s, "a:latest", 0, keep=1.0)
        await hold(s, "b:latest", 0, keep=0)
        at_once = sorted(s.loaded())
        clock.now += 0.5
        before = sorted(s.loaded())
        clock.now += 0.5
        return at_once, before, sorted(s.loaded())

    assert asyncio.run(go()) == (["a:latest"], ["a:latest"], [])


def test_a_model_in_use_never_expires():
    async def go():
        clock = Clock()
        s = scheduler(max_loaded=None, clock=clock)
        done = asyncio.Event()
        task = asyncio.create_task(hold(s, "a:latest", done, keep=1.0))
        await wait_for_async(lambda: "a:latest" in s.runners and s.runners["a:latest"].refs, 10, "a in use")
        clock.now += 60.0  # far past its keep-alive, but still running
        during = sorted(s.loaded())
        done.set()
        await task
        idle = sorted(s.loaded())  # its keep-alive counts from the request's end
        clock.now += 1.0
        return during, idle, sorted(s.loaded())

    assert asyncio.run(go()) == (["a:latest"], ["a:latest"], [])
