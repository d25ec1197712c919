"""A background loop for a deployment or actor: a step run every few seconds for as long as
the process lives; a failing step is logged and the next one runs on time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger("ray.serve")


def run_every(interval_s: float, step: Callable[[], Awaitable[None]], what: str, first_now: bool = False) -> asyncio.Task:
    """Start the loop on the running event loop (keep the task: the loop holds it weakly)."""

    async def loop() -> None:
        if not first_now:
            await asyncio.sleep(interval_s)
        while True:
            try:
                await step()
            except Exception:
                logger.exception("%s failed", what)
            await asyncio.sleep(interval_s)

    return asyncio.get_running_loop().create_task(loop())
