"""A node that dies under load costs no non-streamed request, and comes back on its own.

Kills a node's process (SIGKILL, like a crashed machine) while it has requests in flight for
a model that another node also has, then restarts it on the same port. The victim is `mid`
if the router has work on it, else `fast`: which of the two gets work under this load
depends on what the router has learned of them in earlier tests.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

pytestmark = pytest.mark.integration

REQUESTS = 40


def _node(gateway, name: str) -> dict:
    nodes = httpx.get(gateway.url + "/api/nodes", timeout=10).json()["nodes"]
    return next(n for n in nodes if n["name"] == name)


def test_killed_node_loses_no_request_and_is_readmitted(gateway):
    victim: list[str] = []

    async def load() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as client:
            async def one(i: int) -> httpx.Response:
                await asyncio.sleep(i * 0.05)
                return await client.post("/api/chat", json={
                    "model": "llama3.2", "stream": False, "messages": [{"role": "user", "content": f"n{i}"}],
                    "options": {"num_predict": 100}})

            tasks = [asyncio.create_task(one(i)) for i in range(REQUESTS)]
            deadline = time.monotonic() + 10
            while not victim and time.monotonic() < deadline:
                busy = {n["name"]: n["in_flight"] for n in (await client.get("/api/nodes")).json()["nodes"]}
                victim.extend(name for name in ("mid", "fast") if busy[name])
                await asyncio.sleep(0.05)
            assert victim, "no node had work in flight within 10 s"
            gateway.nodes[victim[0]].kill()
            return await asyncio.gather(*tasks)

    try:
        responses = asyncio.run(load())
        statuses = [r.status_code for r in responses]
        assert statuses == [200] * REQUESTS, [(s, r.text[:200]) for s, r in zip(statuses, responses) if s != 200]
        retried = [r.json()["_sollol_routing"]["attempts"] for r in responses
                   if len(r.json()["_sollol_routing"]["attempts"]) > 1]
        assert retried, f"no request was in flight on, or sent to, {victim[0]} when it was killed"
        assert all(a[0]["node"] == victim[0] and not a[0]["ok"] and a[-1]["ok"] for a in retried)
        deadline = time.monotonic() + 10
        while _node(gateway, victim[0])["healthy"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _node(gateway, victim[0])["healthy"]
    finally:
        if victim:
            gateway.nodes[victim[0]].start()
    restarted = time.monotonic()
    while not _node(gateway, victim[0])["healthy"]:
        assert time.monotonic() - restarted < 10, "recovered node not re-admitted within 10 s"
        time.sleep(0.2)
