"""The priority queue on the request path, through the real gateway: when the only node with
the model is busy, urgent requests go first, and a full queue answers 429 with Retry-After."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.conftest import QUEUE_MAX

pytestmark = pytest.mark.integration


def _body(tokens: int, priority: int) -> dict:
    return {"model": "slowpoke", "prompt": "wait your turn", "stream": False, "priority": priority,
            "options": {"num_predict": tokens}}


async def _post(client: httpx.AsyncClient, tokens: int, priority: int, done: list) -> httpx.Response:
    response = await client.post("/api/generate", json=_body(tokens, priority))
    done.append((priority, time.monotonic()))
    return response


def test_urgent_request_overtakes_queued_ones(gateway):
    async def scenario():
        finished: list = []
        async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as client:
            hold = asyncio.create_task(_post(client, 30, 5, finished))  # ~1.2 s on the one slot
            await asyncio.sleep(0.4)
            lows = []
            for _ in range(3):
                lows.append(asyncio.create_task(_post(client, 10, 1, finished)))
                await asyncio.sleep(0.05)
            high = asyncio.create_task(_post(client, 10, 10, finished))
            responses = await asyncio.gather(hold, *lows, high)
        return finished, responses

    finished, responses = asyncio.run(scenario())
    assert all(r.status_code == 200 for r in responses)
    order = [priority for priority, _ in finished]
    assert order[0] == 5 and order[1] == 10, order  # the urgent one went right after the holder
    waits = {r.json()["_sollol_routing"]["priority"]: r.json()["_sollol_routing"]["queue_wait_ms"]
             for r in responses}
    assert waits[10] > 0  # it did queue
    assert waits[1] > waits[10]
    stats = httpx.get(gateway.url + "/api/queue").json()["queue"]
    assert stats["waiting"] == 0
    recorded = stats["waited_by_priority"]
    assert recorded["10"]["count"] >= 1 and recorded["1"]["count"] >= 3
    assert recorded["1"]["max_ms"] > recorded["10"]["max_ms"] > 0


def test_full_queue_answers_429_with_retry_after(gateway):
    async def scenario():
        async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as client:
            # ~6 s on the one slot: the whole burst must arrive while it holds, even on a loaded CI machine
            hold = asyncio.create_task(client.post("/api/generate", json=_body(150, 5)))
            await asyncio.sleep(0.4)
            burst = [asyncio.create_task(client.post("/api/generate", json=_body(1, 3)))
                     for _ in range(QUEUE_MAX + 4)]
            return await asyncio.gather(hold, *burst)

    responses = asyncio.run(scenario())
    statuses = [r.status_code for r in responses]
    rejected = [r for r in responses if r.status_code == 429]
    assert len(rejected) == 4 and statuses.count(200) == QUEUE_MAX + 1, statuses
    assert int(rejected[0].headers["retry-after"]) >= 1
    assert "queue" in rejected[0].json()["error"]
