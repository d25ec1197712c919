"""The simulated node's model scheduler behaves as Ollama's `server/sched.go`: one load at a
time, a victim chosen by keep-alive then model path (not LRU), evicted only when idle, and
keep-alive expiry. Model paths sort by the sha256 of the name:
b:latest 1b572bf6 < c:latest 27a5b9d9 < a:latest 38201ea1."""

from __future__ import annotations

import asyncio

from sollol_serve.sim.scheduler import ModelScheduler, Runner, victim

LOAD_S = 0.05


def scheduler(max_loaded: int | None = 2, keep_s: float = 300.0) -> ModelScheduler:
    return ModelScheduler(lambda model: LOAD_S, max_loaded, keep_s)


async def hold(s: ModelScheduler, model: str, seconds: float, keep: float | None = None, log: list | None = None):
    async with s.use(model, keep, 2048) as waited:
        if log is not None:
            log.append((model, round(waited, 2)))
        await asyncio.sleep(seconds)


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
    # a and b loaded, both busy for 0.3 s; c must wait for b (first path) to go idle. A request
    # for b arriving meanwhile uses it at once (Ollama's fast path) and holds c back longer.
    async def go():
        s = scheduler(max_loaded=2)
        await hold(s, "a:latest", 0)
        await hold(s, "b:latest", 0)
        log: list = []
        t0 = asyncio.get_running_loop().time()
        busy = [asyncio.create_task(hold(s, "a:latest", 0.3)), asyncio.create_task(hold(s, "b:latest", 0.3))]
        await asyncio.sleep(0.01)
        cold = asyncio.create_task(hold(s, "c:latest", 0, log=log))
        await asyncio.sleep(0.1)
        late = asyncio.create_task(hold(s, "b:latest", 0.3, log=log))  # b is still loaded: served now
        await asyncio.gather(*busy, cold, late)
        return log, asyncio.get_running_loop().time() - t0, dict(s.evictions)

    log, elapsed, evictions = asyncio.run(go())
    assert log[0] == ("b:latest", 0.0)
    # c waited for the last b request (sent at 0.11 s, 0.3 s long) and its own load (0.05 s):
    # at least 0.45 s after the start, 0.44 s after it asked (a busy machine only adds)
    assert log[1][0] == "c:latest" and log[1][1] >= 0.43
    assert evictions == {"b:latest": 1}
    assert elapsed >= 0.45


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
        s = scheduler(max_loaded=None)
        await hold(s, "a:latest", 0, keep=0.1)
        await hold(s, "b:latest", 0, keep=0)
        at_once = sorted(s.loaded())
        await asyncio.sleep(0.15)
        return at_once, sorted(s.loaded())

    assert asyncio.run(go()) == (["a:latest"], [])


def test_a_model_in_use_never_expires():
    async def go():
        s = scheduler(max_loaded=None)
        task = asyncio.create_task(hold(s, "a:latest", 0.2, keep=0.05))
        await asyncio.sleep(0.15)  # past its keep-alive, but still running
        during = sorted(s.loaded())
        await task
        return during

    assert asyncio.run(go()) == ["a:latest"]
