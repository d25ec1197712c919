"""Batching a stream's chunks for one hop: the first at once, later ones within the linger."""

from __future__ import annotations

import asyncio

import pytest

from sollol_serve.nodes.coalesce import coalesced


async def timed(gaps_s: list[float], end_error: BaseException | None = None):
    """Items 0, 1, ... each after its gap; optionally failing after the last."""
    for i, gap in enumerate(gaps_s):
        await asyncio.sleep(gap)
        yield i
    if end_error is not None:
        raise end_error


def batches(source, **kw) -> list[list]:
    async def collect():
        return [batch async for batch in coalesced(source, **kw)]
    return asyncio.run(collect())


def test_the_first_chunk_goes_alone_and_a_burst_after_it_shares_a_hop():
    # 0 at once, then 1-4 arrive 1 ms apart: all inside one 20 ms linger
    assert batches(timed([0, 0.001, 0.001, 0.001, 0.001]), linger_s=0.02) == [[0], [1, 2, 3, 4]]


def test_chunks_further_apart_than_the_linger_go_one_by_one():
    assert batches(timed([0, 0.03, 0.03]), linger_s=0.005) == [[0], [1], [2]]


def test_an_urgent_chunk_is_not_held():
    async def one_after_another():
        start = asyncio.get_running_loop().time()
        out = []
        async for batch in coalesced(timed([0, 0.001]), urgent=lambda i: i == 1, linger_s=1.0):
            out.append((batch, asyncio.get_running_loop().time() - start))
        return out

    out = asyncio.run(one_after_another())
    assert [b for b, _ in out] == [[0], [1]]
    assert out[-1][1] < 0.5  # not after the 1 s linger


def test_a_batch_is_capped():
    assert batches(timed([0] * 5), linger_s=0.01, max_batch=2) == [[0], [1, 2], [3, 4]]


def test_a_failure_comes_after_the_chunks_before_it():
    async def collect():
        out = []
        with pytest.raises(ConnectionError):
            async for batch in coalesced(timed([0, 0.001], ConnectionError("reset")), linger_s=0.01):
                out.append(batch)
        return out

    assert asyncio.run(collect()) == [[0], [1]]
