"""A node that dies under load costs no non-streamed request, and comes back on its own.

Kills a node's process (SIGKILL, like a crashed machine) while it has requests in flight for
a model that the other node also has, then restarts it on the same port. An app of its own
over two nodes, routed round robin: which node gets work must not depend on what the shared
gateway's router has learned in earlier tests.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.helpers import nodes_of, side_app, wait_until

pytestmark = pytest.mark.integration

REQUESTS = 40
NODE_ARGS = ["--kind", "ollama", "--models", "llama3.2", "--slots", "2", "--decode-tps", "200", "--load-s", "0"]


@pytest.fixture(scope="module")
def pair(gateway):
    with side_app(gateway, "failover", NODE_ARGS, ("k1", "k2"), slots=2,
                  routing={"strategy": "round_robin", "snapshot_interval_s": 0.2}) as app:
        yield app


def test_killed_node_loses_no_request_and_is_readmitted(pair):
    victim = pair.nodes["k2"]
    saw_work: list[bool] = []

    async def load() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=pair.url, timeout=60) as client:
            async def one(i: int) -> httpx.Response:
                await asyncio.sleep(i * 0.05)
                return await client.post("/api/chat", json={
                    "model": "llama3.2", "stream": False, "messages": [{"role": "user", "content": f"n{i}"}],
                    "options": {"num_predict": 100}})

            tasks = [asyncio.create_task(one(i)) for i in range(REQUESTS)]
            deadline = time.monotonic() + 10
            while not saw_work and time.monotonic() < deadline:  # kill it while it has work
                nodes = (await client.get("/api/nodes")).json()["nodes"]
                if next(n for n in nodes if n["name"] == "k2")["in_flight"]:
                    saw_work.append(True)
                await asyncio.sleep(0.05)
            victim.kill()
            return await asyncio.gather(*tasks)

    try:
        responses = asyncio.run(load())
        statuses = [r.status_code for r in responses]
        assert statuses == [200] * REQUESTS, [(s, r.text[:200]) for s, r in zip(statuses, responses) if s != 200]
        retried = [r.json()["_sollol_routing"]["attempts"] for r in responses
                   if len(r.json()["_sollol_routing"]["attempts"]) > 1]
        assert retried, f"no request was in flight on, or sent to, k2 when it was killed (busy seen: {saw_work})"
        assert all(a[0]["node"] == "k2" and not a[0]["ok"] and a[-1]["ok"] for a in retried)
        wait_until(lambda: not nodes_of(pair.url)["k2"]["healthy"], 10, "k2 marked down")
    finally:
        victim.start()
    # Probed every 0.5-2 s: re-admitted within seconds, bounded loosely for a busy machine.
    wait_until(lambda: nodes_of(pair.url)["k2"]["healthy"], 30, "recovered node re-admitted")
