"""A node that dies under load costs no non-streamed request, and comes back on its own.

Kills the `mid` node's process (SIGKILL, like a crashed machine) while requests for a model
that `fast` also has are in flight, then restarts it on the same port.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

pytestmark = pytest.mark.integration


def _node(gateway, name: str) -> dict:
    nodes = httpx.get(gateway.url + "/api/nodes", timeout=10).json()["nodes"]
    return next(n for n in nodes if n["name"] == name)


def test_killed_node_loses_no_request_and_is_readmitted(gateway):
    mid = gateway.nodes["mid"]

    async def load() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as client:
            async def one(i: int) -> httpx.Response:
                await asyncio.sleep(i * 0.05)
                return await client.post("/api/chat", json={
                    "model": "llama3.2", "stream": False, "messages": [{"role": "user", "content": f"n{i}"}],
                    "options": {"num_predict": 100}})

            tasks = [asyncio.create_task(one(i)) for i in range(40)]
            # Kill while mid has work: the router only overflows to the slower node once fast's
            # slots are booked, which on a busy machine may take more or less than a second.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                nodes = (await client.get("/api/nodes")).json()["nodes"]
                if next(n for n in nodes if n["name"] == "mid")["in_flight"]:
                    break
                await asyncio.sleep(0.05)
            mid.kill()
            return await asyncio.gather(*tasks)

    try:
        responses = asyncio.run(load())
        statuses = [r.status_code for r in responses]
        assert statuses == [200] * 40, [(s, r.text[:200]) for s, r in zip(statuses, responses) if s != 200]
        retried = [r.json()["_sollol_routing"]["attempts"] for r in responses
                   if len(r.json()["_sollol_routing"]["attempts"]) > 1]
        assert retried, "no request was in flight on, or sent to, the killed node: the test proved nothing"
        assert all(a[0]["node"] == "mid" and not a[0]["ok"] and a[-1]["ok"] for a in retried)
        deadline = time.monotonic() + 10
        while _node(gateway, "mid")["healthy"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _node(gateway, "mid")["healthy"]
    finally:
        mid.start()
    restarted = time.monotonic()
    while not _node(gateway, "mid")["healthy"]:
        assert time.monotonic() - restarted < 10, "recovered node not re-admitted within 10 s"
        time.sleep(0.2)
