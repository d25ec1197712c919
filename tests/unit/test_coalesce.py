"""Batching a stream's chunks for one hop: the first at once, later ones within the linger."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from sollol_serve.nodes.coalesce import coalesced
from tests.helpers import wait_for_async


async def timed(gaps_s: list[float], end_error: BaseException | None = None):
    """Items 0, 1, ... each after its gap; optionally failing after the last."""
    for i, gap in enumerate(gaps_s):
        await asyncio.sleep(gap)
        yield i
    if end_error is not None:
        raise end_error


async def in_turns(*turns: list) -> AsyncIterator:
    """Each turn's items back to back; one turn of the event loop between turns, in which the
    consumer takes what came (so a turn's items arrive while the one before it lingers)."""
    for i, turn in enumerate(turns):
        if i:
            await asyncio.sleep(0)
        for item in turn:
            yield item


async def collected(stream: AsyncIterator[list]) -> list[list]:
    return [batch async for batch in stream]


def batches(source, **kw) -> list[list]:
    return asyncio.run(collected(coalesced(source, **kw)))


def test_the_first_chunk_goes_alone_and_a_burst_after_it_shares_a_hop():
    # 0 at once; then 1, and 2-4 while 1 lingers: they go with it
    assert batches(in_turns([0], [1], [2, 3, 4]), linger_s=0.02) == [[0], [1, 2, 3, 4]]


def test_a_batch_does_not_wait_past_its_linger():
    async def collect():
        out: list[list] = []

        async def one_per_batch():
            for i in range(3):
                yield i
                # The next chunk only once this one went: a batch waiting for more would wait forever.
                await wait_for_async(lambda: len(out) > i, 10, f"chunk {i} sent alone after its linger")

        async for batch in coalesced(one_per_batch(), linger_s=0.005):
            out.append(batch)
        return out

    assert asyncio.run(collect()) == [[0], [1], [2]]


def test_an_urgent_chunk_is_not_held():
    async def one_after_another():
        # A held chunk would wait out the minute's linger, past the bound.
        stream = coalesced(timed([0, 0.001]), urgent=lambda i: i == 1, linger_s=60.0)
        return await asyncio.wait_for(collected(stream), 10)

    assert asyncio.run(one_after_another()) == [[0], [1]]


def test_a_batch_is_capped():
    assert batches(in_turns([0], [1, 2, 3, 4]), linger_s=0.01, max_batch=2) == [[0], [1, 2], [3, 4]]


def test_a_failure_comes_after_the_chunks_before_it():
    async def collect():
        out = []
        with pytest.raises(ConnectionError):
            async for batch in coalesced(timed([0, 0.001], ConnectionError("reset")), linger_s=0.01):
                out.append(batch)
        return out

    assert asyncio.run(collect()) == [[0], [1]]
