"""Faults injected into real simulated-node processes: a hung node, a node answering 500s
(its circuit breaker), hedging of urgent requests, every node down.

A second Serve app on the shared Ray, with two nodes of its own (f1, f2), so that breakers
opened here never disturb the other tests. Its model's time to first byte and idle time are
limited to HUNG_LIMIT_S. Each test heals what it broke.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from tests.helpers import FAST_HEALTH, nodes_of, side_app, wait_until

pytestmark = pytest.mark.integration

MODEL = "faulty"
HUNG_LIMIT_S = 3.0
NODE_ARGS = ["--kind", "ollama", "--models", MODEL, "--slots", "2", "--decode-tps", "200", "--load-s", "0"]


@pytest.fixture(scope="module")
def faulty(gateway):
    """A second app beside the shared one, over two nodes of its own, routed round robin so
    that every other request meets the faulty node whatever the nodes' speeds."""
    with side_app(gateway, "faults", NODE_ARGS, ("f1", "f2"), slots=2,
                  routing={"strategy": "round_robin", "snapshot_interval_s": 0.2},
                  health={**FAST_HEALTH, "breaker_open_s": 2.0},
                  model_timeouts=[{"match": f"{MODEL}*", "first_byte_s": HUNG_LIMIT_S, "idle_s": HUNG_LIMIT_S}]) as app:
        yield app


def _chat(i: int, **extra) -> dict:
    return {"model": MODEL, "stream": False, "messages": [{"role": "user", "content": f"fault {i}"}],
            "options": {"num_predict": 20}, **extra}


async def _burst(url: str, bodies: list[dict]) -> list[tuple[httpx.Response, float]]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        async def one(body: dict) -> tuple[httpx.Response, float]:
            started = time.monotonic()
            response = await client.post("/api/chat", json=body)
            return response, time.monotonic() - started

        return await asyncio.gather(*(one(b) for b in bodies))


@pytest.fixture
def healed(faulty):
    """Clears every injected fault and waits until both nodes are back in rotation."""
    yield faulty
    for node in faulty.nodes.values():
        node.faults(mode="none")
    wait_until(lambda: all(n["healthy"] and n["breaker"] != "open" for n in nodes_of(faulty.url).values()),
                15, "nodes back in rotation after the test")


def test_hung_node_never_holds_a_request_past_its_limit(healed):
    healed.nodes["f1"].faults(mode="hang")
    results = asyncio.run(_burst(healed.url, [_chat(i) for i in range(12)]))
    failures = [(r.status_code, r.text[:200]) for r, _ in results if r.status_code != 200]
    assert not failures, failures
    attempts = [r.json()["_sollol_routing"]["attempts"] for r, _ in results]
    timed_out = [a for a in attempts if any(x["node"] == "f1" and x.get("status") == 504 for x in a)]
    assert timed_out, f"no request reached the hung node, the test proved nothing: {attempts}"
    assert all(a[-1]["ok"] and a[-1]["node"] == "f2" for a in timed_out)
    slowest = max(elapsed for _, elapsed in results)
    # One wait of the limit on the hung node, then the answer from another node.
    assert slowest < HUNG_LIMIT_S + 5, slowest


def test_streams_from_a_hung_node_move_before_their_first_byte(healed):
    healed.nodes["f1"].faults(mode="hang")

    async def stream(client: httpx.AsyncClient, i: int) -> list[str]:
        async with client.stream("POST", "/api/chat", json=_chat(i, stream=True)) as response:
            assert response.status_code == 200
            return [line async for line in response.aiter_lines() if line]

    async def streams() -> list[list[str]]:
        async with httpx.AsyncClient(base_url=healed.url, timeout=60) as client:
            return await asyncio.gather(*(stream(client, i) for i in range(4)))

    finals = [json.loads(lines[-1]) for lines in asyncio.run(streams())]
    assert all(f["done"] and "error" not in f and f["_sollol_routing"]["node"] == "f2" for f in finals), finals
    attempts = [f["_sollol_routing"]["attempts"] for f in finals]
    moved = [a for a in attempts if a[0]["node"] == "f1"]
    assert moved, f"no stream was sent to the hung node, the test proved nothing: {attempts}"
    assert all(a[0]["ok"] is False and a[0]["status"] == 504 for a in moved), moved


def test_node_answering_500s_opens_its_breaker_and_recovers(healed):
    healed.nodes["f1"].faults(mode="error", error_status=500)
    results = asyncio.run(_burst(healed.url, [_chat(i) for i in range(8)]))
    assert all(r.status_code == 200 for r, _ in results), [r.text[:200] for r, _ in results]
    wait_until(lambda: nodes_of(healed.url)["f1"]["breaker"] == "open", 5, "breaker open after three 500s in a row")
    # While it is open, round robin or not, nothing is sent to f1.
    results = asyncio.run(_burst(healed.url, [_chat(100 + i) for i in range(6)]))
    assert all(r.status_code == 200 for r, _ in results)
    tried = [a["node"] for r, _ in results for a in r.json()["_sollol_routing"]["attempts"]]
    assert set(tried) == {"f2"}, tried
    healed.nodes["f1"].faults(mode="none")
    wait_until(lambda: nodes_of(healed.url)["f1"]["breaker"] == "half_open", 10, "breaker half-open after open_s")
    r = httpx.post(healed.url + "/api/chat", json=_chat(200), timeout=30)
    assert r.status_code == 200 and r.json()["_sollol_routing"]["node"] == "f1"  # the trial request
    wait_until(lambda: nodes_of(healed.url)["f1"]["breaker"] == "closed", 5, "breaker closed by the trial")


def test_urgent_request_is_hedged_when_its_node_is_late(healed):
    # Measure both nodes' time to first byte, so the hedge delay is learned, not the default.
    asyncio.run(_burst(healed.url, [_chat(300 + i) for i in range(8)]))
    healed.nodes["f1"].faults(mode="hang")
    # Round robin: every other request starts on the hung node. (On a busy machine f2 can be
    # late too and be hedged onto f1; that hedge is not the one this test is after.)
    for i in range(6):
        started = time.monotonic()
        r = httpx.post(healed.url + "/api/chat", json=_chat(400 + i, priority=10), timeout=30)
        elapsed = time.monotonic() - started
        assert r.status_code == 200, r.text
        attempts = r.json()["_sollol_routing"]["attempts"]
        hedges = [a for a in attempts if a.get("hedge") and a["slow_node"] == "f1"]
        if hedges:
            break
    assert hedges and hedges[0]["node"] == "f2", attempts
    assert r.headers["x-sollol-node"] == "f2"
    assert not any(a.get("ok") is False for a in attempts)  # the slow leg was cancelled, not failed over
    assert elapsed < HUNG_LIMIT_S, "the hedge answered before the hung node's time-out would have"


def test_all_nodes_down_is_a_clear_503_and_they_come_back(faulty):
    for node in faulty.nodes.values():
        node.kill()
    try:
        wait_until(lambda: not any(n["healthy"] for n in nodes_of(faulty.url).values()), 10, "every node seen down")
        r = httpx.post(faulty.url + "/api/chat", json=_chat(0), timeout=30)
        message = r.json()["error"]
        assert r.status_code == 503 and MODEL in message and "f1: down" in message and "f2: down" in message, r.text
        r = httpx.post(faulty.url + "/v1/chat/completions", timeout=30, json={
            "model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_node_available", r.text
        assert httpx.get(faulty.url + "/health", timeout=10).status_code == 503
    finally:
        for node in faulty.nodes.values():
            node.start()
    wait_until(lambda: all(n["healthy"] for n in nodes_of(faulty.url).values()), 10, "recovered nodes re-admitted")
    assert httpx.post(faulty.url + "/api/chat", json=_chat(1), timeout=30).status_code == 200
