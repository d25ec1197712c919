"""Chunks of a stream gathered into batches for one Ray hop: the first goes at once (time to
first chunk is what a client feels), the ones after it wait at most `linger_s` for the chunks
the node sends meanwhile, so a hop carries a few chunks instead of one each, and the gaps
between chunks a client sees stay within `linger_s` of the node's own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

T = TypeVar("T")

LINGER_S = 0.005
MAX_BATCH = 64


class _End:
    def __init__(self, error: BaseException | None = None):
        self.error = error


async def coalesced(items: AsyncIterator[T], urgent: Callable[[T], bool] = lambda item: False,
                    linger_s: float = LINGER_S, max_batch: int = MAX_BATCH) -> AsyncIterator[list[T]]:
    """`items` in batches; an `urgent` item (the last one, say) is sent without lingering.
    An error of `items` is raised after the batch read before it."""
    queue: asyncio.Queue = asyncio.Queue()

    async def read() -> None:
        try:
            async for item in items:
                queue.put_nowait(item)
        except Exception as exc:
            queue.put_nowait(_End(exc))
        else:
            queue.put_nowait(_End())

    reader = asyncio.ensure_future(read())
    try:
        first = True
        while True:
            item = await queue.get()
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            batch = [item]
            if not first and not urgent(item) and linger_s > 0:
                await asyncio.sleep(linger_s)
            first = False
            end: _End | None = None
            while len(batch) < max_batch and not queue.empty() and not urgent(batch[-1]):
                more = queue.get_nowait()
                if isinstance(more, _End):
                    end = more
                    break
                batch.append(more)
            yield batch
            if end is not None:
                if end.error is not None:
                    raise end.error
                return
    finally:
        reader.cancel()
