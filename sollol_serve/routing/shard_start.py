"""A request's wait for its model's shard group: started by the coordinator if it is not
running, then seen healthy by this router. One span for the whole wait, saying what started."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from sollol_serve.observability.tracing import shard_start_attributes, span
from sollol_serve.protocol import NoNodeAvailable


async def await_shard_group(model: str, node: str, ensure: Callable[[str], Awaitable[dict]],
                            reachable: Callable[[], bool], timeout_s: float, interval_s: float) -> None:
    """`ensure`: the coordinator's (starts the group if needed, answers once it serves, raises
    a GatewayError if it cannot); `reachable`: whether this router's picture has the group's
    node healthy, which its next syncs bring."""
    with span("sollol.shard_start", model=model, node=node) as started:
        group = await ensure(model)
        started.set_attributes(shard_start_attributes(group))
        deadline = time.monotonic() + timeout_s
        while not reachable():
            if time.monotonic() > deadline:
                raise NoNodeAvailable(f"shard group '{node}' started but is not reachable")
            await asyncio.sleep(interval_s)
