"""A background loop for a deployment or actor: a step run every few seconds for as long as
the process lives; a failing step is logged and the next one runs on time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger("ray.serve")


def run_every(interval_s: float | Callable[[], float], step: Callable[[], Awaitable[None]], what: str,
              first_now: bool = False, wake: asyncio.Event | None = None) -> asyncio.Task:
    """Start the loop on the running event loop (keep the task: the loop holds it weakly).
    `interval_s` may be a function, asked after each step: a loop that backs off when idle;
    setting `wake` runs the next step at once."""
    wait_s = interval_s if callable(interval_s) else lambda: interval_s

    async def pause() -> None:
        if wake is None:
            await asyncio.sleep(wait_s())
            return
        try:
            await asyncio.wait_for(wake.wait(), wait_s())
        except asyncio.TimeoutError:
            pass
        wake.clear()

    async def loop() -> None:
        if not first_now:
            await pause()
        while True:
            try:
                await step()
            except Exception:
                logger.exception("%s failed", what)
            await pause()

    return asyncio.get_running_loop().create_task(loop())
