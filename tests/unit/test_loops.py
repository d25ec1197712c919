"""Background loops: a step on an interval the loop asks for after each step, and a wake-up."""

from __future__ import annotations

import asyncio

from sollol_serve.loops import run_every


def test_the_interval_is_asked_after_each_step_and_a_wake_runs_the_next_step_at_once():
    async def go():
        steps, intervals = [], iter([0.01, 3600.0, 0.01])

        async def step():
            steps.append(asyncio.get_running_loop().time())

        wake = asyncio.Event()
        task = run_every(lambda: next(intervals, 3600.0), step, "test loop", first_now=True, wake=wake)
        await asyncio.sleep(0.2)
        assert len(steps) == 2  # at once, then after 0.01 s; then an hour's wait ...
        wake.set()  # ... cut short
        await asyncio.sleep(0.2)
        task.cancel()
        return steps

    steps = asyncio.run(go())
    assert len(steps) == 4  # woken, then 0.01 s later; then an hour again
    assert steps[2] - steps[1] < 0.3  # the wake, not the hour


def test_a_failing_step_does_not_end_the_loop():
    async def go():
        calls = []

        async def step():
            calls.append(1)
            raise RuntimeError("boom")

        task = run_every(0.01, step, "failing loop")
        await asyncio.sleep(0.2)
        task.cancel()
        return len(calls)

    assert asyncio.run(go()) >= 3
