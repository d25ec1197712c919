"""Small helpers the tests share."""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx

# Probes a side app's nodes often, so tests see a node go down or come back within seconds.
FAST_HEALTH = {"probe_interval_s": 1.0, "probe_min_s": 0.5, "probe_max_s": 2.0}


# A bound on a wait ends a hang; it does not time the product. On a machine whose cores are
# queued up (CI on a bad day, tests/busy.py) everything, the product's own probes and timers
# included, runs that much slower, and so may the wait.
MAX_SLOWDOWN = 5.0


def slowdown() -> float:
    """How much slower than on an idle machine things run now, judged by the run queue: 1 while
    the last minute's load is at most one runnable process per core, at most MAX_SLOWDOWN."""
    return min(MAX_SLOWDOWN, max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1)))


def bound_s(seconds: float) -> float:
    """A wait's bound for this machine now: `seconds` on an idle one."""
    return seconds * slowdown()


def wait_until(check: Callable[[], object], timeout_s: float, what: str, every_s: float = 0.2) -> None:
    """Poll `check` until it is truthy; fail the test with `what` after `timeout_s` (as long
    as the machine is busy: `bound_s`)."""
    limit = bound_s(timeout_s)
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, f"not within {limit:.0f} s ({timeout_s} s idle): {what}"
        time.sleep(every_s)


async def wait_for_async(check: Callable[[], object], timeout_s: float, what: str, every_s: float = 0.005) -> None:
    """`wait_until` inside an event loop: poll `check` (its result awaited if it is awaitable)
    until it is truthy, letting other tasks run between polls; fail with `what` after `timeout_s`
    (`bound_s`)."""
    limit = bound_s(timeout_s)
    deadline = time.monotonic() + limit
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"not within {limit:.0f} s ({timeout_s} s idle): {what}"
        await asyncio.sleep(every_s)


def nodes_of(url: str, path: str = "/api/nodes") -> dict[str, dict]:
    """The gateway's nodes by name."""
    return {n["name"]: n for n in httpx.get(url + path, timeout=10).json()["nodes"]}


def deploy_app(root_url: str, name: str, config) -> str:
    """Deploy a gateway as the Serve app `name` at /<name> beside the shared one; its URL once
    every node is healthy."""
    from ray import serve

    from sollol_serve.app import build_gateway

    serve.run(build_gateway(config), name=name, route_prefix=f"/{name}")
    url = f"{root_url}/{name}"
    names = {n.name for n in config.nodes}

    last: list[str] = [""]

    def healthy() -> bool:  # every configured node listed (a router's first view may be empty) and healthy
        response = httpx.get(url + "/api/nodes", timeout=10)
        if response.status_code != 200:  # a router still starting on a loaded machine: ask again
            last[0] = f"{response.status_code} {response.text[:300]}"
            return False
        nodes = {n["name"]: n for n in response.json()["nodes"]}
        last[0] = str({n: v["healthy"] for n, v in nodes.items()})
        return names <= nodes.keys() and all(n["healthy"] for n in nodes.values())

    try:
        wait_until(healthy, 30, f"{name} app's nodes healthy")
    except AssertionError as exc:
        raise AssertionError(f"{exc} (last answer: {last[0]})") from None
    return url


@contextmanager
def side_app(gateway, name: str, node_args: list[str], node_names: tuple[str, ...], slots: int,
             **settings: object) -> Iterator:
    """An app of its own over simulated nodes of its own (its routers learn from nothing else);
    `settings` are GatewayConfig fields beside the nodes. Stops what it started."""
    from sollol_serve.config import GatewayConfig
    from sollol_serve.local import delete_gateway
    from sollol_serve.sim.process import SimProcess
    from tests.conftest import Gateway

    nodes = {n: SimProcess(n, node_args).start() for n in node_names}
    try:
        config = GatewayConfig.model_validate({
            "nodes": [{"name": n.name, "url": n.url, "slots": slots} for n in nodes.values()],
            "state_actor_name": f"sollol_state_{name}", "health": FAST_HEALTH, **settings})
        yield Gateway(url=deploy_app(gateway.url, name, config), nodes=nodes, config=config)
    finally:
        delete_gateway(name, config.state_actor_name)
        for node in nodes.values():
            node.stop()
