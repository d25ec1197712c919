"""The priority queue on the request path, through the real gateway: when the only node with
the model is busy, urgent requests go first, and a full queue answers 429 with Retry-After."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest

from sollol_serve.sim.process import SimProcess
from tests.conftest import QUEUE_MAX
from tests.helpers import nodes_of, wait_until

pytestmark = pytest.mark.integration


def _body(tokens: int, priority: int) -> dict:
    return {"model": "slowpoke", "prompt": "wait your turn", "stream": False, "priority": priority,
            "options": {"num_predict": tokens}}


async def _post(client: httpx.AsyncClient, tokens: int, priority: int, done: list) -> httpx.Response:
    response = await client.post("/api/generate", json=_body(tokens, priority))
    done.append((priority, time.monotonic()))
    return response


async def _until(check: Callable[[], object], what: str) -> None:
    await asyncio.to_thread(wait_until, check, 30, what)


@contextmanager
def _held(node: SimProcess) -> Iterator[None]:
    """The node holds what it is sent until the block ends, so the queue is built in the
    test's order however slowly a busy machine sends it."""
    node.faults(mode="hang")
    try:
        yield
    finally:
        node.faults(mode="none")


def test_urgent_request_overtakes_queued_ones(gateway):
    url = gateway.url

    def waiting() -> int:
        return httpx.get(url + "/api/queue", timeout=10).json()["queue"]["waiting"]

    async def scenario():
        finished: list = []
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            with _held(gateway.nodes["solo"]):
                hold = asyncio.create_task(_post(client, 30, 5, finished))  # holds the one slot
                await _until(lambda: nodes_of(url)["solo"]["in_flight"] == 1, "the holder on solo")
                lows = []
                for n in range(3):
                    lows.append(asyncio.create_task(_post(client, 10, 1, finished)))
                    await _until(lambda: waiting() == n + 1, f"low-priority request {n} queued")
                high = asyncio.create_task(_post(client, 10, 10, finished))
                await _until(lambda: waiting() == 4, "the urgent request queued")
            responses = await asyncio.gather(hold, *lows, high)
        return finished, responses

    finished, responses = asyncio.run(scenario())
    assert all(r.status_code == 200 for r in responses)
    order = [priority for priority, _ in finished]
    assert order == [5, 10, 1, 1, 1], order  # the urgent one went right after the holder
    waits = {r.json()["_sollol_routing"]["priority"]: r.json()["_sollol_routing"]["queue_wait_ms"]
             for r in responses}
    assert waits[10] > 0  # it did queue
    assert waits[1] > waits[10]
    stats = httpx.get(url + "/api/queue").json()["queue"]
    assert stats["waiting"] == 0
    recorded = stats["waited_by_priority"]
    assert recorded["10"]["count"] >= 1 and recorded["1"]["count"] >= 3
    assert recorded["1"]["max_ms"] > recorded["10"]["max_ms"] > 0


def test_full_queue_answers_429_with_retry_after(gateway):
    url = gateway.url

    async def scenario():
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            with _held(gateway.nodes["solo"]):
                hold = asyncio.create_task(client.post("/api/generate", json=_body(10, 5)))
                await _until(lambda: nodes_of(url)["solo"]["in_flight"] == 1, "the holder on solo")
                burst = [asyncio.create_task(client.post("/api/generate", json=_body(1, 3)))
                         for _ in range(QUEUE_MAX + 4)]
                await _until(lambda: sum(b.done() for b in burst) == 4, "the four over the queue's bound answered")
            return await asyncio.gather(hold, *burst)

    responses = asyncio.run(scenario())
    statuses = [r.status_code for r in responses]
    rejected = [r for r in responses if r.status_code == 429]
    assert len(rejected) == 4 and statuses.count(200) == QUEUE_MAX + 1, statuses
    assert int(rejected[0].headers["retry-after"]) >= 1
    assert "queue" in rejected[0].json()["error"]
